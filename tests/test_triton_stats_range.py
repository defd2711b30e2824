"""The Triton backend's statistics stay finite wherever ``torch.var`` does.

float32 values of magnitude ~1e19 have a variance (~5e37) that float32 holds, while the sum of
squared deviations M2 = n * var does not: the kernels then reduce those channels again on
scaled values.  Checked in the fused single pass and in the split reduction with its merge
(under the interpreter on a machine without a GPU).
"""

import os

import pytest
import torch
from conftest import DEVICES

import anoise.functional as AF

pytest.importorskip("triton", reason="the triton package is not installed")
import anoise.kernels as K  # noqa: E402

DEVICES = [d for d in DEVICES if d == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"]
CONFIGS = {"fused": {}, "split": dict(block=(2, 4, 32), chunks=3, elementwise_programs=2)}
SEED = 12345


def huge(shape, generator):
    """Values of random sign and magnitude in [0.5e19, 1e19]."""
    magnitude = 0.5e19 + 0.5e19 * torch.rand(shape, generator=generator, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return magnitude * sign


def mixed(shape):
    """Channel 1 huge, the others ordinary (so a rescaled channel's neighbours must stay as
    they were)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
    x[:, 1] = huge(x[:, 1].shape, g)
    return x.float()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("shape", [(6, 3, 5, 7), (40, 3)], ids=["nchw", "linear"])
def test_statistics_of_huge_values_are_finite_and_exact(device, cfg, shape):
    x = mixed(shape).to(device)
    x3 = x.reshape(shape[0], shape[1], -1)
    seed = torch.tensor([SEED], device=device)
    with K.configure(**CONFIGS[cfg]):
        y3, mean, var = K.forward_batch(x3, torch.full((3,), 0.5, device=device), seed, 1e-5)
        xg = x.clone().requires_grad_(True)
        alpha = torch.full((3,), 0.5, device=device, requires_grad=True)
        y = AF.adaptive_noise(xg, alpha, seed=SEED, backend="triton")
        y.backward(torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device))
    dims = (0, *range(2, x.dim()))
    expected = torch.var(x.double(), dim=dims, correction=0)
    assert expected[1] > 1e37 and torch.isfinite(expected.float()).all()
    assert torch.isfinite(var).all(), var
    torch.testing.assert_close(var.double().cpu(), expected.cpu(), rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double().cpu(), x.double().mean(dims).cpu(), rtol=1e-5,
                               atol=1e-6 * 1e19)
    for t in (y3, y, xg.grad, alpha.grad):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_nan_and_inf_stay_in_their_channel_next_to_huge_values(device, cfg):
    x = mixed((6, 4, 5, 7))
    x[2, 0, 1, 1] = float("nan")
    x[3, 2, 0, 0] = float("inf")
    x = x.to(device)
    seed = torch.tensor([SEED], device=device)
    with K.configure(**CONFIGS[cfg]):
        _, _, var = K.forward_batch(x.reshape(6, 4, -1), torch.ones(4, device=device), seed, 1e-5)
    assert torch.isnan(var[0]) and torch.isnan(var[2])
    expected = torch.var(x.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(var[[1, 3]].double().cpu(), expected[[1, 3]].cpu(), rtol=1e-5,
                               atol=0)
