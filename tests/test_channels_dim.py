"""Channels in a dim other than 1: ``(*, features)`` linear outputs and ``(N, L, C)`` tokens.

A tensor with its channels in dim ``d`` is handled as its row-major view
``(prod(shape[:d]), C, prod(shape[d+1:]))``: no transpose copy, the noise of each element is that
of its row-major index, and the statistics are those of the channels over every other dim.
"""

import importlib

import pytest
import torch
from conftest import usable_backends
from torch import nn

import anoise.functional as AF
import anoise.reference
from anoise import AdaptiveNoise, AdaptiveNoiseLinear
from anoise.functional import _channels_view

BACKENDS = usable_backends("cpu")
_backends = importlib.import_module("anoise.backends")  # anoise.backends is the function
SEED = 12345


def _tokens(shape=(3, 5, 7), dtype=torch.float32, gen=0):
    g = torch.Generator().manual_seed(gen)
    C = shape[-1]
    return (torch.randn(shape, generator=g, dtype=dtype) * torch.linspace(0.5, 3, C) + 1).to(dtype)


def test_channels_view_shapes_and_storage():
    x = _tokens((2, 3, 4, 5))
    for d, shape in [(-1, (24, 5, 1)), (3, (24, 5, 1)), (2, (6, 4, 5)), (0, (1, 2, 60))]:
        v = _channels_view(x, d)
        assert v.shape == shape and v.data_ptr() == x.data_ptr() and v._base is x
        assert torch.equal(v.flatten(), x.flatten())  # row-major order kept
    assert _channels_view(x, 1) is x and _channels_view(x, -3) is x
    sliced = _tokens((3, 5, 12))[..., 2:9]  # (N, L, C) slice of wider tokens: not contiguous
    v = _channels_view(sliced, -1)
    assert not sliced.is_contiguous() and v.data_ptr() == sliced.data_ptr()
    assert v.stride() == (12, 1, 1)
    assert _channels_view(torch.ones(6), 0).shape == (1, 6, 1)


class _Spy:
    """Records the (N, C, S) input that reaches the backend."""

    def __init__(self, monkeypatch, backend):
        self.seen = []
        if backend == "reference":
            real = anoise.reference.adaptive_noise_batch

            def ref(x3, *args, **kwargs):
                self.seen.append(x3)
                return real(x3, *args, **kwargs)

            monkeypatch.setattr(anoise.reference, "adaptive_noise_batch", ref)
            return
        real_launcher = _backends.launcher(backend)
        spy = self

        class Launcher:
            def __getattr__(self, name):
                return getattr(real_launcher, name)

            def forward_batch(self, x3, *args, **kwargs):
                spy.seen.append(x3)
                return real_launcher.forward_batch(x3, *args, **kwargs)

            if hasattr(real_launcher, "eager_batch"):  # takes x as the launchers' 3-D view

                def eager_batch(self, x, *args, **kwargs):
                    spy.seen.append(x)
                    return real_launcher.eager_batch(x, *args, **kwargs)

        monkeypatch.setattr(_backends, "launcher", lambda name: Launcher())


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_copy_reaches_the_backend(backend, monkeypatch):
    spy = _Spy(monkeypatch, backend)
    wide = _tokens((3, 5, 12))
    x = wide[..., 2:9]
    AF.adaptive_noise(x, 0.5, seed=SEED, backend=backend, channels_dim=-1)
    (x3,) = spy.seen
    assert x3.shape == (15, 7, 1) and x3.data_ptr() == x.data_ptr()
    assert x3.untyped_storage().data_ptr() == wide.untyped_storage().data_ptr()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_as_the_reshaped_input_whatever_the_layout(backend, training):
    """Channels last is the row-major reshape (same noise indices), in any layout."""
    wide = _tokens((3, 5, 12))
    x = wide[..., 2:9]
    C = x.shape[-1]

    def noisy(t, channels_dim):
        rv = torch.linspace(0.5, 2.0, C)
        return AF.adaptive_noise(t, 0.5, running_var=rv, training=training, seed=SEED,
                                 backend=backend, channels_dim=channels_dim)

    flat = noisy(x.reshape(-1, C), 1).reshape(x.shape)
    torch.testing.assert_close(noisy(x, -1), flat, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(noisy(x.contiguous(), -1), flat, atol=1e-6, rtol=1e-6)
    assert not torch.equal(flat, x)
    # A channel dim in the middle: (N, L, C, K) is (N * L, C, K).
    x4 = _tokens((2, 3, 4, 5))
    rv4 = torch.ones(4)
    y4 = AF.adaptive_noise(x4, 0.5, running_var=rv4, training=training, seed=SEED,
                           backend=backend, channels_dim=2)
    ref4 = AF.adaptive_noise(x4.reshape(6, 4, 5), 0.5, running_var=rv4, training=training,
                             seed=SEED, backend=backend)
    torch.testing.assert_close(y4, ref4.reshape(x4.shape), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_are_those_of_the_transposed_tensor(backend):
    """Same running variance as channels-first input, and BatchNorm1d over the tokens."""
    tokens = AdaptiveNoise(7, 0.5, momentum=None, channels_dim=-1, backend=backend)
    first = AdaptiveNoise(7, 0.5, momentum=None, backend=backend)
    bn = nn.BatchNorm1d(7, momentum=None)
    for gen in range(3):
        x = _tokens((3, 5, 7), gen=gen) * 2
        tokens(x)
        first(x.transpose(1, 2).contiguous())
        bn(x.reshape(-1, 7))
    torch.testing.assert_close(tokens.running_var, bn.running_var)
    torch.testing.assert_close(tokens.running_var, first.running_var)
    assert tokens.num_batches_tracked.item() == 3


# Triton's (M, C, 1) gradients are checked against the SPEC formula in test_twins (linear):
# gradcheck's hundred interpreted launches would take a minute.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_gradcheck_channels_last(backend):
    x = _tokens((2, 3, 5), dtype=torch.float64).requires_grad_()
    alpha = torch.rand(5, dtype=torch.float64, requires_grad=True)
    rv = torch.rand(5) + 0.5

    def batch(x, alpha):
        return AF.adaptive_noise(x, alpha, seed=7, backend=backend, channels_dim=-1)

    def running(x, alpha):
        return AF.adaptive_noise(x, alpha, running_var=rv, training=False, seed=7,
                                 backend=backend, channels_dim=-1)

    assert torch.autograd.gradcheck(batch, (x, alpha))
    assert torch.autograd.gradcheck(running, (x, alpha))


def test_alpha_zero_returns_the_input_itself():
    x = _tokens()
    assert AF.adaptive_noise(x, 0.0, channels_dim=-1) is x
    rv = torch.ones(7)
    assert AF.adaptive_noise(x, 0.0, running_var=rv, channels_dim=2) is x
    assert not torch.equal(rv, torch.ones(7))  # statistics still tracked


def test_unbatched_linear_input_in_eval():
    layer = AdaptiveNoiseLinear(4, 6, alpha=0.5).eval()
    x = torch.randn(4)
    y = layer(x)
    assert y.shape == (6,) and not torch.equal(y, nn.functional.linear(x, layer.weight,
                                                                        layer.bias))
    torch.manual_seed(0)
    one = layer(x)
    torch.manual_seed(0)
    assert torch.equal(layer(x.view(1, 1, 4)).view(6), one)  # same element, same noise


def test_bad_channels_dim():
    x = _tokens()
    with pytest.raises(TypeError, match="channels_dim"):
        AF.adaptive_noise(x, 0.1, channels_dim=1.0)
    with pytest.raises(ValueError, match=r"channels_dim must be in \[-3, 3\)"):
        AF.adaptive_noise(x, 0.1, channels_dim=3)
    with pytest.raises(ValueError, match="at least 1 dim"):
        AF.adaptive_noise(torch.tensor(1.0), 0.1, channels_dim=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        AF.adaptive_noise([1.0, 2.0], 0.1, channels_dim=-1)
    with pytest.raises(ValueError, match="running_var must have shape"):
        AF.adaptive_noise(x, 0.1, running_var=torch.ones(5), channels_dim=-1)
    with pytest.raises(TypeError, match="channels_dim"):
        AdaptiveNoise(7, channels_dim=True)
    with pytest.raises(ValueError, match="expects 7 channels in dim -1"):
        AdaptiveNoise(7, channels_dim=-1)(torch.randn(2, 7, 3))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        AdaptiveNoiseLinear(4, 6)(torch.randn(2, 3, 5))


@pytest.fixture
def fresh_dynamo():
    # Dynamo remembers the float alphas it saw per code object and makes a new value symbolic,
    # which the host-side alpha checks cannot trace: leave no such state to other tests.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "cpu"])
def test_compile_fullgraph_tokens(backend, fresh_dynamo):
    """A token MLP traces without graph breaks and matches eager, training then eval."""
    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(AdaptiveNoiseLinear(6, 10, alpha=0.3, backend=backend),
                             nn.GELU(), nn.LayerNorm(10),
                             AdaptiveNoiseLinear(10, 6, alpha=0.3, learnable_alpha=True,
                                                 backend=backend))

    x = _tokens((2, 5, 6))
    eager, compiled = mlp(), mlp()
    run = torch.compile(compiled, fullgraph=True)
    outs = []
    for model, call in ((eager, eager), (compiled, run)):
        torch.manual_seed(1)
        call(x).square().mean().backward()
        model.eval()
        torch.manual_seed(2)
        outs.append(call(x))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[3].noise.alpha.grad, eager[3].noise.alpha.grad,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[0].noise.running_var, eager[0].noise.running_var)
