"""Autograd beyond ``loss.backward()``: in-place ops on the output, forward-mode AD and the
``torch.func`` transforms, on every usable backend.

The fused backends and the reference may draw different noise streams while the kernels move
between streams, so every check compares a backend with itself (finite differences, ordinary
reverse mode, per-sample calls), never with another backend.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, usable_backends
from torch import nn

import anoise
import anoise.functional as AF

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]
MODES = ["batch", "batch_no_stats_grad", "running"]


def _noise(mode, backend, seed=11):
    """``f(x, alpha)`` in one of the statistics modes, at a fixed seed."""
    def f(x, alpha):
        rv = torch.linspace(0.5, 2.0, x.shape[1], device=x.device)
        return AF.adaptive_noise(
            x, alpha, running_var=rv if mode == "running" else None,
            training=mode != "running", stats_grad=mode != "batch_no_stats_grad", seed=seed,
            backend=backend)
    return f


def _inputs(device, shape=(3, 4, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).to(device)
    alpha = (torch.rand(shape[1], generator=g, dtype=dtype) + 0.2).to(device)
    return x, alpha


def _finite_difference(f, x, alpha, tx, talpha, h=1e-6):
    return (f(x + h * tx, alpha + h * talpha) - f(x - h * tx, alpha - h * talpha)) / (2 * h)


# -- in-place ops on the output -----------------------------------------------------------------


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3)])
def test_inplace_op_on_output(device, backend, mode, shape):
    x, alpha = _inputs(device, shape, torch.float32)
    f = _noise(mode, backend)
    grads = []
    for inplace in (False, True):
        xi, ai = x.clone().requires_grad_(), alpha.clone().requires_grad_()
        y = f(xi, ai)
        y = y.relu_() if inplace else y.relu()
        (y * torch.arange(y.numel(), device=device).view(y.shape)).sum().backward()
        grads.append((y.detach(), xi.grad, ai.grad))
    for out_of_place, in_place in zip(*grads, strict=True):
        torch.testing.assert_close(in_place, out_of_place, rtol=0, atol=0)


@pytest.mark.parametrize("device, backend", CASES)
def test_student_of_a_teacher_with_inplace_relu_trains_and_is_attacked(device, backend):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                            nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True), nn.Flatten(),
                            nn.Linear(4 * 3 * 3, 5), nn.ReLU(inplace=True))
    student = anoise.to_stochastic(teacher, 0.2, layers=(nn.Conv2d, nn.Linear),
                                   backend=backend).to(device)
    x = torch.randn(6, 3, 5, 5, device=device)
    student(x).sum().backward()  # a training step
    assert all(p.grad is not None for p in student.parameters())
    student.eval()
    xa = x.clone().requires_grad_()
    student(xa).sum().backward()  # an input gradient, as a white-box attack takes
    assert xa.grad is not None and torch.isfinite(xa.grad).all()


# -- forward-mode AD -------------------------------------------------------------------------


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", ["batch", "running"])
def test_jvp_matches_finite_differences(device, backend, mode):
    x, alpha = _inputs(device)
    tx, talpha = torch.randn_like(x), torch.randn_like(alpha)
    f = _noise(mode, backend)
    y, ty = torch.func.jvp(f, (x, alpha), (tx, talpha))
    torch.testing.assert_close(y, f(x, alpha), rtol=0, atol=0)
    torch.testing.assert_close(ty, _finite_difference(f, x, alpha, tx, talpha),
                               rtol=1e-6, atol=1e-6)
    assert ty.abs().max() > 0.1


@pytest.mark.parametrize("device, backend", CASES)
def test_jvp_without_stats_grad_holds_sigma_constant(device, backend):
    x, alpha = _inputs(device)
    tx, talpha = torch.randn_like(x), torch.randn_like(alpha)
    f = _noise("batch_no_stats_grad", backend)
    _, ty_x = torch.func.jvp(f, (x, alpha), (tx, torch.zeros_like(alpha)))
    torch.testing.assert_close(ty_x, tx, rtol=0, atol=0)
    _, ty_a = torch.func.jvp(f, (x, alpha), (torch.zeros_like(x), talpha))
    torch.testing.assert_close(ty_a, _finite_difference(f, x, alpha, 0 * tx, talpha),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_dual_tensors_agree_with_reverse_mode(device, backend, mode):
    """<J t, u> from torch.autograd.forward_ad equals <t, J^T u> from backward."""
    x, alpha = _inputs(device)
    tx, talpha, u = torch.randn_like(x), torch.randn_like(alpha), torch.randn_like(x)
    f = _noise(mode, backend)
    with fwAD.dual_level():
        y = f(fwAD.make_dual(x, tx), fwAD.make_dual(alpha, talpha))
        ty = fwAD.unpack_dual(y).tangent
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    gx, ga = torch.autograd.grad(f(xr, ar), (xr, ar), u)
    torch.testing.assert_close((ty * u).sum(), (gx * tx).sum() + (ga * talpha).sum())


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_jacfwd_equals_jacrev_and_finite_differences(device, backend, mode):
    x, alpha = _inputs(device, (3, 2, 2))
    f = _noise(mode, backend)
    jf = torch.func.jacfwd(f, argnums=(0, 1))(x, alpha)
    jr = torch.func.jacrev(f, argnums=(0, 1))(x, alpha)
    for a, b in zip(jf, jr, strict=True):
        torch.testing.assert_close(a, b)
    assert jf[0].abs().sum() > 0 and jf[1].abs().sum() > 0
    if mode != "batch_no_stats_grad":  # which declares sigma a constant
        e = torch.zeros_like(x)
        e[1, 0, 1] = 1
        column = _finite_difference(f, x, alpha, e, torch.zeros_like(alpha))
        torch.testing.assert_close(jf[0][..., 1, 0, 1], column, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_func_grad_and_vjp_equal_autograd(device, backend, mode):
    x, alpha = _inputs(device)
    u = torch.randn_like(x)
    f = _noise(mode, backend)
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    expected = torch.autograd.grad((f(xr, ar) * u).sum(), (xr, ar))
    grads = torch.func.grad(lambda x, a: (f(x, a) * u).sum(), argnums=(0, 1))(x, alpha)
    _, vjp_fn = torch.func.vjp(f, x, alpha)
    for got in (grads, vjp_fn(u)):
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_vmap_equals_one_call_per_sample(device, backend, mode):
    xs, _ = _inputs(device, (3, 4, 2, 5))
    alpha = torch.tensor([0.3, 0.7], dtype=xs.dtype, device=device)  # samples are (4, 2, 5)
    f = _noise(mode, backend)
    batched = torch.func.vmap(f, in_dims=(0, None))(xs, alpha)
    torch.testing.assert_close(batched, torch.stack([f(x, alpha) for x in xs]), rtol=0, atol=0)


@pytest.mark.parametrize("device, backend", [c for c in CASES if c[1] != "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_raise(device, backend, mode):
    x, alpha = _inputs(device)
    x.requires_grad_()
    alpha.requires_grad_()
    y = _noise(mode, backend)(x, alpha)
    gx, ga = torch.autograd.grad((y * y).sum(), (x, alpha), create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        (gx.sum() + ga.sum()).backward()


@pytest.mark.parametrize("device, backend", CASES)
def test_vmap_draws_seeds_as_its_randomness_flag_says(device, backend):
    xs = torch.randn(3, 4, 2, 5, dtype=torch.float64, device=device)
    sigma = xs.var((1, 3), unbiased=False).add(1e-5).sqrt()[:, None, :, None]

    def standard_noise(randomness):
        f = torch.func.vmap(lambda x: AF.adaptive_noise(x, 0.5, backend=backend),
                            randomness=randomness)
        return (f(xs) - xs) / (0.5 * sigma)

    same = standard_noise("same")
    torch.testing.assert_close(same[1], same[0], rtol=1e-5, atol=1e-5)
    different = standard_noise("different")
    assert not torch.allclose(different[1], different[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="randomness='error'; pass seed="):
        standard_noise("error")


@pytest.mark.parametrize("device, backend", CASES)
def test_jvp_in_eval_with_a_constant_alpha_is_the_identity(device, backend):
    x, _ = _inputs(device)
    tx = torch.randn_like(x)
    f = _noise("running", backend)
    _, ty = torch.func.jvp(lambda x: f(x, 0.3), (x,), (tx,))
    torch.testing.assert_close(ty, tx, rtol=0, atol=0)
