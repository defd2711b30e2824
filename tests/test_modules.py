"""Modules, teacher-initialisation and the whole-model helpers."""

import pytest
import torch
from conftest import DEVICES
from torch import nn

import anoise
from anoise import AdaptiveNoise, AdaptiveNoiseConv2d, AdaptiveNoiseLinear


def _teacher():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 10),
    )


def test_subclasses_and_repr():
    conv = AdaptiveNoiseConv2d(3, 4, 3, alpha=0.2, learnable_alpha=True)
    lin = AdaptiveNoiseLinear(5, 6, alpha=0.3)
    assert isinstance(conv, nn.Conv2d) and isinstance(lin, nn.Linear)
    assert "alpha=tensor(1,)" in repr(conv) and "learnable_alpha=True" in repr(conv)
    assert "alpha=0.3" in repr(lin)
    assert isinstance(conv.noise.alpha, nn.Parameter)
    assert any(name.endswith("noise.alpha") for name, _ in conv.named_parameters())


def test_device_and_dtype_arguments():
    conv = AdaptiveNoiseConv2d(3, 4, 3, device="cpu", dtype=torch.float64, per_channel_alpha=True)
    assert conv.weight.dtype == torch.float64 and conv.noise.alpha.dtype == torch.float64
    assert conv.noise.alpha.shape == (4,)
    assert conv.noise.running_var.dtype == torch.float32  # statistics never in low precision
    y = conv(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_to_stochastic_copies_and_leaves_teacher_untouched():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = anoise.to_stochastic(teacher, 0.1, layers=(nn.Conv2d, nn.Linear), exclude=("6",))
    assert isinstance(student[0], AdaptiveNoiseConv2d)
    assert isinstance(student[3], AdaptiveNoiseConv2d)
    assert type(student[6]) is nn.Linear  # excluded by name
    assert type(teacher[0]) is nn.Conv2d
    with torch.no_grad():
        student[0].weight.add_(1)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert student[3].bias is None and student[3].stride == (2, 2)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.tied = self.conv  # one module under two names (weight sharing)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(self.tied(self.conv(x))).mean((2, 3)))


def test_to_stochastic_exclude_is_one_name_or_type():
    student = anoise.to_stochastic(_Net(), layers=(nn.Conv2d, nn.Linear), exclude="fc")
    assert type(student.fc) is nn.Linear
    assert isinstance(student.conv, AdaptiveNoiseConv2d)
    student = anoise.to_stochastic(_Net(), layers=(nn.Conv2d, nn.Linear), exclude=nn.Linear)
    assert type(student.fc) is nn.Linear and isinstance(student.body[1], AdaptiveNoiseConv2d)
    student = anoise.to_stochastic(_Net(), exclude=["body.1", "conv"])
    assert type(student.body[1]) is nn.Conv2d and type(student.conv) is nn.Conv2d
    assert student.tied is student.conv  # excluded under one name: excluded under both


@pytest.mark.parametrize("exclude", ["fcc", ("fc", "body.2"), ["layer1"]])
def test_to_stochastic_unknown_exclude_raises(exclude):
    with pytest.raises(ValueError, match="exclude.*no module named"):
        anoise.to_stochastic(_Net(), exclude=exclude)


def test_to_stochastic_keeps_tied_modules_tied_and_converted():
    teacher = _Net()
    student = anoise.to_stochastic(teacher, 0.2)
    assert isinstance(student.conv, AdaptiveNoiseConv2d) and student.tied is student.conv
    assert teacher.tied is teacher.conv and type(teacher.conv) is nn.Conv2d
    assert torch.equal(student.conv.weight, teacher.conv.weight)
    student(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("layers", [nn.Conv2d, (nn.Conv2d,), [nn.Conv2d]])
def test_to_stochastic_converts_a_root_layer(layers):
    conv = nn.Conv2d(3, 4, 3, bias=False)
    student = anoise.to_stochastic(conv, 0.3, layers=layers)
    assert isinstance(student, AdaptiveNoiseConv2d) and student.bias is None
    assert torch.equal(student.weight, conv.weight) and student.weight is not conv.weight
    linear = anoise.to_stochastic(nn.Linear(3, 2), layers=nn.Linear)
    assert isinstance(linear, AdaptiveNoiseLinear)
    assert type(anoise.to_stochastic(conv, layers=nn.Linear)) is nn.Conv2d


def test_to_stochastic_bare_layer_type():
    student = anoise.to_stochastic(_teacher(), layers=nn.Linear)
    assert isinstance(student[6], AdaptiveNoiseLinear) and type(student[0]) is nn.Conv2d


def test_noise_options_device_and_dtype_build_the_twins():
    teacher = _teacher()
    student = anoise.to_stochastic(teacher, 0.2, layers=(nn.Conv2d, nn.Linear), device="cpu",
                                   dtype=torch.float64, per_channel_alpha=True)
    for i in (0, 3, 6):
        assert student[i].weight.dtype == torch.float64
        assert student[i].noise.alpha.dtype == torch.float64
        torch.testing.assert_close(student[i].weight, teacher[i].weight.double())
    twin = AdaptiveNoiseConv2d.from_module(teacher[0], dtype=torch.float64)
    assert twin.weight.dtype == torch.float64 and teacher[0].weight.dtype == torch.float32


def test_to_stochastic_rejects_unsupported_layers():
    with pytest.raises(ValueError, match="layers"):
        anoise.to_stochastic(_teacher(), layers=(nn.BatchNorm2d,))


def test_teacher_state_dict_loads_into_student():
    teacher = _teacher()
    student = anoise.to_stochastic(_teacher(), 0.2, learnable_alpha=True)
    with torch.no_grad():
        for p in student.parameters():
            p.zero_()
    result = student.load_state_dict(teacher.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(student[0].weight, teacher[0].weight)
    fresh = AdaptiveNoiseConv2d(3, 8, 3, padding=1)
    fresh.load_state_dict(teacher[0].state_dict())
    assert torch.equal(fresh.noise.running_var, torch.ones(8))


@pytest.mark.parametrize("device", DEVICES)
def test_student_with_alpha_zero_equals_teacher_in_eval(device):
    teacher = _teacher().to(device).eval()
    student = anoise.to_stochastic(teacher, 0.0, layers=(nn.Conv2d, nn.Linear)).eval()
    x = torch.randn(4, 3, 8, 8, device=device)
    assert torch.equal(student(x), teacher(x))


def test_noise_in_eval_false_is_identity_and_default_is_stochastic():
    layer = AdaptiveNoise(3, 0.5, noise_in_eval=False).eval()
    x = torch.randn(4, 3, 5)
    assert layer(x) is x
    stochastic = AdaptiveNoise(3, 0.5).eval()
    assert not torch.equal(stochastic(x), stochastic(x))


def test_module_running_var_tracks_batchnorm_and_eval_uses_it():
    layer, bn = AdaptiveNoise(4, 0.5, momentum=None), nn.BatchNorm2d(4, momentum=None)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5) * 3
        layer(x)
        bn(x)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    layer.eval()
    x = torch.randn(6, 4, 5, 5)
    before = layer.running_var.clone()
    torch.manual_seed(1)
    y_full = layer(x)
    torch.manual_seed(1)
    y_part = layer(torch.cat([x[:1], torch.zeros(5, 4, 5, 5)]))
    assert torch.equal(y_full[0], y_part[0])  # running statistics: no dependence on the batch
    assert torch.equal(layer.running_var, before)


def test_eval_stats_batch_uses_the_batch():
    layer = AdaptiveNoise(2, 1.0, eval_stats="batch").eval()
    x = torch.randn(64, 2, 50) * torch.tensor([1e-2, 1e2]).view(1, 2, 1)
    noise_std = (layer(x) - x).transpose(0, 1).reshape(2, -1).std(1)
    torch.testing.assert_close(noise_std, x.transpose(0, 1).reshape(2, -1).std(1), rtol=0.05,
                               atol=0)


def test_linear_student_trains():
    torch.manual_seed(0)
    layer = AdaptiveNoiseLinear(4, 3, alpha=0.1, learnable_alpha=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    assert layer.noise.alpha.grad is not None and layer.weight.grad is not None
    opt.step()


def test_set_alpha_and_ensemble_predict():
    student = anoise.to_stochastic(_teacher(), 0.1, layers=(nn.Conv2d, nn.Linear)).eval()
    anoise.set_alpha(student, 0.0)
    x = torch.randn(3, 3, 8, 8)
    teacher = _teacher().eval()
    probs = anoise.ensemble_predict(student, x, samples=4)
    torch.testing.assert_close(probs, teacher(x).softmax(-1))
    anoise.set_alpha(student, 0.5)
    assert all(layer.alpha == 0.5 for layer in anoise.noise_layers(student))
    probs = anoise.ensemble_predict(student, x, samples=4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="alpha"):
        anoise.set_alpha(student, -1.0)
    with pytest.raises(ValueError, match="samples"):
        anoise.ensemble_predict(student, x, samples=0)


@pytest.mark.parametrize("options", [{}, dict(per_channel_alpha=True),
                                     dict(learnable_alpha=True)])
def test_set_alpha_survives_a_state_dict_round_trip(tmp_path, options):
    layers = (nn.Conv2d, nn.Linear)
    student = anoise.to_stochastic(_teacher(), 0.1, layers=layers, **options)
    anoise.set_alpha(student, 0.35)
    torch.save(student.state_dict(), tmp_path / "student.pt")
    fresh = anoise.to_stochastic(_teacher(), 0.1, layers=layers, **options)
    fresh.load_state_dict(torch.load(tmp_path / "student.pt"))
    for layer in anoise.noise_layers(fresh):
        torch.testing.assert_close(layer.alpha, torch.full_like(layer.alpha, 0.35))
    fresh.eval()
    x = torch.randn(3, 3, 8, 8)
    torch.manual_seed(5)
    expected = student.eval()(x)
    torch.manual_seed(5)
    torch.testing.assert_close(fresh(x), expected)


def test_state_dict_without_alpha_keeps_the_current_value():
    saved = AdaptiveNoise(3, 0.25).state_dict()
    del saved["alpha"]  # as saved before alpha was state
    layer = AdaptiveNoise(3, 0.4)
    assert not layer.load_state_dict(saved).missing_keys
    assert layer.alpha.item() == pytest.approx(0.4)


def test_alpha_is_checked_when_set_and_updated_in_place():
    layer = AdaptiveNoise(3, 0.1, learnable_alpha=True)
    param = layer.alpha
    layer.alpha = 0.5
    assert layer.alpha is param and layer.alpha.item() == 0.5
    layer.alpha = torch.tensor(0.25)
    assert layer.alpha is param and layer.alpha.item() == 0.25
    for bad, err in [(-1.0, ValueError), (float("nan"), ValueError), (torch.ones(3), ValueError),
                     (torch.tensor(-0.5), ValueError), ("0.2", TypeError)]:
        with pytest.raises(err, match="alpha"):
            layer.alpha = bad
    assert layer.alpha.item() == 0.25
    buffered = AdaptiveNoise(3, 0.1, per_channel_alpha=True)
    buffered.alpha = torch.tensor([0.1, 0.2, 0.3])
    assert "alpha" in dict(buffered.named_buffers())
    bad_state = {**buffered.state_dict(), "alpha": torch.tensor([0.1, -0.2, 0.3])}
    with pytest.raises(RuntimeError, match="alpha must be >= 0"):
        buffered.load_state_dict(bad_state)
    torch.testing.assert_close(buffered.alpha, torch.tensor([0.1, 0.2, 0.3]))


def test_calibrate_fills_running_var_without_changing_weights():
    student = anoise.to_stochastic(_teacher(), 0.1)
    student.eval()
    weights = {k: v.clone() for k, v in student.state_dict().items() if "noise" not in k}
    batches = [(torch.randn(16, 3, 8, 8), torch.zeros(16)) for _ in range(3)]
    anoise.calibrate(student, batches)
    for k, v in weights.items():
        assert torch.equal(student.state_dict()[k], v), k
    assert not student.training and not student[0].noise.training
    # The average of the unbiased batch variances of the first conv's output.
    with torch.no_grad():
        outs = [nn.Conv2d.forward(student[0], b[0]) for b in batches]
    expected = torch.stack([o.transpose(0, 1).reshape(8, -1).var(1) for o in outs]).mean(0)
    torch.testing.assert_close(student[0].noise.running_var, expected)
    assert student[0].noise.momentum == 0.1
