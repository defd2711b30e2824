"""Non-finite and out-of-range options are refused where they are set, with an error that names
the argument and what was expected; ``eps`` is checked against the statistics dtype."""

import math

import pytest
import torch

import anoise
import anoise.functional as AF

INF = math.inf


@pytest.mark.parametrize("alpha, match", [
    (INF, "alpha must be finite"),
    (10**400, "alpha must be finite"),
    (1e39, r"alpha must be at most 3.4\d*e\+38 \(the largest float32"),
    (torch.tensor(INF), "alpha must be finite"),
    (torch.tensor([0.1, INF, 0.2]), "alpha must be finite"),
])
def test_functional_refuses_an_infinite_alpha(alpha, match):
    with pytest.raises(ValueError, match=match):
        AF.adaptive_noise(torch.randn(4, 3, 2), alpha)


@pytest.mark.parametrize("eps, match", [
    (INF, "eps must be finite"),
    (1e39, r"eps must be at most 3.4\d*e\+38"),
    (1e-46, r"eps must be at least 1.17\d*e-38 \(the smallest normal float32"),
    (1e-40, "eps must be at least"),  # a float32 subnormal
])
def test_functional_refuses_an_eps_float32_statistics_cannot_hold(eps, match):
    with pytest.raises(ValueError, match=match):
        AF.adaptive_noise(torch.randn(4, 3, 2), 0.5, eps=eps)


def test_float64_input_takes_an_eps_and_alpha_of_float64_range():
    """Its statistics are float64: eps = 1e-46 keeps a constant channel's gradients finite."""
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    x[:, 1] = 2.0
    x.requires_grad_()
    y = AF.adaptive_noise(x, 0.5, eps=1e-46, seed=1)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(AF.adaptive_noise(x.detach(), 1e39, seed=1)).all()


@pytest.mark.parametrize("set_it", [
    lambda m: anoise.set_alpha(m, INF),
    lambda m: setattr(m.noise, "alpha", INF),
    lambda m: setattr(m.noise, "alpha", torch.tensor(INF)),
    lambda m: anoise.AdaptiveNoiseConv2d(3, 4, 1, alpha=INF),
])
def test_modules_refuse_an_infinite_alpha_where_it_is_set(set_it):
    m = anoise.AdaptiveNoiseConv2d(3, 4, 1, alpha=0.3)
    with pytest.raises(ValueError, match="alpha must be finite"):
        set_it(m)
    assert m.noise.alpha.item() == pytest.approx(0.3)


@pytest.mark.parametrize("eps", [INF, 1e-46, 0.0])
def test_modules_refuse_a_bad_eps_where_it_is_set(eps):
    with pytest.raises(ValueError, match="eps must be"):
        anoise.AdaptiveNoise(3, eps=eps)
    m = anoise.AdaptiveNoise(3)
    with pytest.raises(ValueError, match="eps must be"):
        m.eps = eps
    assert m.eps == 1e-5


def test_a_running_var_that_requires_grad_is_refused_in_training():
    x = torch.randn(4, 3, 2)
    running_var = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="running_var requires grad.*cannot be updated in place"):
        AF.adaptive_noise(x, 0.5, running_var=running_var)
    assert torch.equal(running_var.detach(), torch.ones(3))
    # in eval it is only read: differentiable, as any input
    AF.adaptive_noise(x, 0.5, running_var=running_var, training=False).sum().backward()
    assert running_var.grad is not None
