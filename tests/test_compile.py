"""``torch.compile(fullgraph=True)`` trains a CNN with noise layers on every fused backend."""

import pytest
import torch
from conftest import DEVICES, NO_COMPILER, usable_backends
from torch import nn

from anoise import AdaptiveNoiseConv2d

# Inductor compiles CPU code with a C++ compiler.
CASES = [pytest.param(d, b, marks=pytest.mark.skipif(
             d == "cpu" and NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}"))
         for d in DEVICES for b in usable_backends(d) if b != "reference"]


def _cnn(backend):
    torch.manual_seed(0)
    return nn.Sequential(
        AdaptiveNoiseConv2d(3, 8, 3, padding=1, alpha=0.2, backend=backend),
        nn.ReLU(),
        AdaptiveNoiseConv2d(8, 8, 3, padding=1, alpha=0.2, learnable_alpha=True,
                            backend=backend),
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


@pytest.mark.parametrize("device, backend", CASES)
def test_compile_fullgraph_training_matches_eager(device, backend):
    """Inductor traces the noise layers as single ops (fullgraph: no graph break) and the
    compiled training steps, then an eval pass (running statistics), match eager ones drawn
    from the same generator state."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    target = torch.tensor([1, 4, 7, 9], device=device)
    eager = _cnn(backend).to(device)
    losses_e, out_e = _train(eager, x, target)
    compiled_model = _cnn(backend).to(device)
    losses_c, out_c = _train(torch.compile(compiled_model, fullgraph=True), x, target)
    torch.testing.assert_close(losses_c, losses_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled_model.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    assert compiled_model[2].noise.alpha.grad is not None
