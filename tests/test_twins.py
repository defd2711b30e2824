"""The stochastic twins of every conv / linear layer, on every usable backend.

Each backend is checked against the SPEC formulas evaluated in float64 with that backend's own
noise (read back through its eval path), so the checks hold whichever noise stream a fused
backend draws: what they test is the twin's wiring (channel dim, statistics, gradients).
"""

import copy
import inspect
import math

import pytest
import torch
from conftest import DEVICES, usable_backends
from torch import nn

import anoise
import anoise.functional as AF
from anoise.modules import TWINS, layer_args
from anoise.ops import draw_seed

# (nn layer, its twin, constructor arguments, input shape): tiny outputs (30..288 elements, C
# not a multiple of 4) so the Triton interpreter stays quick.
CASES = {
    "conv1d": (nn.Conv1d, anoise.AdaptiveNoiseConv1d, dict(in_channels=3, out_channels=5,
                                                    kernel_size=3, padding=1), (3, 3, 7)),
    "conv2d": (nn.Conv2d, anoise.AdaptiveNoiseConv2d,
               dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1,
                    bias=False, padding_mode="reflect"), (2, 3, 7, 5)),
    "conv3d": (nn.Conv3d, anoise.AdaptiveNoiseConv3d,
               dict(in_channels=2, out_channels=3, kernel_size=(2, 3, 2), padding=(0, 1, 1)),
               (2, 2, 3, 4, 3)),
    "convT1d": (nn.ConvTranspose1d, anoise.AdaptiveNoiseConvTranspose1d,
                dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, output_padding=1),
                (2, 3, 5)),
    "convT2d": (nn.ConvTranspose2d, anoise.AdaptiveNoiseConvTranspose2d,
                dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1,
                     groups=2), (2, 4, 3, 2)),
    "convT3d": (nn.ConvTranspose3d, anoise.AdaptiveNoiseConvTranspose3d,
                dict(in_channels=2, out_channels=3, kernel_size=2, stride=(1, 2, 1),
                     dilation=(1, 1, 2)), (2, 2, 2, 2, 3)),
    "linear": (nn.Linear, anoise.AdaptiveNoiseLinear, dict(in_features=7, out_features=5),
               (2, 3, 7)),
}
ON_DEVICES = [pytest.param(d, b, id=f"{d}-{b}") for d in DEVICES for b in usable_backends(d)]
EPS = 1e-5


def _teacher(case, dtype=torch.float32, device="cpu"):
    base, _, args, shape = CASES[case]
    torch.manual_seed(0)
    teacher = base(**args, dtype=dtype, device=device)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.3)  # outputs with a non-zero mean per channel
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return teacher, x.to(device)


def _channels_dim(twin):
    return -1 if twin is anoise.AdaptiveNoiseLinear else 1


def test_twins_are_exported_and_mapped_to_their_exact_layer():
    assert set(TWINS) == {base for base, *_ in CASES.values()}
    for base, twin, *_ in CASES.values():
        assert TWINS[base] is twin and getattr(anoise, twin.__name__) is twin
        assert twin.__name__ == "AdaptiveNoise" + base.__name__
    # Transposed convolutions are not subclasses of the plain ones: no cross-mapping.
    assert not issubclass(anoise.AdaptiveNoiseConvTranspose2d, nn.Conv2d)
    assert not issubclass(anoise.AdaptiveNoiseConv2d, nn.ConvTranspose2d)


@pytest.mark.parametrize("case", CASES)
def test_twin_subclasses_its_layer_and_shows_the_noise_options(case):
    base, twin, args, _ = CASES[case]
    layer = twin(**args, alpha=0.25, per_channel_alpha=True, eval_stats="batch")
    assert isinstance(layer, base)
    text = repr(layer)
    assert base(**args).extra_repr() in text
    assert "alpha=tensor" in text and "eval_stats='batch'" in text
    C = args.get("out_channels", args.get("out_features"))
    assert layer.noise.num_channels == C and layer.noise.alpha.shape == (C,)
    assert layer.noise.channels_dim == _channels_dim(twin)


@pytest.mark.parametrize("case", CASES)
def test_signature_has_the_layer_arguments_and_the_noise_options(case):
    base, twin, args, _ = CASES[case]
    params = inspect.signature(twin).parameters
    layer_params = list(inspect.signature(base).parameters)
    assert list(params)[: len(layer_params)] == layer_params
    for name in ("alpha", "learnable_alpha", "eval_stats", "noise_in_eval", "backend"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match="no_such_option"):
        twin(**args, no_such_option=1)
    with pytest.raises(ValueError, match="eval_stats"):
        twin(**args, eval_stats="nope")


@pytest.mark.parametrize("case", CASES)
def test_teacher_state_dict_loads_and_noise_state_keeps_its_defaults(case):
    base, twin, args, _ = CASES[case]
    teacher, _ = _teacher(case)
    student = twin(**args, alpha=0.3, learnable_alpha=True)
    result = student.load_state_dict(teacher.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[name], value), name
    assert torch.equal(student.noise.running_var, torch.ones(student.noise.num_channels))
    assert student.noise.alpha.item() == pytest.approx(0.3)
    extra = set(student.state_dict()) - set(teacher.state_dict())
    assert extra == {"noise.alpha", "noise.running_var", "noise.num_batches_tracked"}
    # and a student's own state_dict round-trips, noise state included
    student.noise.running_var.fill_(2.0)
    again = twin(**args, learnable_alpha=True)
    again.load_state_dict(student.state_dict())
    assert torch.equal(again.noise.running_var, student.noise.running_var)


@pytest.mark.parametrize("case", CASES)
def test_from_module_copies_arguments_and_weights(case):
    base, twin, _, _ = CASES[case]
    teacher, _ = _teacher(case, dtype=torch.float64)
    teacher.weight.requires_grad_(False)
    student = twin.from_module(teacher, alpha=0.2, learnable_alpha=True)
    assert type(student) is twin
    assert layer_args(student) == layer_args(teacher)
    assert student.weight.dtype == torch.float64 and student.noise.alpha.dtype == torch.float64
    assert not student.weight.requires_grad
    for name, value in teacher.named_parameters():
        mine = dict(student.named_parameters())[name]
        assert torch.equal(mine, value) and mine.data_ptr() != value.data_ptr()
    other = next(b for b in CASES.values() if b[0] is not base)
    with pytest.raises(TypeError, match=base.__name__):
        twin.from_module(other[0](**other[2]))
    assert type(copy.deepcopy(student)) is twin


@pytest.mark.parametrize("device, backend", ON_DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_alpha_zero_equals_the_teacher(case, device, backend):
    _, twin, _, _ = CASES[case]
    teacher, x = _teacher(case, device=device)
    student = twin.from_module(teacher, alpha=0.0, backend=backend)
    teacher.eval()
    student.eval()
    assert torch.equal(student(x), teacher(x))
    student.train()
    assert torch.equal(student(x), teacher(x))  # training with alpha 0 still tracks stats
    assert student.noise.num_batches_tracked.item() == 1
    quiet = twin.from_module(teacher, alpha=0.5, noise_in_eval=False, backend=backend).eval()
    assert torch.equal(quiet(x), teacher(x))


def _backend_noise(shape, channels_dim, seed, backend, device):
    """The noise ``backend`` draws for a tensor of ``shape`` on ``seed`` (float64)."""
    C = shape[channels_dim]
    y = AF.adaptive_noise(torch.zeros(shape, device=device), 1.0,
                          running_var=torch.ones(C, device=device), training=False, seed=seed,
                          backend=backend, channels_dim=channels_dim)
    return y.double() / math.sqrt(1 + EPS)


def _spec(z, alpha, noise, channels_dim):
    """SPEC section 2 in float64 autograd: batch statistics over every dim but the channels."""
    dims = [i for i in range(z.dim()) if i != channels_dim % z.dim()]
    mu = z.mean(dims, keepdim=True)
    sigma = torch.sqrt(((z - mu) ** 2).mean(dims, keepdim=True) + EPS)
    return z + alpha * sigma * noise, sigma


@pytest.mark.parametrize("device, backend", ON_DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_training_step_and_input_gradient(case, device, backend, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convs on CUDA
    _, twin, _, _ = CASES[case]
    d = _channels_dim(twin)
    teacher, x = _teacher(case, device=device)
    student = twin.from_module(teacher, alpha=0.5, learnable_alpha=True, backend=backend)
    x = x.requires_grad_()
    w = torch.randn(teacher(x).shape, generator=torch.Generator().manual_seed(2)).to(device)

    torch.manual_seed(3)
    seed = int(draw_seed(x).item()) & (2**64 - 1)  # the seed the student's forward will draw
    torch.manual_seed(3)
    y = student(x)
    (y * w).sum().backward()

    teacher64 = copy.deepcopy(teacher).double()
    x64 = x.detach().double().requires_grad_()
    alpha64 = torch.tensor(0.5, dtype=torch.float64, device=device, requires_grad=True)
    z = teacher64(x64)
    expected, _ = _spec(z, alpha64, _backend_noise(z.shape, d, seed, backend, device), d)
    (expected * w.double()).sum().backward()

    def close(actual, wanted):
        scale = max(wanted.abs().max().item(), 1.0)
        torch.testing.assert_close(actual.double(), wanted, atol=2e-5 * scale, rtol=1e-4)

    close(y.detach(), expected.detach())
    close(x.grad, x64.grad)
    close(student.weight.grad, teacher64.weight.grad)
    if student.bias is not None:
        close(student.bias.grad, teacher64.bias.grad)
    close(student.noise.alpha.grad, alpha64.grad.reshape(1))  # a learnable scalar is (1,)
    # The running variance moved like BatchNorm's, over every dim but the channels.
    zc = z.detach().movedim(d, 0).flatten(1)
    close(student.noise.running_var, 0.9 + 0.1 * zc.var(1))

    before = student.weight.detach().clone()
    torch.optim.SGD(student.parameters(), lr=1e-3).step()
    assert not torch.equal(student.weight, before)
    assert torch.isfinite(student(x.detach())).all()


def _zoo():
    """A model holding one layer of every type that has a twin, plus look-alikes."""
    return nn.ModuleDict({
        "c1": nn.Conv1d(2, 3, 3), "c2": nn.Conv2d(2, 3, 3), "c3": nn.Conv3d(2, 3, 3),
        "t1": nn.ConvTranspose1d(2, 3, 3), "t2": nn.ConvTranspose2d(2, 3, 3),
        "t3": nn.ConvTranspose3d(2, 3, 3), "fc": nn.Linear(2, 3),
        "attn": nn.MultiheadAttention(4, 2),  # out_proj subclasses nn.Linear
        "block": nn.Sequential(nn.ConvTranspose2d(3, 2, 1), nn.Conv2d(2, 2, 1)),
    })


def test_to_stochastic_maps_each_type_to_its_exact_twin():
    zoo = _zoo()
    student = anoise.to_stochastic(zoo, 0.1, layers=tuple(TWINS))
    for name, module in zoo.named_modules():
        twin = TWINS.get(type(module))
        converted = student.get_submodule(name)
        if twin is None:
            assert not isinstance(converted, tuple(TWINS.values())), name
            continue
        assert type(converted) is twin, name
        assert layer_args(converted) == layer_args(module)
        assert torch.equal(converted.weight, module.weight)
    assert type(student["attn"].out_proj) is type(zoo["attn"].out_proj)


def test_to_stochastic_layers_selects_types():
    zoo = _zoo()
    default = anoise.to_stochastic(zoo)
    assert [n for n, m in default.named_modules() if isinstance(m, anoise.AdaptiveNoise)] == [
        "c2.noise", "block.1.noise"]
    transposed = anoise.to_stochastic(zoo, layers=(nn.ConvTranspose2d,))
    assert type(transposed["t2"]) is anoise.AdaptiveNoiseConvTranspose2d
    assert type(transposed["block"][0]) is anoise.AdaptiveNoiseConvTranspose2d
    assert type(transposed["c2"]) is nn.Conv2d and type(transposed["block"][1]) is nn.Conv2d
    with pytest.raises(ValueError, match="nn.ConvTranspose3d"):
        anoise.to_stochastic(zoo, layers=(nn.BatchNorm2d,))
