"""The operator on the reference path: its math, noise statistics, gradients and modes."""

import pytest
import torch
from conftest import DEVICES, TOLERANCES, usable_backends
from scipy import stats

import anoise.functional as AF
from anoise.philox import noise_like

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _dims(x):
    return [0] + list(range(2, x.dim()))


def _expected(x, alpha, seed, eps=1e-5):
    """SPEC section 2 written out in float64, independently of anoise.reference."""
    xd = x.double()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var = xd.var(_dims(x), unbiased=False)
    sigma = torch.sqrt(var + eps).view(shape)
    alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[1]).view(shape)
    return xd + alpha * sigma * noise_like(x, seed).double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 13, 5), (5, 3), (2, 64, 1, 1), (4, 2, 3, 2, 3)])
def test_forward_matches_spec(device, dtype, shape):
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(device, dtype)
    alpha = torch.rand(shape[1], dtype=torch.float64)
    y = AF.adaptive_noise(x, alpha.to(device), seed=1234, backend="reference")
    assert y.dtype == dtype and y.shape == x.shape
    atol, rtol = TOLERANCES[dtype]
    expected = _expected(x.cpu(), alpha, 1234)
    torch.testing.assert_close(y.cpu().double(), expected, atol=atol * 10, rtol=rtol)


def test_noise_statistics_follow_alpha_sigma():
    scales = torch.tensor([1e-3, 1.0, 50.0, 1e3], dtype=torch.float64)
    x = torch.randn(1000, 4, 10, 10, dtype=torch.float64) * scales.view(1, 4, 1, 1) + 7
    alpha = 0.3
    y = AF.adaptive_noise(x, alpha, seed=99, backend="reference")
    noise = (y - x).transpose(0, 1).reshape(4, -1)
    target = alpha * torch.sqrt(x.var(_dims(x), unbiased=False) + 1e-5)
    assert noise.shape[1] >= 100_000
    torch.testing.assert_close(noise.std(1), target, rtol=0.02, atol=0)
    assert (noise.mean(1).abs() < 0.02 * target).all()
    for c in range(4):
        standardised = (noise[c] / target[c]).numpy()
        assert stats.kstest(standardised, "norm").pvalue > 1e-3


def test_same_seed_same_output_new_seed_new_output():
    x = torch.randn(8, 3, 4, 4)
    a = AF.adaptive_noise(x, 0.2, seed=5)
    assert torch.equal(a, AF.adaptive_noise(x, 0.2, seed=5))
    assert not torch.equal(a, AF.adaptive_noise(x, 0.2, seed=6))
    torch.manual_seed(0)
    b1, b2 = AF.adaptive_noise(x, 0.2), AF.adaptive_noise(x, 0.2)
    assert not torch.equal(b1, b2), "each call must draw a fresh seed"
    torch.manual_seed(0)
    assert torch.equal(b1, AF.adaptive_noise(x, 0.2))
    assert torch.equal(b2, AF.adaptive_noise(x, 0.2))


def test_alpha_zero_is_bitwise_identity():
    x = torch.randn(4, 3, 5, 5)
    x[0, 0, 0, 0] = -0.0
    y = AF.adaptive_noise(x, 0.0)
    assert y is x
    x16 = torch.randn(4, 3, 5, 5).half()
    y16 = AF.adaptive_noise(x16, torch.zeros(3, dtype=torch.float16), seed=3)
    assert torch.equal(y16.view(torch.int16), x16.view(torch.int16))


@pytest.mark.parametrize("device, backend", [(d, b) for d in DEVICES for b in usable_backends(d)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha_shape", [(), (3,)])
@pytest.mark.parametrize("mode", ["batch", "running"])
def test_tensor_alpha_zero_is_bitwise_identity(device, backend, dtype, alpha_shape, mode):
    x = torch.randn(4, 3, 5, 2).to(device, dtype)
    x[:, :, 0] = -0.0
    x[:, :, 1, 0] = 0.0
    alpha = torch.zeros(alpha_shape, device=device, requires_grad=True)
    y = AF.adaptive_noise(x, alpha, seed=3, training=mode == "batch", backend=backend,
                          running_var=torch.ones(3, device=device) if mode == "running" else None)
    bits = {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)
    assert torch.equal(y.detach().view(bits), x.view(bits))


def test_alpha_zero_still_updates_running_var():
    x = torch.randn(16, 3, 4, 4) * 2
    rv, bn = torch.ones(3), torch.nn.BatchNorm2d(3, affine=False)
    AF.adaptive_noise(x, 0.0, running_var=rv)
    bn(x)
    torch.testing.assert_close(rv, bn.running_var)


@pytest.mark.parametrize("alpha_shape", [(), (3,)])
@pytest.mark.parametrize("stats_grad", [True, False])
def test_gradcheck_x_and_alpha(alpha_shape, stats_grad):
    # stats_grad=False declares sigma a constant, so only alpha's gradient is a true derivative.
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=stats_grad)
    alpha = (torch.rand(alpha_shape, dtype=torch.float64) + 0.1).requires_grad_()

    def f(x, alpha):
        return AF.adaptive_noise(x, alpha, seed=42, stats_grad=stats_grad, backend="reference")

    assert torch.autograd.gradcheck(f, (x, alpha))


def test_gradcheck_running_stats_in_eval():
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(3, dtype=torch.float64, requires_grad=True)
    rv = torch.rand(3) + 0.5

    def f(x, alpha):
        return AF.adaptive_noise(x, alpha, running_var=rv, training=False, seed=7)

    assert torch.autograd.gradcheck(f, (x, alpha))


# The reference draws the stream exactly; fused backends draw it within SPEC's noise tolerance
# (fast log / sin / cos), which bounds how far their sums over dy * eps can move.
@pytest.mark.parametrize("device, backend", [(d, b) for d in DEVICES for b in usable_backends(d)])
def test_backward_matches_spec_formula(device, backend):
    tol = {} if backend == "reference" else dict(atol=1e-5, rtol=1e-5)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    alpha = torch.rand(4, dtype=torch.float64, device=device, requires_grad=True)
    dy = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device)
    AF.adaptive_noise(x, alpha, seed=17, backend=backend).backward(dy)

    shape, M = (1, 4, 1, 1), 6 * 9
    eps_noise = noise_like(x, 17).double()
    xd = x.detach()
    mu = xd.mean(_dims(x)).view(shape)
    sigma = torch.sqrt(xd.var(_dims(x), unbiased=False) + 1e-5).view(shape)
    G = (dy * eps_noise).sum(_dims(x)).view(shape)
    dx = dy + alpha.detach().view(shape) * (xd - mu) / (M * sigma) * G
    torch.testing.assert_close(x.grad, dx, **tol)
    torch.testing.assert_close(alpha.grad, (sigma * G).flatten(), **tol)


def test_stats_grad_false_passes_dy_straight_through():
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 3, 4, dtype=torch.float64)
    AF.adaptive_noise(x, 0.5, stats_grad=False, seed=1).backward(dy)
    assert torch.equal(x.grad, dy)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_var_matches_batchnorm(momentum):
    bn = torch.nn.BatchNorm2d(5, momentum=momentum, affine=False)
    rv, nbt = torch.ones(5), torch.tensor(0)
    for step in range(4):
        x = torch.randn(8, 5, 6, 6) * (step + 1) + step
        AF.adaptive_noise(x, 0.1, running_var=rv, num_batches_tracked=nbt, momentum=momentum)
        bn(x)
    torch.testing.assert_close(rv, bn.running_var)
    assert nbt.item() == bn.num_batches_tracked.item() == 4


def test_eval_with_running_stats_is_independent_of_the_batch():
    rv = torch.rand(3) + 0.5
    a = torch.randn(4, 3, 5, 5)
    b = a.clone()
    b[1:] = torch.randn(3, 3, 5, 5) * 100
    ya = AF.adaptive_noise(a, 0.5, running_var=rv, training=False, seed=8)
    yb = AF.adaptive_noise(b, 0.5, running_var=rv, training=False, seed=8)
    assert torch.equal(ya[0], yb[0])
    expected = a.double() + 0.5 * torch.sqrt(rv.double() + 1e-5).view(1, 3, 1, 1) * noise_like(
        a, 8
    ).double()
    torch.testing.assert_close(ya.double(), expected, atol=1e-5, rtol=1e-5)


def test_eval_without_running_var_uses_batch_stats():
    x = torch.randn(4, 3, 5)
    train = AF.adaptive_noise(x, 0.5, training=True, seed=3)
    assert torch.equal(train, AF.adaptive_noise(x, 0.5, training=False, seed=3))


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_layouts_give_the_same_result(layout):
    base = torch.randn(4, 6, 5, 7)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = base.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        x = torch.randn(4, 12, 5, 7)[:, ::2]
        base = x.contiguous()
    assert not x.is_contiguous()
    y, y_base = AF.adaptive_noise(x, 0.3, seed=2), AF.adaptive_noise(base, 0.3, seed=2)
    # Same noise per logical element; only the statistics' summation order may differ.
    torch.testing.assert_close(y, y_base, atol=1e-6, rtol=1e-6)


def test_zero_variance_channel_is_finite():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[:, 1] = 2.5
    y = AF.adaptive_noise(x, 0.5, seed=4)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    noise = (y - x)[:, 1]
    assert 0 < noise.abs().max() < 0.5 * 1e-5**0.5 * 6


def test_nan_propagates_to_its_channel_only():
    x = torch.randn(4, 3, 5)
    x[0, 1, 2] = float("nan")
    y = AF.adaptive_noise(x, 0.5, seed=4)
    assert torch.isnan(y[:, 1]).all()
    assert torch.isfinite(y[:, [0, 2]]).all()


def test_empty_batch_returns_empty():
    x = torch.randn(0, 3, 4, 4)
    y = AF.adaptive_noise(x, 0.5)
    assert y.shape == x.shape


def test_single_value_per_channel_warns_and_uses_sqrt_eps():
    x = torch.randn(1, 3)
    with pytest.warns(UserWarning, match="one value per channel"):
        y = AF.adaptive_noise(x, 1.0, seed=3)
    noise = noise_like(x, 3).double()
    torch.testing.assert_close((y - x).double(), 1e-5**0.5 * noise, atol=1e-7, rtol=1e-3)


def test_learnable_per_channel_alpha_gets_gradient():
    x = torch.randn(8, 3, 4)
    alpha = torch.full((3,), 0.2, requires_grad=True)
    AF.adaptive_noise(x, alpha, seed=1).pow(2).sum().backward()
    assert alpha.grad is not None and alpha.grad.shape == (3,)
    assert (alpha.grad != 0).all()
