"""Teacher-initialisation and whole-model helpers."""

from __future__ import annotations

import copy
import numbers
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from . import functional as AF
from .modules import ALL_TWINS as _ALL_TWINS
from .modules import AdaptiveNoise, _is_uninitialized_lazy, _NoiseAfter, add_noise
from .modules import check_noise_options as _check_noise_options
from .report import REASONS_ATTR, route_off_fused_paths, summary


def to_stochastic(
    model: nn.Module,
    alpha: float = 0.1,
    *,
    layers: type | Iterable[type] = (nn.Conv2d,),
    exclude: str | type | Iterable[str | type] = (),
    **noise_options,
) -> nn.Module:
    """A teacher-initialised stochastic student of ``model``.

    Returns a deep copy of ``model`` in which every module that is an instance of one of
    ``layers`` (``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, ``nn.Linear``,
    ``nn.MultiheadAttention`` or subclasses of them; one type or several) gets
    :class:`AdaptiveNoise` on its output: its class becomes its twin (``AdaptiveNoiseConv2d``
    for ``nn.Conv2d``, a twin class made for a subclass), its own ``forward``, parameters,
    buffers, hooks and attributes are kept, and so are ``state_dict`` keys and ``isinstance``.
    ``model`` itself may be such a layer.

    An ``nn.MultiheadAttention`` runs ``out_proj`` through its weights, never its forward: when
    ``out_proj`` matches ``layers``, the noise goes on the attention's output (which is
    ``out_proj``'s).  PyTorch's fused transformer fast path (``nn.TransformerEncoderLayer`` in
    eval under ``no_grad``) would skip converted layers: it is switched off for the layers that
    hold noise.  A module reachable under several names (weight sharing) is converted once.

    ``exclude`` holds qualified module names (``"fc"``, ``"layer1.0.conv1"``) or types to leave
    deterministic (one name or type, or several); a name that ``model`` lacks raises.
    ``noise_options`` go to the noise layers (``device`` / ``dtype``: where the converted layers
    go, default where they are).  ``model`` itself is not changed.

    Converting nothing warns, naming the conv/linear-like modules left and why;
    :func:`anoise.summary` lists what was converted and what was left.
    """
    layers = _check_layers(layers)
    exclude = _check_exclude(exclude, model)
    _check_noise_options(noise_options, "to_stochastic", allowed=("device", "dtype"))
    placement = {k: noise_options.pop(k) for k in ("device", "dtype") if k in noise_options}
    student = copy.deepcopy(model)
    excluded_names = {e for e in exclude if isinstance(e, str)}
    excluded_types = tuple(e for e in exclude if isinstance(e, type))
    excluded = {id(m): name for name, m in student.named_modules(remove_duplicate=False)
                if name in excluded_names}
    reasons = {}  # qualified name -> why it was left without noise
    done = {}  # id(module) -> whether it was converted: a shared module is converted once

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in done:
            return
        done[id(module)] = False
        if id(module) in excluded:
            reasons[name] = f"excluded by name {excluded[id(module)]!r}"
            return
        if isinstance(module, excluded_types):
            reasons[name] = f"excluded by type {type(module).__name__}"
            return
        if isinstance(module, (_NoiseAfter, AdaptiveNoise)):
            return  # already stochastic
        if _matches(module, layers, excluded, excluded_types):
            if _is_uninitialized_lazy(module):
                raise ValueError(
                    f"to_stochastic: {name or 'model'!r} is an uninitialised lazy layer "
                    f"({type(module).__name__}); run one forward pass through the model first "
                    "so its weights have a shape"
                )
            if placement:
                module.to(**placement)
            try:
                add_noise(module, alpha, **noise_options)
            except TypeError as exc:
                raise TypeError(f"to_stochastic: {name or 'model'!r}: {exc}") from exc
            done[id(module)] = True
            return
        if isinstance(module, tuple(_ALL_TWINS)):
            reasons[name] = (f"{type(module).__name__} is not an instance of layers "
                             f"({', '.join(t.__name__ for t in layers)})")
        for child_name, child in module._modules.items():
            if child is not None:
                visit(child, f"{name}.{child_name}" if name else child_name)

    visit(student, "")
    route_off_fused_paths(student)
    setattr(student, REASONS_ATTR, reasons)  # for summary(): why each module was left
    report = summary(student)
    if not any(done.values()):
        warnings.warn(
            f"to_stochastic converted nothing (layers: {', '.join(t.__name__ for t in layers)}): "
            "the student is deterministic. "
            + report.left_text(), stacklevel=2,
        )
    return student


def _check_layers(layers) -> tuple:
    if isinstance(layers, type):
        layers = (layers,)
    elif not isinstance(layers, Iterable) or isinstance(layers, str):
        raise TypeError(f"layers must be a layer type or an iterable of them, got "
                        f"{type(layers).__name__}")
    layers = tuple(layers)
    for layer in layers:
        if not isinstance(layer, type) or not issubclass(layer, tuple(_ALL_TWINS)):
            names = ", ".join(f"nn.{t.__name__}" for t in _ALL_TWINS)
            name = getattr(layer, "__name__", repr(layer))
            raise ValueError(f"layers may contain only {names} or subclasses of them; got {name}")
    return layers


def _check_exclude(exclude, model: nn.Module) -> tuple:
    if isinstance(exclude, (str, type)):
        exclude = (exclude,)
    elif not isinstance(exclude, Iterable):
        raise TypeError(f"exclude must be a module name (str), a module type, or an iterable of "
                        f"them, got {type(exclude).__name__}")
    exclude = tuple(exclude)
    names = dict(model.named_modules(remove_duplicate=False))
    for e in exclude:
        if not isinstance(e, (str, type)):
            raise TypeError(f"exclude must hold module names or types, got {e!r}")
        if isinstance(e, str) and e not in names:
            raise ValueError(f"exclude: the model has no module named {e!r}")
    return exclude


def _matches(module: nn.Module, layers: tuple, excluded, excluded_types) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        # out_proj is run through its weights: asking for it means noise on the output.
        out_proj = module.out_proj
        return isinstance(module, layers) or (
            isinstance(out_proj, layers) and id(out_proj) not in excluded
            and not isinstance(out_proj, excluded_types))
    return isinstance(module, layers)


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
    AF._check_alpha(alpha, 1)  # the checks every alpha goes through: finite and >= 0
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
    A layer that saw no usable batch (one value per channel in every batch) keeps its state,
    and a warning names it.
    """
    layers = noise_layers(model)
    if not layers:
        raise ValueError("calibrate: the model has no AdaptiveNoise layers")
    route_off_fused_paths(model)  # PyTorch's fused eval kernels would skip the noise layers
    names = {id(m): name for name, m in model.named_modules()}
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
        unused = []
        for layer, (running_var, num_batches_tracked, _) in kept.items():
            if layer.num_batches_tracked.item() == 0:
                unused.append(names.get(id(layer), type(layer).__name__))
                continue
            running_var.copy_(layer.running_var)
            num_batches_tracked.copy_(layer.num_batches_tracked)
        if unused:
            warnings.warn(
                f"calibrate: {', '.join(repr(n) for n in unused)} saw no usable batch (one value "
                "per channel in every batch, so no variance, or never reached): their running "
                "statistics are left as they were", stacklevel=3,
            )
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
