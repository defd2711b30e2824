"""What a conversion did: :func:`summary` lists the modules that carry noise and the
conv/linear-like modules that do not, with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .modules import ALL_TWINS, AdaptiveNoise, _is_uninitialized_lazy, _NoiseAfter

# The attribute where to_stochastic leaves, on the student, why it left each module alone.
REASONS_ATTR = "_anoise_left_reasons"

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
          nn.EmbeddingBag)


def _is_conv_linear_like(module: nn.Module) -> bool:
    """A module that multiplies by a weight matrix or kernel: a conv, a linear, an attention,
    a recurrent layer, or any module with a 2-D (or larger) ``weight`` parameter."""
    if isinstance(module, (*ALL_TWINS, nn.Bilinear, nn.RNNBase)):
        return True
    if isinstance(module, _NORMS):
        return False
    weight = module._parameters.get("weight")
    return weight is not None and weight.dim() >= 2


def _has_noise(module: nn.Module) -> bool:
    return any(isinstance(m, AdaptiveNoise) for m in module.modules())


def route_off_fused_paths(model: nn.Module) -> nn.Module:
    """Keep PyTorch's fused transformer kernels from skipping noise layers (in place).

    In eval under ``no_grad`` / ``inference_mode``, ``nn.TransformerEncoderLayer`` runs one
    fused kernel on its weights (``torch._transformer_encoder_layer_fwd``) instead of its
    submodules' ``forward``: a layer holding noise then ran without it.  Its
    ``activation_relu_or_gelu`` flag is read only to choose that kernel (the activation itself
    is ``.activation``): clearing it routes the layer through its submodules.  An
    ``nn.TransformerEncoder`` over such layers also stops packing inputs as nested tensors.
    """
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _has_noise(module):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder) and _has_noise(module):
            module.use_nested_tensor = False
    return model


@dataclass
class ConversionSummary:
    """``converted``: qualified name -> what carries its noise; ``left``: qualified name of a
    conv/linear-like module without noise -> why.  ``str()`` gives a table."""

    converted: dict[str, str] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)

    def left_text(self) -> str:
        if not self.left:
            return "No conv/linear-like module was left without noise."
        items = "; ".join(f"{name or '(model)'}: {why}" for name, why in self.left.items())
        return f"Conv/linear-like modules without noise: {items}."

    def __str__(self) -> str:
        rows = [("converted", name, how) for name, how in self.converted.items()]
        rows += [("left", name, why) for name, why in self.left.items()]
        if not rows:
            return "no conv/linear-like modules"
        width = max(len(name or "(model)") for _, name, _ in rows)
        return "\n".join(f"{status:<9}  {name or '(model)':<{width}}  {text}"
                         for status, name, text in rows)


def summary(model: nn.Module) -> ConversionSummary:
    """What in ``model`` carries noise, and which conv/linear-like modules do not and why.

    A module with noise is a twin (noise on its output), an ``AdaptiveNoise`` of its own, or
    a module whose output is a twin's (``out_proj`` of a converted ``nn.MultiheadAttention``).
    The reasons for the others come from :func:`anoise.to_stochastic` when ``model`` is its
    result (excluded, not an instance of ``layers``), else from the module's type.
    """
    reasons = getattr(model, REASONS_ATTR, {})
    result = ConversionSummary()
    inside = {}  # id of a module under a twin -> the twin's name
    for name, module in model.named_modules():
        if id(module) in inside:
            owner = inside[id(module)]
            if isinstance(module, AdaptiveNoise):
                continue  # a twin's own noise
            if isinstance(model.get_submodule(owner), nn.MultiheadAttention) \
                    and module is model.get_submodule(owner).out_proj:
                result.converted[name] = (f"noise on the output of {owner!r}, which runs this "
                                          "projection through its weights")
            elif _is_conv_linear_like(module):
                result.left[name] = f"inside {owner!r}, which has noise on its output only"
            continue
        if isinstance(module, _NoiseAfter):
            result.converted[name] = f"{type(module).__name__}: noise on its output"
            if isinstance(module, nn.MultiheadAttention):
                result.converted[name] += " (the q/k/v projections in in_proj_weight get none)"
            for sub in module.modules():
                if sub is not module:
                    inside[id(sub)] = name
            continue
        if isinstance(module, AdaptiveNoise):
            result.converted[name] = "AdaptiveNoise"
            continue
        if isinstance(module, nn.TransformerEncoderLayer) and _has_noise(module) \
                and module.activation_relu_or_gelu:
            result.left[name] = ("holds noise layers that PyTorch's fused fast path skips in eval "
                                 "under no_grad; anoise.to_stochastic and anoise.calibrate "
                                 "route it off")
        if not _is_conv_linear_like(module):
            continue
        if name in reasons:
            result.left[name] = reasons[name]
        elif _is_uninitialized_lazy(module):
            result.left[name] = f"uninitialised lazy layer ({type(module).__name__})"
        elif isinstance(module, tuple(ALL_TWINS)):
            result.left[name] = f"{type(module).__name__}: not converted"
        else:
            result.left[name] = (f"no twin for {type(module).__name__} (not a subclass of a conv, "
                                  "linear or attention layer); add anoise.AdaptiveNoise after it")
    return result
