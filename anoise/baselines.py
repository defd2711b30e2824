"""Earlier stochastic defences, as drop-in convolutions, to compare against in one harness.

- PNI, Parametric Noise Injection (He, Rakin and Fan, CVPR 2019), weight variant (PNI-W):
  each forward uses ``W + a * std(W) * eta`` with ``eta ~ N(0, 1)`` per weight and one
  learnable scale ``a`` per layer (initialised to 0.25).  PNI trains ``a`` jointly with
  adversarial training; without it the clean loss drives ``a`` towards zero.
- RSE, Random Self-Ensemble (Liu et al., ECCV 2018): Gaussian noise of a fixed std is added to
  the input of every convolution (a larger std for the first, which sees the image).

Both keep their noise on at inference, as the papers do, and both subclass ``nn.Conv2d`` so a
teacher's weights load into them.  Their noise comes from ``torch.randn``, so
``torch.manual_seed`` reproduces a run.  :func:`without_noise` switches off the noise of these
and of anoise's own layers on a copy, for the noise-off ablation.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .convert import noise_layers, set_alpha
from .modules import copy_parameters, layer_args


class PNIConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weights get learnable-scale Gaussian noise on every pass (PNI-W)."""

    def __init__(self, *args, pni_alpha: float = 0.25, **kwargs):
        super().__init__(*args, **kwargs)
        if pni_alpha < 0:
            raise ValueError(f"pni_alpha must be >= 0, got {pni_alpha}")
        self.pni_alpha = nn.Parameter(torch.tensor(float(pni_alpha),
                                                   device=self.weight.device))

    @classmethod
    def from_module(cls, conv: nn.Conv2d, pni_alpha: float = 0.25) -> PNIConv2d:
        new = cls(**layer_args(conv), pni_alpha=pni_alpha)
        copy_parameters(new, conv)
        return new

    def forward(self, x: Tensor) -> Tensor:
        # The std is not differentiated through, as in PNI: only the scale is learned.
        noise = torch.randn_like(self.weight) * self.weight.detach().std()
        return self._conv_forward(x, self.weight + self.pni_alpha * noise, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pni_alpha={self.pni_alpha.item():.4g}"


class RSEConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input gets ``N(0, noise_std^2)`` noise on every pass (RSE)."""

    def __init__(self, *args, noise_std: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)

    @classmethod
    def from_module(cls, conv: nn.Conv2d, noise_std: float = 0.1) -> RSEConv2d:
        new = cls(**layer_args(conv), noise_std=noise_std)
        copy_parameters(new, conv)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", noise_std={self.noise_std}"


def _convs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """(parent, attribute, conv) for every plain ``nn.Conv2d``, in registration order."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Conv2d:
                found.append((parent, name, child))
    return found


def to_pni(model: nn.Module, pni_alpha: float = 0.25) -> nn.Module:
    """Deep copy of ``model`` with every ``nn.Conv2d`` replaced by a :class:`PNIConv2d`."""
    model = copy.deepcopy(model)
    for parent, name, conv in _convs(model):
        setattr(parent, name, PNIConv2d.from_module(conv, pni_alpha))
    return model


def to_rse(model: nn.Module, input_std: float = 0.2, inner_std: float = 0.1) -> nn.Module:
    """Deep copy of ``model`` with noise before every ``nn.Conv2d`` (RSE).

    The first convolution (in registration order) gets ``input_std``, the others
    ``inner_std``.
    """
    model = copy.deepcopy(model)
    for i, (parent, name, conv) in enumerate(_convs(model)):
        setattr(parent, name, RSEConv2d.from_module(conv, input_std if i == 0 else inner_std))
    return model


def pni_alphas(model: nn.Module) -> list[float]:
    """The learned noise scales of every :class:`PNIConv2d` of ``model``."""
    return [m.pni_alpha.item() for m in model.modules() if isinstance(m, PNIConv2d)]


def without_noise(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` with every noise source switched off, the weights unchanged.

    Adaptive-noise layers get ``alpha = 0`` (they then return their input exactly), PNI
    layers a zero noise scale, RSE layers a zero std.  Evaluating this twin next to the
    stochastic model separates what training with noise did to the weights from what the
    noise does at inference.  Raises ``ValueError`` when ``model`` has no noise to remove.
    """
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, (PNIConv2d, RSEConv2d))]
    if not layers and not noise_layers(model):
        raise ValueError("without_noise: the model has no AdaptiveNoise, PNI or RSE layers")
    if noise_layers(model):
        set_alpha(model, 0.0)
    for m in layers:
        if isinstance(m, PNIConv2d):
            with torch.no_grad():
                m.pni_alpha.zero_()
        else:
            m.noise_std = 0.0
    return model


__all__ = ["PNIConv2d", "RSEConv2d", "pni_alphas", "to_pni", "to_rse", "without_noise"]
