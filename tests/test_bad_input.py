"""Every bad input of SPEC section 7 raises a clear ValueError / TypeError naming the argument."""

import numpy as np
import pytest
import torch
from conftest import usable_backends

import anoise
import anoise.functional as AF
from anoise import AdaptiveNoise, AdaptiveNoiseConv2d


@pytest.mark.parametrize(
    "x, err, match",
    [
        (torch.randn(5), ValueError, "at least 2 dims"),
        (torch.tensor(1.0), ValueError, "at least 2 dims"),
        (torch.ones(4, 3, dtype=torch.int64), TypeError, "floating dtype"),
        (torch.ones(4, 3, dtype=torch.complex64), TypeError, "floating dtype"),
        ([[1.0, 2.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_x(x, err, match):
    with pytest.raises(err, match=match):
        AF.adaptive_noise(x, 0.1)


@pytest.mark.parametrize(
    "alpha, err, match",
    [
        (-0.1, ValueError, "alpha must be >= 0"),
        (float("nan"), ValueError, "alpha must not be NaN"),
        (torch.tensor([0.1, -0.2, 0.3]), ValueError, "alpha must be >= 0"),
        (torch.tensor([0.1, float("nan"), 0.3]), ValueError, "NaN"),
        (torch.ones(4), ValueError, r"shape \(3,\)"),
        (torch.ones(3, 1), ValueError, r"shape \(3,\)"),
        (torch.ones(3, dtype=torch.int64), TypeError, "floating"),
        ("0.1", TypeError, "alpha must be a float"),
        (True, TypeError, "alpha must be a float"),
    ],
)
def test_bad_alpha(alpha, err, match):
    with pytest.raises(err, match=match):
        AF.adaptive_noise(torch.randn(4, 3, 2), alpha)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(running_var=torch.ones(4)), ValueError, r"running_var must have shape \(3,\)"),
        (dict(running_var=torch.ones(3, 1)), ValueError, "running_var must have shape"),
        (dict(running_var=torch.ones(3, device="meta")), ValueError, "running_var is on meta"),
        (dict(running_var=[1.0, 1.0, 1.0]), TypeError, "running_var must be a tensor"),
        (dict(running_var=torch.ones(3, dtype=torch.int64)), TypeError, "must be a floating"),
        (dict(running_var=torch.ones(3), momentum=None), ValueError, "num_batches_tracked"),
        (dict(momentum=1.5), ValueError, "momentum"),
        (dict(eps=0.0), ValueError, "eps must be > 0"),
        (dict(eps=-1e-5), ValueError, "eps must be > 0"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(backend="nope"), ValueError, "backend must be 'auto' or one of"),
        (dict(backend="cuda"), ValueError, "backend='cuda' is unavailable"),
        (dict(backend=3), TypeError, "backend must be a str"),
    ],
)
def test_bad_options(kwargs, err, match):
    with pytest.raises(err, match=match):
        AF.adaptive_noise(torch.randn(4, 3, 2), 0.1, **kwargs)


def test_unavailable_backend_says_why():
    info = anoise.backends()
    assert info["reference"].available and info["reference"]
    for name, status in info.items():
        if not status:
            assert status.reason, name
            with pytest.raises(ValueError, match="unavailable"):
                AF.adaptive_noise(torch.randn(4, 3), 0.1, backend=name)


def test_module_channel_mismatch():
    with pytest.raises(ValueError, match="expects 3 channels"):
        AdaptiveNoise(3)(torch.randn(2, 4, 5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eval_stats="mean"), "eval_stats must be one of"),
        (dict(backend="fast"), "backend must be 'auto' or one of"),
        (dict(alpha=-1.0), "alpha must be >= 0"),
    ],
)
def test_bad_module_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveNoise(3, **kwargs)
    with pytest.raises(ValueError, match=match):
        AdaptiveNoiseConv2d(3, 3, 1, **kwargs)


def test_bad_num_channels():
    with pytest.raises(ValueError, match="num_channels"):
        AdaptiveNoise(0)


def test_from_module_wrong_type():
    with pytest.raises(TypeError, match="expects an instance of Conv2d"):
        AdaptiveNoiseConv2d.from_module(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("backend", usable_backends("cpu"))
def test_numpy_scalars_are_numbers(backend):
    x = torch.randn(4, 3, 2)
    for mode in (True, False):
        kw = dict(running_var=torch.ones(3), training=mode, backend=backend)
        expected = AF.adaptive_noise(x, 0.25, seed=2**64 - 1, momentum=0.5, eps=1e-3, **kw)
        got = AF.adaptive_noise(x, np.float32(0.25), seed=np.uint64(2**64 - 1),
                                momentum=np.float64(0.5), eps=np.float32(1e-3), **kw)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    layer = AdaptiveNoise(3, np.float64(0.2), momentum=np.float32(0.5), eps=np.float64(1e-4))
    anoise.set_alpha(layer, np.float32(0.3))
    assert layer.alpha.item() == pytest.approx(0.3)
    assert type(layer.momentum) is float and type(layer.eps) is float


@pytest.mark.parametrize("backend", usable_backends("cpu"))
@pytest.mark.parametrize("name, value", [("training", "False"), ("training", 0),
                                         ("stats_grad", "no"), ("stats_grad", None),
                                         ("sync_stats", "yes")])
def test_flags_must_be_bools(backend, name, value):
    with pytest.raises(TypeError, match=f"{name} must be a bool"):
        AF.adaptive_noise(torch.randn(4, 3, 2), 0.1, backend=backend, **{name: value})


@pytest.mark.parametrize(
    "name, value, err",
    [
        ("momentum", 5, ValueError),
        ("momentum", -0.1, ValueError),
        ("momentum", "0.1", TypeError),
        ("eps", -1, ValueError),
        ("eps", 0.0, ValueError),
        ("eps", None, TypeError),
        ("stats_grad", "no", TypeError),
        ("noise_in_eval", 1, TypeError),
        ("sync_stats", "yes", TypeError),
        ("eval_stats", "mean", ValueError),
        ("backend", "fast", ValueError),
        ("backend", None, TypeError),
    ],
)
def test_module_options_are_checked_at_construction_and_when_set(name, value, err):
    with pytest.raises(err, match=name):
        AdaptiveNoise(3, **{name: value})
    with pytest.raises(err, match=name):
        AdaptiveNoiseConv2d(3, 3, 1, **{name: value})
    layer = AdaptiveNoise(3)
    before = getattr(layer, name)
    with pytest.raises(err, match=name):
        setattr(layer, name, value)
    assert getattr(layer, name) == before
