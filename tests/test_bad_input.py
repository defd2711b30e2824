"""Every bad input of SPEC section 7 raises a clear ValueError / TypeError naming the argument."""

import pytest
import torch

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
