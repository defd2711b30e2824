"""Teacher-initialisation and whole-model helpers."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .modules import TWINS as _TWINS
from .modules import AdaptiveNoise


def to_stochastic(
    model: nn.Module,
    alpha: float = 0.1,
    *,
    layers: type | Iterable[type] = (nn.Conv2d,),
    exclude: str | type | Iterable[str | type] = (),
    **noise_options,
) -> nn.Module:
    """A teacher-initialised stochastic student of ``model``.

    Returns a deep copy of ``model`` in which every module whose type is one of ``layers``
    (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, ``nn.Linear``; one type or several) is
    replaced by its ``AdaptiveNoise*`` twin with the weights copied; ``model`` itself may be such
    a layer.  Types match exactly: a subclass, such as the output projection of
    ``nn.MultiheadAttention`` (used through its weights, never its forward), is left alone.  A
    module reachable under several names (weight sharing) becomes one twin, still shared.
    ``exclude`` holds qualified module names (``"fc"``, ``"layer1.0.conv1"``) or types to leave
    deterministic (one name or type, or several); a name that ``model`` lacks raises.
    ``noise_options`` go to the twins (``device`` / ``dtype``: where the twins are built,
    default the layer's own).  ``model`` itself is not changed.
    """
    layers = (layers,) if isinstance(layers, type) else tuple(layers)
    for layer in layers:
        if layer not in _TWINS:
            names = ", ".join(f"nn.{t.__name__}" for t in _TWINS)
            name = getattr(layer, "__name__", repr(layer))
            raise ValueError(f"layers may contain only {names}; got {name}")
    exclude = (exclude,) if isinstance(exclude, (str, type)) else tuple(exclude)
    names = dict(model.named_modules(remove_duplicate=False))
    for e in exclude:
        if not isinstance(e, (str, type)):
            raise TypeError(f"exclude must hold module names or types, got {e!r}")
        if isinstance(e, str) and e not in names:
            raise ValueError(f"exclude: the model has no module named {e!r}")
    student = copy.deepcopy(model)
    excluded = {id(m) for name, m in student.named_modules(remove_duplicate=False)
                if name in exclude}
    skip = tuple(e for e in exclude if isinstance(e, type))
    twins = {}  # id(module) -> its replacement: a shared module is converted once

    def convert(module: nn.Module) -> nn.Module:
        if id(module) not in twins:
            twins[id(module)] = module
            twin = next((_TWINS[t] for t in layers if type(module) is t), None)
            if id(module) in excluded or isinstance(module, skip):
                pass
            elif twin is not None:
                twins[id(module)] = twin.from_module(module, alpha=alpha, **noise_options)
            else:
                for name, child in list(module._modules.items()):
                    new = convert(child) if child is not None else None
                    if new is not child:
                        setattr(module, name, new)
        return twins[id(module)]

    return convert(student)


def noise_layers(model: nn.Module) -> list[AdaptiveNoise]:
    """Every :class:`AdaptiveNoise` in ``model``."""
    return [m for m in model.modules() if isinstance(m, AdaptiveNoise)]


def set_alpha(model: nn.Module, alpha: float) -> nn.Module:
    """Set the degree of stochasticity ``alpha`` of every noise layer of ``model``.

    The value is written into each layer's ``alpha`` (a buffer, or the parameter when it is
    learnable), so it is saved with the ``state_dict``.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}")
    if math.isnan(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a float >= 0, got {alpha}")
    for layer in noise_layers(model):
        layer.alpha = float(alpha)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable) -> nn.Module:
    """Fill the noise layers' running variances from ``batches``, changing no weight.

    Each noise layer's ``running_var`` becomes the average of the (unbiased) batch variances
    seen.  Every other module runs in eval mode, so BatchNorm statistics and dropout are left
    alone.  ``batches`` yields inputs, or tuples/lists whose first item is the input.  The
    statistics are gathered in fresh buffers and copied into the layers' own only when every
    batch has run: if ``batches`` is empty or anything raises, the model is left as it was.
    """
    layers = noise_layers(model)
    if not layers:
        raise ValueError("calibrate: the model has no AdaptiveNoise layers")
    modes = {m: m.training for m in model.modules()}
    kept = {layer: (layer.running_var, layer.num_batches_tracked, layer.momentum)
            for layer in layers}
    model.eval()
    try:
        for layer in layers:
            layer.running_var = torch.ones_like(layer.running_var)
            layer.num_batches_tracked = torch.zeros_like(layer.num_batches_tracked)
            layer.momentum = None  # cumulative average over the calibration batches
            layer.train()
        seen = 0
        for batch in batches:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
        if seen == 0:
            raise ValueError("calibrate: batches yielded nothing")
        for layer, (running_var, num_batches_tracked, _) in kept.items():
            running_var.copy_(layer.running_var)
            num_batches_tracked.copy_(layer.num_batches_tracked)
    finally:
        for layer, (running_var, num_batches_tracked, momentum) in kept.items():
            layer.running_var, layer.num_batches_tracked = running_var, num_batches_tracked
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
