"""The noise state of AdaptiveNoise and its twins: meta-device init, reset_parameters, the
shape of alpha, options fixed at construction, and the checks at set / load time."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import anoise
import anoise.functional as AF
from anoise import AdaptiveNoise, AdaptiveNoiseConv2d, AdaptiveNoiseLinear


def _teacher():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


@pytest.mark.parametrize("options", [{}, dict(learnable_alpha=True),
                                     dict(per_channel_alpha=True)])
def test_meta_device_init_then_teacher_weights(options):
    teacher = _teacher()
    with torch.device("meta"):
        student = anoise.to_stochastic(_teacher(), 0.2, layers=(nn.Conv2d, nn.Linear), **options)
    assert "AdaptiveNoise(4, alpha=" in repr(student)  # repr reads no meta value
    student.to_empty(device="cpu")
    for layer in anoise.noise_layers(student):
        assert torch.equal(layer.alpha.detach(), torch.full_like(layer.alpha, 0.2))
        assert torch.equal(layer.running_var, torch.ones_like(layer.running_var))
        assert layer.num_batches_tracked.item() == 0
    result = student.load_state_dict(teacher.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    reference = anoise.to_stochastic(teacher, 0.2, layers=(nn.Conv2d, nn.Linear), **options)
    x = torch.randn(3, 3, 6, 6)
    for mode in (True, False):
        student.train(mode), reference.train(mode)
        torch.manual_seed(1)
        y = student(x)
        torch.manual_seed(1)
        torch.testing.assert_close(y, reference(x))


def test_reset_parameters_restores_the_constructed_noise_state():
    conv = AdaptiveNoiseConv2d(3, 4, 3, alpha=torch.tensor([0.1, 0.2, 0.3, 0.4]),
                               per_channel_alpha=True)
    weight = conv.weight.detach().clone()
    conv(torch.randn(2, 3, 5, 5))
    conv.noise.alpha = 0.9
    conv.reset_parameters()
    assert torch.equal(conv.noise.alpha, torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert torch.equal(conv.noise.running_var, torch.ones(4))
    assert conv.noise.num_batches_tracked.item() == 0
    assert not torch.equal(conv.weight, weight)  # the conv's own reset ran too


def test_learnable_scalar_alpha_is_one_dim_and_both_shapes_load():
    learnable = AdaptiveNoise(3, 0.1, learnable_alpha=True)
    assert isinstance(learnable.alpha, nn.Parameter) and learnable.alpha.shape == (1,)
    state = {**learnable.state_dict(), "alpha": torch.tensor(0.7)}  # saved when it was ()
    learnable.load_state_dict(state)
    assert learnable.alpha.shape == (1,) and learnable.alpha.item() == pytest.approx(0.7)
    fixed = AdaptiveNoise(3, 0.1)
    assert fixed.alpha.shape == ()
    fixed.load_state_dict({**fixed.state_dict(), "alpha": torch.tensor([0.4])})
    assert fixed.alpha.shape == () and fixed.alpha.item() == pytest.approx(0.4)
    learnable.alpha = nn.Parameter(torch.tensor(0.5))  # either shape may be assigned
    x = torch.randn(4, 3, 2)
    learnable(x).sum().backward()
    assert learnable.alpha.grad.shape == ()
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        fixed.alpha = torch.ones(3)


@pytest.mark.parametrize("name, value", [("learnable_alpha", True),
                                         ("per_channel_alpha", True), ("num_channels", 5)])
def test_options_fixed_at_construction_refuse_assignment(name, value):
    layer = AdaptiveNoise(3)
    with pytest.raises(AttributeError, match=f"{name} of AdaptiveNoise is fixed at construction"):
        setattr(layer, name, value)
    assert getattr(layer, name) != value


def test_numpy_integers_for_channels():
    layer = AdaptiveNoise(np.int64(3), channels_dim=np.int64(-1))
    assert type(layer.num_channels) is int and type(layer.channels_dim) is int
    assert layer(torch.randn(4, 5, 3)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        AdaptiveNoise(np.bool_(True))
    with pytest.raises(TypeError, match="channels_dim must be an int"):
        AdaptiveNoise(3, channels_dim=True)


def test_mistyped_noise_options_are_named():
    with pytest.raises(TypeError, match=r"'eval_stat'.*not an argument of Conv2d nor a noise "
                                        r"option; did you mean 'eval_stats'"):
        AdaptiveNoiseConv2d(3, 4, 3, eval_stat="batch")
    with pytest.raises(TypeError, match=r"to_stochastic.*'momentun'.*did you mean 'momentum'"):
        anoise.to_stochastic(_teacher(), momentun=0.1)
    with pytest.raises(TypeError, match=r"from_module.*'learnable'"):
        AdaptiveNoiseLinear.from_module(nn.Linear(2, 3), learnable=True)
    with pytest.raises(TypeError, match=r"exclude must be a module name \(str\), a module type, "
                                        "or an iterable of them, got int"):
        anoise.to_stochastic(_teacher(), exclude=3)


@pytest.mark.parametrize("value, match", [
    (torch.tensor([1.0, -0.5, 1.0, 1.0]), "running_var must be >= 0"),
    (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "running_var must be finite"),
    (torch.tensor([1.0, float("inf"), 1.0, 1.0]), "running_var must be finite"),
])
def test_bad_running_var_is_rejected_at_load(value, match):
    layer = AdaptiveNoiseConv2d(3, 4, 3)
    state = {**layer.state_dict(), "noise.running_var": value}
    with pytest.raises(RuntimeError, match=f"noise.running_var: {match}"):
        layer.load_state_dict(state)
    assert torch.equal(layer.noise.running_var, torch.ones(4))


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -0.1])
def test_alpha_rejects_inf_nan_and_negatives_everywhere(bad):
    layer = AdaptiveNoise(3, 0.2)
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match="alpha"):
        AdaptiveNoise(3, bad)
    with pytest.raises(ValueError, match="alpha"):
        layer.alpha = bad
    with pytest.raises(ValueError, match="alpha"):
        layer.alpha = torch.tensor(bad)
    with pytest.raises(ValueError, match="alpha"):
        anoise.set_alpha(model, bad)
    with pytest.raises(RuntimeError, match="alpha"):
        layer.load_state_dict({**layer.state_dict(), "alpha": torch.tensor(bad)})
    with pytest.raises(ValueError, match="alpha"):
        AF.adaptive_noise(torch.randn(4, 3), bad)
    with pytest.raises(ValueError, match="alpha"):
        AF.adaptive_noise(torch.randn(4, 3), torch.tensor([0.1, bad, 0.1]))
    assert layer.alpha.item() == pytest.approx(0.2)


def test_calibrate_keeps_a_layer_that_saw_no_usable_batch():
    model = nn.Sequential(AdaptiveNoiseLinear(4, 3, alpha=0.1))
    model(torch.randn(16, 4))  # some state to keep
    before = model[0].noise.running_var.clone()
    with pytest.warns(UserWarning, match=r"calibrate: '0.noise' saw no usable batch"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="adaptive_noise: one value per channel")
            anoise.calibrate(model, [torch.randn(1, 4), torch.randn(1, 4)])
    assert torch.equal(model[0].noise.running_var, before)
    assert model[0].noise.num_batches_tracked.item() == 1
