"""Conversion of models nobody here wrote: layer subclasses, attention and PyTorch's fused
transformer paths, unbatched conv input, and the account to_stochastic gives of itself."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import anoise
from anoise import AdaptiveNoiseConv2d, AdaptiveNoiseLinear

# -- look-alikes of model-library layers --------------------------------------------------------

class StdConv2d(nn.Conv2d):
    """Weight-standardised conv (BiT / ResNet-V2, NFNets): standardises its weight in forward."""

    def __init__(self, *args, eps=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x):
        var, mean = torch.var_mean(self.weight, (1, 2, 3), keepdim=True)
        w = (self.weight - mean) / (var + self.eps).sqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TensorFlow-style "same" padding, computed and applied in forward."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-ih // sh) - 1) * sh + kh - ih, 0)
        pw = max((-(-iw // sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Classifier(nn.Linear):
    """A Linear subclass used as a classifier head, with a temperature of its own."""

    def __init__(self, in_features, num_classes, temperature=2.0):
        super().__init__(in_features, num_classes)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


def _library_model():
    torch.manual_seed(0)
    return nn.Sequential(
        StdConv2d(3, 8, 3, padding=1), nn.ReLU(),
        Conv2dSame(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        Classifier(8, 5),
    )


def _x(n=4, size=9):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_subclasses_get_noise_with_their_own_forward():
    teacher = _library_model().eval()
    student = anoise.to_stochastic(teacher, 0.0, layers=(nn.Conv2d, nn.Linear)).eval()
    for i in (0, 2, 5, 8):
        assert isinstance(student[i], type(teacher[i])), i
        assert isinstance(student[i], anoise.AdaptiveNoiseConv2d if i < 8 else AdaptiveNoiseLinear)
        assert student[i].noise.alpha.item() == 0.0
    assert student[0].eps == teacher[0].eps and student[8].temperature == 2.0
    # Parameters and state_dict keys: the teacher's, plus the noise state.
    keys = set(student.state_dict())
    assert set(teacher.state_dict()) <= keys
    assert {k for k in keys - set(teacher.state_dict())} == {
        f"{i}.noise.{b}" for i in (0, 2, 5, 8) for b in ("alpha", "running_var",
                                                        "num_batches_tracked")}
    x = _x()
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=0)  # alpha = 0: the teacher
    report = anoise.summary(student)
    assert set(report.converted) == {"0", "2", "5", "8"} and not report.left
    # With noise, the subclass's own output is what gets the noise: "same" padding keeps shape.
    noisy = anoise.to_stochastic(teacher, 0.5, layers=(nn.Conv2d, nn.Linear)).train()
    assert noisy[2](torch.randn(2, 8, 9, 9)).shape == (2, 8, 5, 5)
    assert not torch.equal(noisy(x), teacher(x))
    only = anoise.to_stochastic(teacher, 0.5, layers=StdConv2d)  # a subclass may be named
    assert isinstance(only[0], AdaptiveNoiseConv2d) and type(only[5]) is nn.Conv2d


def test_from_module_keeps_a_subclass_forward():
    conv = StdConv2d(3, 4, 3, eps=1e-3).eval()
    twin = AdaptiveNoiseConv2d.from_module(conv, alpha=0.0)
    assert isinstance(twin, StdConv2d) and isinstance(twin, AdaptiveNoiseConv2d)
    assert twin.eps == 1e-3 and twin.weight is not conv.weight
    x = _x()
    torch.testing.assert_close(twin.eval()(x), conv(x), rtol=0, atol=0)
    assert anoise.twin_class(StdConv2d) is type(twin)  # made once
    with pytest.raises(TypeError, match="expects an instance of Linear, got StdConv2d"):
        AdaptiveNoiseLinear.from_module(conv)


def test_subclass_student_pickles_copies_compiles_and_exports():
    student = anoise.to_stochastic(_library_model(), 0.3, layers=(nn.Conv2d, nn.Linear)).eval()
    x = _x()
    buffer = io.BytesIO()
    torch.save(student, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for clone in (loaded, copy.deepcopy(student)):
        assert type(clone[0]) is type(student[0]) and clone[0].eps == student[0].eps
        torch.manual_seed(5)
        a = clone(x)
        torch.manual_seed(5)
        torch.testing.assert_close(a, student(x))
    again = anoise.to_stochastic(_library_model(), 0.1, layers=(nn.Conv2d, nn.Linear))
    again.load_state_dict(student.state_dict())
    assert again[8].noise.alpha.item() == pytest.approx(0.3)
    compiled = torch.compile(student, backend="eager", fullgraph=True)
    assert compiled(x).shape == (4, 5)
    exported = torch.export.export(student, (x,))
    assert exported.module()(x).shape == (4, 5)


def test_unbatched_conv_input_has_channels_in_dim_0():
    torch.manual_seed(0)
    conv = AdaptiveNoiseConv2d(3, 5, 3, alpha=0.4)  # 5 output channels, H = W = 6 != 5
    x = torch.randn(3, 8, 8)
    torch.manual_seed(1)
    y = conv(x)
    assert y.shape == (5, 6, 6)
    z = nn.Conv2d.forward(conv, x).detach()
    torch.testing.assert_close(conv.noise.running_var, 0.9 + 0.1 * z.flatten(1).var(1))
    conv.noise.reset_running_stats()
    torch.manual_seed(1)
    torch.testing.assert_close(conv(x.unsqueeze(0)).squeeze(0), y)  # same stream, same noise


# -- attention and PyTorch's fused transformer paths ---------------------------------------------

def _differs(model, x, **kwargs):
    with torch.no_grad():
        a, b = model(x, **kwargs), model(x, **kwargs)
    return not torch.equal(a, b)


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_transformer_encoder_layer_keeps_its_noise_on_the_fast_path(grad_mode):
    torch.manual_seed(0)
    teacher = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2,
        enable_nested_tensor=True).eval()
    x = torch.randn(3, 5, 16)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, -1] = True
    with grad_mode():
        a = teacher(x, src_key_padding_mask=mask)
        assert torch.equal(a, teacher(x, src_key_padding_mask=mask))  # deterministic teacher
    student = anoise.to_stochastic(teacher, 0.3, layers=nn.Linear).eval()
    layer = student.layers[0]
    assert isinstance(layer.linear1, AdaptiveNoiseLinear)
    assert isinstance(layer.self_attn, anoise.AdaptiveNoiseMultiheadAttention)
    with grad_mode():
        b = student(x, src_key_padding_mask=mask)
        assert not torch.equal(b, student(x, src_key_padding_mask=mask))
    assert b.shape == a.shape and not b.is_nested
    anoise.calibrate(student, [x, x])
    assert layer.linear1.noise.num_batches_tracked.item() == 2
    assert layer.self_attn.noise.num_batches_tracked.item() == 2
    exact = anoise.to_stochastic(teacher, 0.0, layers=nn.Linear).eval()
    with torch.no_grad():
        torch.testing.assert_close(exact(x), teacher(x))


def test_transformer_decoder_layer_and_attention_get_noise_in_eval():
    torch.manual_seed(0)
    decoder = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    student = anoise.to_stochastic(decoder, 0.3, layers=nn.Linear).eval()
    tgt, memory = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    assert _differs(student, tgt, memory=memory)
    assert isinstance(student.multihead_attn, anoise.AdaptiveNoiseMultiheadAttention)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    noisy = anoise.to_stochastic(attention, 0.3, layers=nn.Linear).eval()
    q = torch.randn(2, 5, 16)
    with torch.no_grad():
        (a, wa), (b, wb) = noisy(q, q, q), noisy(q, q, q)
        exact = anoise.to_stochastic(attention, 0.0, layers=nn.Linear).eval()
        torch.testing.assert_close(exact(q, q, q)[0], attention(q, q, q)[0])
    assert not torch.equal(a, b) and torch.equal(wa, wb)  # noise on the output, not the weights
    assert type(noisy.out_proj) is type(attention.out_proj)
    report = anoise.summary(noisy)
    assert "in_proj_weight" in report.converted[""] and "out_proj" in report.converted
    compiled = torch.compile(noisy, backend="eager", fullgraph=True)  # no graph break
    assert compiled(q, q, q)[0].shape == q.shape
    with pytest.warns(UserWarning, match="out_proj: excluded by name"):
        kept = anoise.to_stochastic(attention, 0.3, layers=nn.Linear, exclude="out_proj")
    assert type(kept) is nn.MultiheadAttention


# -- the account to_stochastic gives -----------------------------------------------------------

def test_converting_nothing_warns_and_names_what_was_left():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"converted nothing.*0: Linear is not an instance"):
        student = anoise.to_stochastic(mlp)
    assert set(anoise.summary(student).left) == {"0", "2"}
    conv1d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Bilinear(3, 3, 2))
    with pytest.warns(UserWarning, match="converted nothing"):
        anoise.to_stochastic(conv1d)
    left = anoise.summary(conv1d).left
    assert "no twin for Bilinear" in left["1"] and "Conv1d" in left["0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student = anoise.to_stochastic(mlp, layers=nn.Linear, exclude="2")
    assert anoise.summary(student).left == {"2": "excluded by name '2'"}
    assert "converted" in str(anoise.summary(student))


def test_lazy_layers_are_named():
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"'0' is an uninitialised lazy layer.*forward pass"):
        anoise.to_stochastic(lazy)
    with pytest.raises(ValueError, match="uninitialised lazy layer.*LazyConv2d"):
        AdaptiveNoiseConv2d.from_module(nn.LazyConv2d(4, 3))
    lazy(torch.randn(1, 2, 5, 5))  # materialised: a plain nn.Conv2d
    assert isinstance(anoise.to_stochastic(lazy)[0], AdaptiveNoiseConv2d)


def test_summary_flags_a_hand_built_layer_on_the_fast_path():
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    layer.linear1 = AdaptiveNoiseLinear.from_module(layer.linear1, 0.3)
    assert "fast path" in anoise.summary(layer).left[""]
    layer.eval()
    x = torch.randn(2, 3, 8)
    anoise.calibrate(layer, [x])  # routes it off the fused kernel
    assert layer.linear1.noise.num_batches_tracked.item() == 1
    assert _differs(layer, x)


class _NoisyLinear(nn.Linear):
    """A Linear subclass with a buffer of its own named like the twin's noise layer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("noise", torch.zeros(self.out_features))


def test_a_layer_that_cannot_take_noise_is_named():
    model = nn.Sequential(nn.Linear(2, 3), _NoisyLinear(3, 2))
    with pytest.raises(TypeError, match=r"to_stochastic: '1': _NoisyLinear already has an "
                                        "attribute 'noise'"):
        anoise.to_stochastic(model, layers=nn.Linear)
    assert type(model[1]) is _NoisyLinear
