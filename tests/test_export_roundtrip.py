"""torch.export (with save / load), torch.compile of the reference path, and a clear error from
torch.jit.script."""

import io

import pytest
import torch
from conftest import DEVICES, usable_backends
from torch import nn

import anoise
import anoise.functional as AF

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]


def _student(backend, device):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 5 * 5, 3))
    return anoise.to_stochastic(teacher, 0.3, layers=(nn.Conv2d, nn.Linear), momentum=None,
                                backend=backend).to(device)


def _roundtrip(program):
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


def _run(model, x, seed=7):
    torch.manual_seed(seed)
    return model(x)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_export_survives_save_and_load(device, backend, train):
    """Train mode updates the running statistics (a buffer mutation in the graph); eval mode
    reads them.  The loaded program draws the same noise from the same generator state."""
    x = torch.randn(6, 3, 5, 5, device=device)
    eager = _student(backend, device).train(train)
    exported = _student(backend, device).train(train)
    loaded = _roundtrip(torch.export.export(exported, (x,))).module()
    for _ in range(2):  # the second call sees the first call's buffer updates
        torch.testing.assert_close(_run(loaded, x), _run(eager, x), rtol=1e-5, atol=1e-5)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, msg=name)
    if train:
        assert eager[0].noise.num_batches_tracked.item() == 2


@pytest.mark.parametrize("device", DEVICES)
# Both statistics paths with a drawn seed, and a constant seed above 2**63 on one of them: the
# two share the noise (reference._inject), and Inductor's compile of the constant-key Philox
# takes a minute per path on a 2-core machine.
@pytest.mark.parametrize("mode, seed", [("batch", None), ("running", None),
                                        ("batch", 2**64 - 3)])
def test_reference_backend_compiles_without_graph_breaks(device, seed, mode):
    rv = torch.linspace(0.5, 2, 4, device=device)

    def f(x, alpha):
        return AF.adaptive_noise(x, alpha, seed=seed, backend="reference", training=mode == "batch",
                                 running_var=rv if mode == "running" else None)

    x = torch.randn(3, 4, 7, 5, device=device, requires_grad=True)
    alpha = torch.full((4,), 0.5, device=device, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    torch.manual_seed(1)
    y = compiled(x, alpha)
    torch.manual_seed(1)
    expected = f(x, alpha)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, alpha), dy)
    for got, want in zip(grads, torch.autograd.grad(expected, (x, alpha), dy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", [
    lambda: anoise.AdaptiveNoise(3),
    lambda: anoise.AdaptiveNoiseConv2d(3, 4, 1),
    lambda: anoise.AdaptiveNoiseLinear(3, 4),
    lambda: anoise.to_stochastic(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())),
])
def test_jit_script_says_why_it_cannot(module):
    with pytest.raises(RuntimeError, match="anoise.*torch.jit.script.*torch.compile"):
        torch.jit.script(module())
