"""Statistics stay finite wherever the variance itself is representable, on every backend.

The contract: float32 input whose per-channel biased variance is representable in float32,
here values of random sign and magnitude in [0.5e19, 1e19] (their squares' sum overflows
float32): ``var``, ``sigma``, ``y`` and the gradients are finite, and ``var`` is within 1e-5
relative of ``torch.var`` in float64.  NaN and Inf in ``x`` still reach their channel only.
``var`` is read from ``running_var`` with momentum 1 (the unbiased variance of the batch).
"""

import pytest
import torch
from conftest import DEVICES, usable_backends

import anoise.functional as AF

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]
SHAPES = [(6, 3, 5, 7), (40, 3)]


def _huge(shape, device):
    g = torch.Generator().manual_seed(0)
    magnitude = torch.rand(shape, generator=g, dtype=torch.float64) * 0.5e19 + 0.5e19
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    return (magnitude * sign).float().to(device)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_statistics_of_huge_values_are_finite_and_accurate(device, backend, shape):
    x = _huge(shape, device).requires_grad_()
    alpha = torch.full((shape[1],), 0.5, device=device, requires_grad=True)
    running_var = torch.ones(shape[1], device=device)
    y = AF.adaptive_noise(x, alpha, running_var=running_var, momentum=1.0, seed=3,
                          backend=backend)
    y.backward(torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device))

    dims = [0, *range(2, x.dim())]
    M = x[:, 0].numel()
    expected = torch.var(x.detach().double(), dims, correction=0)
    var = running_var.double() * (M - 1) / M
    torch.testing.assert_close(var, expected, rtol=1e-5, atol=0)
    sigma = torch.sqrt(running_var + 1e-5)
    for name, t in (("sigma", sigma), ("y", y), ("dx", x.grad), ("dalpha", alpha.grad)):
        assert torch.isfinite(t).all(), f"{name} is not finite"
    # and the noise is that of the batch's sigma
    noise = (y.detach().double() - x.detach().double()) / (0.5 * expected.sqrt()).view(
        (1, -1) + (1,) * (x.dim() - 2))
    assert 0.5 < noise.std().item() < 1.5


@pytest.mark.parametrize("device, backend", CASES)
def test_nan_and_inf_among_huge_values_stay_in_their_channel(device, backend):
    x = _huge((6, 3, 5, 7), device)
    x[2, 0, 1, 1] = float("nan")
    x[4, 1, 0, 3] = float("inf")
    y = AF.adaptive_noise(x, 0.5, seed=3, backend=backend)
    assert not torch.isfinite(y[:, 0]).all() and not torch.isfinite(y[:, 1]).all()
    assert torch.isfinite(y[:, 2]).all()
