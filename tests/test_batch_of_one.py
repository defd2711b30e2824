"""A batch with one value per channel (and an empty one) behaves alike in eager, under
``torch.compile(fullgraph=True)`` and in an exported program served for every batch size:
sigma = sqrt(eps), no crash, and the running variance neither updated nor counted.  Only eager
warns (a traced graph holds no warning)."""

import warnings

import pytest
import torch
from conftest import DEVICES, usable_backends

import anoise

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (dynamo's per-function recompile limit is shared)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _layer(backend, device, momentum):
    torch.manual_seed(0)
    return anoise.AdaptiveNoiseLinear(3, 4, alpha=0.5, momentum=momentum,
                                      backend=backend).to(device)


def _run(model, x, seed=7):
    torch.manual_seed(seed)
    return model(x)


def _assert_same_state(a, b):
    for name, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], value, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("device, backend", CASES)
def test_eager_warns_and_leaves_the_running_variance(device, backend):
    layer = _layer(backend, device, 0.1)
    before = {k: v.clone() for k, v in layer.noise.state_dict().items()}
    x = torch.randn(1, 3, device=device)
    with pytest.warns(UserWarning, match="one value per channel"):
        y = _run(layer, x)
    z = torch.nn.functional.linear(x, layer.weight, layer.bias)
    noise = (y - z) / (0.5 * 1e-5**0.5)  # sigma = sqrt(eps): standard normals
    assert torch.isfinite(noise).all() and noise.abs().max() > 1e-2
    for name, value in layer.noise.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("device, backend", CASES)
def test_compiled_fullgraph_batch_of_one_equals_eager(device, backend):
    eager, compiled = _layer(backend, device, 0.1), _layer(backend, device, 0.1)
    step = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    x = torch.randn(1, 3, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _run(eager, x)
    torch.testing.assert_close(_run(step, x), expected, rtol=1e-6, atol=1e-6)
    _assert_same_state(eager, compiled)
    assert compiled.noise.num_batches_tracked.item() == 0


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_exported_training_program_for_every_batch_size(device, backend, momentum):
    """One program, exported at batch 6 with a dynamic batch dim, run at batch 4, 1, 0 and 5:
    each call gives eager's output and buffers (batches 1 and 0 leave the buffers alone)."""
    eager, exported = _layer(backend, device, momentum), _layer(backend, device, momentum)
    program = torch.export.export(exported, (torch.randn(6, 3, device=device),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    for n in (4, 1, 0, 5):
        x = torch.randn(n, 3, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = _run(eager, x)
        torch.testing.assert_close(_run(program, x), expected, rtol=1e-6, atol=1e-6,
                                   msg=f"batch {n}")
        _assert_same_state(eager, program)
    assert program.noise.num_batches_tracked.item() == 2
