"""Small hand-written architectures, as a user would convert them: VGG, ResNet, MobileNet and
transformer style.  Each converts, matches its teacher at alpha = 0, trains, calibrates and
evaluates (stochastic, ensemble) on every usable backend."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import usable_backends
from torch import nn
from torch.nn import functional as F

import anoise

# Triton runs each layer type of these models in test_twins; whole models under its
# interpreter would take minutes.
BACKENDS = [b for b in usable_backends("cpu") if b != "triton"]

# ResNet's basic block, as the end-to-end benchmark builds it.
_spec = importlib.util.spec_from_file_location(
    "anoise_bench_resnet", Path(__file__).resolve().parent.parent / "benchmarks" / "resnet.py")
_resnet = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resnet)
BasicBlock = _resnet.BasicBlock


def vgg():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 8), *block(8, 8), nn.MaxPool2d(2), *block(8, 12),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12 * 2 * 2, 10))


def resnet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         BasicBlock(8, 8, 1), BasicBlock(8, 12, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, grouped 1x1 projection."""

    def __init__(self, channels, expand=2, groups=2):
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


def mobilenet():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.ReLU6(), InvertedResidual(8), InvertedResidual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (N, L, C) tokens
        N, L, C = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(N, L, C))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads=2):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim=12, patch=4, tokens=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.blocks = nn.Sequential(TransformerBlock(dim), TransformerBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (N, L, C), no copy
        return self.head(self.norm(self.blocks(x)).mean(1))


ARCHS = {"vgg": vgg, "resnet": resnet, "mobilenet": mobilenet, "vit": ViT}


def _data(n=8, gen=0):
    g = torch.Generator().manual_seed(gen)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _teacher(arch):
    torch.manual_seed(0)
    teacher = ARCHS[arch]()
    x, _ = _data(gen=9)
    with torch.no_grad():  # BatchNorm statistics of a "trained" teacher
        teacher.train()(x)
    return teacher.eval()


def _converted_types(model):
    return sum(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_convert_train_calibrate_evaluate(arch, backend):
    teacher = _teacher(arch)
    x, target = _data()

    exact = anoise.to_stochastic(teacher, 0.0, layers=(nn.Conv2d, nn.Linear), backend=backend)
    assert torch.equal(exact.eval()(x), teacher(x))

    student = anoise.to_stochastic(teacher, 0.2, layers=(nn.Conv2d, nn.Linear), backend=backend)
    assert len(anoise.noise_layers(student)) == _converted_types(teacher) > 0
    assert _converted_types(student) == 0 and student.training == teacher.training

    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=3e-2)
    torch.manual_seed(1)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(student(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses

    batches = [_data(gen=g) for g in range(2, 5)]
    # BatchNorm statistics of the noisy activations (see the README), then the noise scales.
    torch.optim.swa_utils.update_bn(batches, student)
    before = {k: v.clone() for k, v in student.state_dict().items() if "noise" not in k}
    anoise.calibrate(student, batches)
    for k, v in before.items():  # no weight and no BatchNorm statistic moved
        assert torch.equal(student.state_dict()[k], v), k
    for layer in anoise.noise_layers(student):
        assert not torch.equal(layer.running_var, torch.ones_like(layer.running_var))

    student.eval()
    with torch.no_grad():
        a, b = student(x), student(x)
        probs = anoise.ensemble_predict(student, x, samples=4)
    assert torch.isfinite(a).all() and not torch.equal(a, b)  # stochastic at inference
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(x)))
    assert (probs.argmax(-1) == target).float().mean() > 0.5  # it learned the batch


def test_batchnorm_after_a_noisy_conv_tracks_the_noisy_activations():
    """The noise goes after the conv, before its BatchNorm: the student's BatchNorm sees
    variance ``var * (1 + alpha**2)``.  Its running statistics follow only when BatchNorm runs
    in train mode (fine-tuning, or ``update_bn``); ``anoise.calibrate`` leaves them alone."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    batches = [_data(32, gen=g)[0] for g in range(4)]
    torch.optim.swa_utils.update_bn(batches, teacher)
    alpha = 1.0
    student = anoise.to_stochastic(teacher, alpha)
    stale = student[1].running_var.clone()
    anoise.calibrate(student, batches)
    assert torch.equal(student[1].running_var, stale)  # still the teacher's, clean, statistics

    recal = copy.deepcopy(student)
    torch.optim.swa_utils.update_bn(batches, recal)
    ratio = recal[1].running_var / teacher[1].running_var
    torch.testing.assert_close(ratio, torch.full((8,), 1 + alpha**2), atol=0, rtol=0.1)
    anoise.calibrate(recal, batches)  # noise scales after the BatchNorm statistics settle

    x = _data(256, gen=7)[0]
    with torch.no_grad():
        std_stale = student.eval()(x).transpose(0, 1).flatten(1).std(1)
        std_recal = recal.eval()(x).transpose(0, 1).flatten(1).std(1)
    torch.testing.assert_close(std_recal, torch.ones(8), atol=0, rtol=0.1)
    torch.testing.assert_close(std_stale, torch.full((8,), (1 + alpha**2) ** 0.5), atol=0,
                               rtol=0.1)
