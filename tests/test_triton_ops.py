"""The ``anoise::*`` custom ops on the Triton backend: opcheck (torch.compile: test_compile.py)."""

import os

import pytest
import torch
from conftest import DEVICES

import anoise  # noqa: F401  (registers the ops)

pytest.importorskip("triton", reason="the triton package is not installed")
import anoise.kernels  # noqa: E402, F401  (an import error here is a failure, not a skip)

# CPU tensors run on Triton's interpreter only (see test_triton.py).
DEVICES = [d for d in DEVICES if d == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"]

ops = torch.ops.anoise


def _op_cases(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 2, generator=g).to(device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    lin_t = torch.randn(4, 6, generator=g).to(device).t()  # (6, 4), batch dim contiguous
    alpha = (torch.rand(4, generator=g) + 0.1).to(device)
    mean, sigma = torch.rand(4).to(device), (torch.rand(4) + 0.5).to(device)
    seed = torch.tensor([2**63 + 5 - 2**64], device=device)
    x64 = x.double()
    # Rows that do not start on a noise group: S = 49, and an (N, C) input with C = 3.
    x49 = torch.randn(2, 3, 7, 7, generator=g).to(device)
    lin3 = torch.randn(5, 3, generator=g).to(device)
    alpha3 = (torch.rand(3, generator=g) + 0.1).to(device)
    return {
        "forward_batch": (ops.forward_batch, (x.requires_grad_(), alpha.requires_grad_(), seed,
                                              1e-5, True, "triton")),
        "forward_batch_cl_nograd_stats": (
            ops.forward_batch, (x_cl.requires_grad_(), alpha, seed, 1e-5, False, "triton")),
        "forward_batch_f64_linear_t": (
            ops.forward_batch, (lin_t.double().requires_grad_(), alpha.double(), seed, 1e-5,
                                True, "triton")),
        "forward_scaled": (ops.forward_scaled, (x_cl, alpha, seed, "triton")),
        "noise_dot": (ops.noise_dot, (x64, seed, "triton")),
        "forward_batch_s49": (ops.forward_batch, (x49.requires_grad_(), alpha3.requires_grad_(),
                                                  seed, 1e-5, True, "triton")),
        "forward_scaled_linear_c3": (ops.forward_scaled, (lin3, alpha3.detach(), seed,
                                                          "triton")),
        "noise_dot_linear_c3": (ops.noise_dot, (lin3, seed, "triton")),
        "backward_batch": (ops.backward_batch, (x.detach(), x_cl.detach(), alpha.detach(), mean,
                                                sigma, seed, "triton")),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(_op_cases("cpu")))
def test_opcheck(device, case):
    op, args = _op_cases(device)[case]
    torch.library.opcheck(op, args)
