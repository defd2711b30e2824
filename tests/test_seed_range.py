"""Every seed of the documented range ``[0, 2**64)`` works eagerly, compiled (a constant, and a
dynamic int) and in an exported program (a constant, and a dynamic int input), on every
usable backend, with the noise eager draws."""

import pytest
import torch
from conftest import DEVICES, NO_COMPILER, usable_backends

import anoise.functional as AF
from anoise import ops

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]
SEEDS = [0, 2**63 - 1, 2**63, 2**64 - 1]
needs_compiler = pytest.mark.skipif(NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (dynamo's per-function recompile limit is shared)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _f(backend):
    def f(x, seed):
        return AF.adaptive_noise(x, 0.5, seed=seed, backend=backend)
    return f


def _x(device):
    return torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)).to(device)


@needs_compiler
@pytest.mark.parametrize("device, backend", [c for c in CASES if c[1] != "reference"])
def test_compiled_with_a_dynamic_int_seed(device, backend):
    """Inductor, the seed a symbolic int (dynamic=True): one graph for every seed."""
    f, x = _f(backend), _x(device)
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for seed in SEEDS:
        torch.testing.assert_close(compiled(x, seed), f(x, seed), rtol=1e-6, atol=1e-6,
                                   msg=f"seed {seed}")


@pytest.mark.parametrize("device", DEVICES)
def test_reference_compiled_with_a_dynamic_int_seed(device):
    """The reference traced with a symbolic seed, run by AOTAutograd without code generation
    (inductor takes minutes over its Philox rounds)."""
    f, x = _f("reference"), _x(device)
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for seed in SEEDS:
        torch.testing.assert_close(compiled(x, seed), f(x, seed), rtol=1e-6, atol=1e-6,
                                   msg=f"seed {seed}")


class _Noise(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.backend = backend

    def forward(self, x, seed):
        return AF.adaptive_noise(x, 0.5, seed=seed, backend=self.backend)


@pytest.mark.parametrize("device, backend", CASES)
def test_exported_with_a_constant_and_a_dynamic_seed(device, backend):
    f, x = _f(backend), _x(device)
    constant = torch.export.export(_Noise(backend), (x, 2**64 - 1)).module()
    torch.testing.assert_close(constant(x, 2**64 - 1), f(x, 2**64 - 1), rtol=1e-6, atol=1e-6)
    dynamic = torch.export.export(_Noise(backend), (x, 5),
                                  dynamic_shapes=({}, torch.export.Dim.DYNAMIC)).module()
    for seed in SEEDS:
        torch.testing.assert_close(dynamic(x, seed), f(x, seed), rtol=1e-6, atol=1e-6,
                                   msg=f"seed {seed}")


def test_seed_from_words_passes_opcheck():
    like = torch.empty(2, 3)
    for high, low in ((0, 0), (2**31, 5), (2**32 - 1, 2**32 - 1)):
        torch.library.opcheck(ops.seed_from_words, (like, high, low))
        expected = (high << 32) | low
        assert int(ops.seed_from_words(like, high, low)) & (2**64 - 1) == expected
