"""The ``anoise::*`` custom ops on the Triton backend: opcheck and torch.compile."""

import os

import pytest
import torch
from conftest import DEVICES
from torch import nn

import anoise  # noqa: F401  (registers the ops)
from anoise import AdaptiveNoiseConv2d

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
        "backward_batch": (ops.backward_batch, (x.detach(), x_cl.detach(), alpha.detach(), mean,
                                                sigma, seed, "triton")),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(_op_cases("cpu")))
def test_opcheck(device, case):
    op, args = _op_cases(device)[case]
    torch.library.opcheck(op, args)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        AdaptiveNoiseConv2d(3, 8, 3, padding=1, alpha=0.2, backend="triton"),
        nn.ReLU(),
        AdaptiveNoiseConv2d(8, 8, 3, padding=1, alpha=0.2, learnable_alpha=True,
                            backend="triton"),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _train(model, x, target, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return torch.stack(losses), out


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_training_matches_eager(device):
    """Inductor traces the noise layers as single ops (fullgraph: no graph break) and the
    compiled training steps, then an eval pass (running statistics), match eager ones drawn
    from the same generator state."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    target = torch.tensor([1, 4, 7, 9], device=device)
    eager = _cnn().to(device)
    losses_e, out_e = _train(eager, x, target)
    compiled_model = _cnn().to(device)
    losses_c, out_c = _train(torch.compile(compiled_model, fullgraph=True), x, target)
    torch.testing.assert_close(losses_c, losses_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled_model.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    assert compiled_model[2].noise.alpha.grad is not None
