"""The models of the training-step benchmarks: what a user trains a student of.

- ``resnet20``: the CIFAR ResNet-20 (16/32/64 channels), noise after every convolution;
- ``wide-cnn``: the same topology with four times the channels (64/128/256), one block per
  stage, where each noise layer's channels are larger;
- ``token``: a 4-block ViT-style encoder over 65 tokens of width 192 (pre-norm attention and
  MLP), noise after every ``nn.Linear`` with ``channels_dim=-1``.

Each entry builds the teacher and its input batch; :func:`student_of` makes the student the
way a user would (``anoise.to_stochastic``), and :func:`without_batchnorm` the teacher with its
BatchNorms replaced by identities (their cost is the difference of the two steps).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import anoise

from .resnet import ResNet20


class TokenBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention, then a 4x MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x):
        B, L, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, W // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, W))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TokenModel(nn.Module):
    """Tokens ``(B, L, width)`` in, class logits out (mean over the tokens)."""

    def __init__(self, width: int = 192, depth: int = 4, heads: int = 3, num_classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(*(TokenBlock(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x)).mean(1))


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # the batch, batch size first
    noise_layers: tuple[type, ...]
    noise_options: dict
    has_batchnorm: bool


MODELS = {
    "resnet20": Spec("resnet20", ResNet20, (32, 3, 32, 32), (nn.Conv2d,), {}, True),
    "wide-cnn": Spec("wide-cnn", lambda: ResNet20(widths=(64, 128, 256), blocks_per_stage=1),
                     (16, 3, 32, 32), (nn.Conv2d,), {}, True),
    # AdaptiveNoiseLinear takes its channels from the last dim (channels_dim=-1).
    "token": Spec("token", TokenModel, (32, 65, 192), (nn.Linear,), {}, False),
}


def student_of(spec: Spec, teacher: nn.Module, backend: str = "auto",
               alpha: float = 0.1) -> nn.Module:
    return anoise.to_stochastic(teacher, alpha=alpha, layers=spec.noise_layers, backend=backend,
                                **spec.noise_options)


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm replaced by ``nn.Identity``."""
    out = copy.deepcopy(model)
    for module in list(out.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, child_name, nn.Identity())
    return out


def batch(spec: Spec, device: torch.device, batch_size: int | None = None):
    """A fixed input batch and integer labels for ``spec``."""
    g = torch.Generator().manual_seed(0)
    shape = spec.input_shape if batch_size is None else (batch_size, *spec.input_shape[1:])
    x = torch.randn(shape, generator=g).to(device)
    y = torch.randint(0, 10, (shape[0],), generator=g).to(device)
    return x, y
