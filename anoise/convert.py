"""Teacher-initialisation and whole-model helpers."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .modules import TWINS as _TWINS
from .modules import AdaptiveNoise


def to_stochastic(
    model: nn.Module,
    alpha: float = 0.1,
    *,
    layers: tuple[type, ...] = (nn.Conv2d,),
    exclude: Iterable[str | type] = (),
    **noise_options,
) -> nn.Module:
    """A teacher-initialised stochastic student of ``model``.

    Returns a deep copy of ``model`` in which every module whose type is one of ``layers``
    (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, ``nn.Linear``) is replaced by its
    ``AdaptiveNoise*`` twin with the weights copied.  Types match exactly: a subclass, such as
    the output projection of ``nn.MultiheadAttention`` (used through its weights, never its
    forward), is left alone.  ``exclude`` holds qualified module names (``"fc"``,
    ``"layer1.0.conv1"``) or types to leave deterministic.  ``model`` itself is not changed.
    """
    layers = tuple(layers)
    for layer in layers:
        if layer not in _TWINS:
            names = ", ".join(f"nn.{t.__name__}" for t in _TWINS)
            raise ValueError(f"layers may contain only {names}; got {layer.__name__}")
    exclude = tuple(exclude)
    for e in exclude:
        if not isinstance(e, (str, type)):
            raise TypeError(f"exclude must hold module names or types, got {e!r}")
    student = copy.deepcopy(model)
    _replace(student, "", layers, exclude, alpha, noise_options)
    return student


def _replace(parent: nn.Module, prefix: str, layers, exclude, alpha, noise_options) -> None:
    for name, child in list(parent.named_children()):
        qualname = prefix + name
        if qualname in exclude or any(isinstance(e, type) and isinstance(child, e)
                                      for e in exclude):
            continue
        twin = next((_TWINS[t] for t in layers if type(child) is t), None)
        if twin is not None:
            setattr(parent, name, twin.from_module(child, alpha=alpha, **noise_options))
        else:
            _replace(child, qualname + ".", layers, exclude, alpha, noise_options)


def noise_layers(model: nn.Module) -> list[AdaptiveNoise]:
    """Every :class:`AdaptiveNoise` in ``model``."""
    return [m for m in model.modules() if isinstance(m, AdaptiveNoise)]


def set_alpha(model: nn.Module, alpha: float) -> nn.Module:
    """Set the degree of stochasticity ``alpha`` of every noise layer of ``model``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if math.isnan(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a float >= 0, got {alpha}")
    for layer in noise_layers(model):
        if isinstance(layer.alpha, Tensor):
            with torch.no_grad():
                layer.alpha.fill_(alpha)
        else:
            layer.alpha = float(alpha)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Fill the noise layers' running variances from ``batches``, changing no weight.

    Each noise layer's ``running_var`` becomes the average of the (unbiased) batch variances
    seen.  Every other module runs in eval mode, so BatchNorm statistics and dropout are left
    alone.  ``batches`` yields inputs, or tuples/lists whose first item is the input.
    """
    layers = noise_layers(model)
    if not layers:
        raise ValueError("calibrate: the model has no AdaptiveNoise layers")
    modes = {m: m.training for m in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the calibration batches
        layer.train()
    try:
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x)
            seen += 1
        if seen == 0:
            raise ValueError("calibrate: batches yielded nothing")
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return model


def convert_sync(model: nn.Module, process_group=None) -> nn.Module:
    """Make every noise layer of ``model`` take its batch statistics over all ranks (in place).

    The counterpart of ``nn.SyncBatchNorm.convert_sync_batchnorm`` for DDP training: the noise
    scale then comes from the global batch, and gradients equal those of one process.
    """
    for layer in noise_layers(model):
        layer.sync_stats = True
        layer.process_group = process_group
    return model


def ensemble_predict(model: nn.Module, x: Tensor, samples: int = 10) -> Tensor:
    """Mean softmax over ``samples`` stochastic forward passes of ``model`` on ``x``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    probs = model(x).softmax(dim=-1)
    for _ in range(samples - 1):
        probs = probs + model(x).softmax(dim=-1)
    return probs / samples
