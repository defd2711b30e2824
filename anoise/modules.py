"""Drop-in modules: :class:`AdaptiveNoise` and conv / linear layers followed by it."""

from __future__ import annotations

import copy
import difflib
import inspect
import numbers

import torch
from torch import Tensor, nn

from . import functional as AF
from .backends import BACKEND_NAMES

_EVAL_STATS = ("running", "batch")


def _check_eval_stats(value) -> str:
    if value not in _EVAL_STATS:
        raise ValueError(f"eval_stats must be one of {_EVAL_STATS}, got {value!r}")
    return value


def _check_backend(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"backend must be a str, got {type(value).__name__}")
    if value != "auto" and value not in BACKEND_NAMES:
        raise ValueError(f"backend must be 'auto' or one of {BACKEND_NAMES}, got {value!r}")
    return value


def _check_channels_dim(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"channels_dim must be an int, got {type(value).__name__}")
    return int(value)


def _check_num_channels(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"num_channels must be a positive int, got {value!r}")
    return int(value)


def _whole(t: Tensor) -> Tensor:
    """The whole value of ``t`` (a DTensor shard, as FSDP2 holds parameters, is gathered)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# The options of AdaptiveNoise, checked whenever they are set (at construction or later), so
# that a bad value fails at the line that sets it rather than in a later forward.
_OPTION_CHECKS = {
    "eval_stats": _check_eval_stats,
    "noise_in_eval": lambda v: AF._check_flag(v, "noise_in_eval"),
    "momentum": AF._check_momentum,
    "eps": AF._check_eps,
    "stats_grad": lambda v: AF._check_flag(v, "stats_grad"),
    "backend": _check_backend,
    "sync_stats": lambda v: AF._check_flag(v, "sync_stats"),
    "channels_dim": _check_channels_dim,
}

# Options fixed at construction: they decide the shape and kind of the noise state.
_FIXED_OPTIONS = ("num_channels", "learnable_alpha", "per_channel_alpha")


class AdaptiveNoise(nn.Module):
    """``y = x + alpha * sigma_c * eps``: Gaussian noise scaled by each channel's std.

    In training, ``sigma_c`` comes from the batch and ``running_var`` is updated like
    ``nn.BatchNorm``'s.  In eval, the noise stays on (``noise_in_eval=True``) with ``sigma_c``
    from ``running_var`` (``eval_stats="running"``) or from the batch (``"batch"``).

    ``alpha`` is state: an ``nn.Parameter`` when learnable, else a buffer, so it is saved in
    the ``state_dict`` (one without it, e.g. a teacher's, leaves the current value).  It is
    checked when it is set (here, by assignment, by :func:`anoise.set_alpha` and, unless
    learnable, by ``load_state_dict``), never in forward, which would read it back from the
    device.  Assigning a number or tensor to ``alpha`` updates it in place.  A learnable
    ``alpha`` is left to the optimiser (its sign does not change the noise's distribution).

    Args:
        num_channels: C of an ``(N, C, *S)`` input (or of the dim ``channels_dim``).
        alpha: degree of stochasticity, >= 0.
        learnable_alpha: make ``alpha`` an ``nn.Parameter`` (as in PNI).
        per_channel_alpha: one ``alpha`` per channel instead of one scalar.
        channels_dim: the dim that holds the channels: 1 for ``(N, C, *S)``, -1 for
            channels-last activations such as ``(N, L, C)`` tokens (no transpose copy).
        eval_stats, noise_in_eval, momentum, eps, stats_grad, backend, sync_stats,
            process_group: see above and :func:`anoise.functional.adaptive_noise`; checked
            whenever they are set.
    """

    def __init__(
        self,
        num_channels: int,
        alpha: float = 0.1,
        *,
        learnable_alpha: bool = False,
        per_channel_alpha: bool = False,
        eval_stats: str = "running",
        noise_in_eval: bool = True,
        momentum: float | None = 0.1,
        eps: float = 1e-5,
        stats_grad: bool = True,
        backend: str = "auto",
        sync_stats: bool = False,
        process_group=None,
        channels_dim: int = 1,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.num_channels = _check_num_channels(num_channels)
        self.channels_dim = channels_dim
        self.learnable_alpha = AF._check_flag(learnable_alpha, "learnable_alpha")
        self.per_channel_alpha = AF._check_flag(per_channel_alpha, "per_channel_alpha")
        self.eval_stats = eval_stats
        self.noise_in_eval = noise_in_eval
        self.momentum = momentum
        self.eps = eps
        self.stats_grad = stats_grad
        self.backend = backend
        self.sync_stats = sync_stats
        self.process_group = process_group
        shape = (self.num_channels,) if per_channel_alpha else (1,) if learnable_alpha else ()
        value = torch.empty(shape, device=device, dtype=dtype)
        self._write_alpha(value, alpha)
        # What reset_parameters() restores (a copy: the caller may change its tensor).
        self._initial_alpha = (alpha.detach().to("cpu", copy=True)
                               if isinstance(alpha, Tensor) and not alpha.is_meta else alpha)
        if learnable_alpha:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)
        self.register_buffer("running_var", torch.ones(self.num_channels, device=device))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def __setattr__(self, name, value):
        if name in _FIXED_OPTIONS and name in self.__dict__:
            raise AttributeError(
                f"{name} of {type(self).__name__} is fixed at construction (it decides the shape "
                "and kind of alpha); build a new layer instead"
            )
        check = _OPTION_CHECKS.get(name)
        if check is not None:
            value = check(value)
        elif name == "alpha" and "alpha" in {**self._parameters, **self._buffers}:
            if not isinstance(value, nn.Parameter):
                self._write_alpha(self.alpha, value)
                return
            # FSDP2 assigns the parameter at every (un)shard: read its values only where that
            # costs no device sync or collective (a plain CPU tensor).
            self._checked_alpha(value, read=value.device.type == "cpu" and
                                not hasattr(value, "full_tensor"))
        super().__setattr__(name, value)

    def _checked_alpha(self, value, *, signed: bool = False, read: bool = True):
        """``value`` if it is a valid alpha for this layer; else raises.  ``signed``: allow
        negative values (a learnable alpha the optimiser moved below 0).  ``read``: check the
        values too (read on the host), not only type and shape."""
        if not isinstance(value, Tensor):
            AF._check_alpha(value, self.num_channels)
            return value
        # Type and shape, on a stand-in with no data (value may be a DTensor shard under FSDP2);
        # (1,) is the shape of a learnable scalar alpha.
        scalar = not self.per_channel_alpha and tuple(value.shape) == (1,)
        shape = () if scalar else tuple(value.shape)
        AF._check_alpha(torch.empty(shape, dtype=value.dtype, device="meta"), self.num_channels)
        if shape and not self.per_channel_alpha:
            raise ValueError(
                f"alpha must be a scalar (per_channel_alpha=False), got shape {tuple(value.shape)}"
            )
        if read and not value.is_meta:
            whole = _whole(value)
            AF._check_alpha_values(whole.abs() if signed else whole, host=True)
        return value

    @torch.no_grad()
    def _write_alpha(self, dst: Tensor, value) -> None:
        value = self._checked_alpha(value)
        if isinstance(value, Tensor):
            dst.copy_(value.reshape(dst.shape) if value.numel() == dst.numel() else value)
        else:
            dst.fill_(float(value))

    def forward(self, x: Tensor) -> Tensor:
        d = self.channels_dim
        AF._check_input(AF._channels_view(x, d))
        if x.shape[d] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_channels} channels in dim {d}, got "
                f"input of shape {tuple(x.shape)}"
            )
        if not self.training and not self.noise_in_eval:
            return x
        use_running = self.training or self.eval_stats == "running"
        return AF._adaptive_noise(
            x,
            self.alpha,
            running_var=self.running_var if use_running else None,
            num_batches_tracked=self.num_batches_tracked if use_running else None,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            stats_grad=self.stats_grad,
            seed=None,
            backend=self.backend,
            sync_stats=self.sync_stats,
            process_group=self.process_group,
            channels_dim=self.channels_dim,
        )

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "anoise: AdaptiveNoise layers cannot be compiled by torch.jit.script (TorchScript "
            "cannot call their Python custom ops); use torch.compile or torch.export instead"
        )

    def reset_running_stats(self) -> None:
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """The constructed ``alpha`` and the default running statistics."""
        self._write_alpha(self.alpha, getattr(self, "_initial_alpha", 0.1))
        self.reset_running_stats()

    def _apply(self, fn, recurse=True):
        # to_empty() turns meta tensors into uninitialised memory: give the noise state its
        # defaults, as SPEC 4 asks of a layer whose state a teacher's state_dict lacks.
        was_meta = self.running_var.is_meta
        result = super()._apply(fn, recurse)
        if was_meta and not self.running_var.is_meta:
            self.reset_parameters()
        return result

    def extra_repr(self) -> str:
        if self.learnable_alpha or self.per_channel_alpha:
            alpha = f"tensor{tuple(self.alpha.shape)}"
        elif self.alpha.is_meta:  # no value to read: show the constructed one
            initial = getattr(self, "_initial_alpha", None)
            alpha = f"{initial:g}" if isinstance(initial, numbers.Real) else "meta"
        else:
            alpha = f"{self.alpha.item():g}"
        return (
            f"{self.num_channels}, alpha={alpha}, learnable_alpha={self.learnable_alpha}, "
            f"eval_stats={self.eval_stats!r}, noise_in_eval={self.noise_in_eval}, "
            f"momentum={self.momentum}, eps={self.eps}, stats_grad={self.stats_grad}, "
            f"backend={self.backend!r}" + (", sync_stats=True" if self.sync_stats else "")
            + (f", channels_dim={self.channels_dim}" if self.channels_dim != 1 else "")
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A teacher's state_dict (or one saved before alpha was state) has no noise state:
        # missing entries keep their current values.
        state_dict = dict(state_dict)
        key = prefix + "alpha"
        if key in state_dict:
            value = state_dict[key]
            try:
                self._checked_alpha(value, signed=self.learnable_alpha)
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"{key}: {exc}")
                del state_dict[key]
            else:
                if value.shape != self.alpha.shape and value.numel() == self.alpha.numel() == 1:
                    state_dict[key] = value.reshape(self.alpha.shape)  # () <-> (1,)
        key = prefix + "running_var"
        if key in state_dict:
            value = state_dict[key]
            problem = _running_var_problem(value)
            if problem:
                error_msgs.append(f"{key}: {problem}")
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        own = {prefix + name for name in ("alpha", "running_var", "num_batches_tracked")}
        missing_keys[:] = [k for k in missing_keys if k not in own]


def _running_var_problem(value) -> str | None:
    """Why ``value`` cannot be a running variance (None when it can)."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return f"running_var must be a floating tensor, got {type(value).__name__}"
    if value.is_meta:
        return None
    value = _whole(value).detach()
    if not torch.isfinite(value).all():
        return "running_var must be finite (no NaN or inf), as a variance is"
    if (value < 0).any():
        return f"running_var must be >= 0, as a variance is; got min {value.min().item():g}"
    return None


def layer_args(layer: nn.Module) -> dict:
    """The constructor arguments (device and dtype included) of a conv or linear layer like
    ``layer``: any ``nn.Conv*d``, ``nn.ConvTranspose*d`` or ``nn.Linear``."""
    common = dict(bias=layer.bias is not None, device=layer.weight.device,
                  dtype=layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        return dict(in_features=layer.in_features, out_features=layer.out_features, **common)
    args = dict(in_channels=layer.in_channels, out_channels=layer.out_channels,
                kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, groups=layer.groups, padding_mode=layer.padding_mode,
                **common)
    if layer.transposed:
        args["output_padding"] = layer.output_padding
    return args


def copy_parameters(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``weight`` and ``bias`` (values and ``requires_grad``) and the mode of ``src``."""
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
    dst.weight.requires_grad_(src.weight.requires_grad)
    if src.bias is not None:
        dst.bias.requires_grad_(src.bias.requires_grad)
    dst.train(src.training)


# The keyword options a twin passes on to its AdaptiveNoise (the rest go to the nn layer).
_NOISE_OPTIONS = tuple(
    name for name in inspect.signature(AdaptiveNoise).parameters
    if name not in ("num_channels", "alpha", "channels_dim", "device", "dtype")
)


def check_noise_options(options, where: str, allowed=(), what="a noise option") -> None:
    """Raise a TypeError naming the first key of ``options`` that is no noise option (nor one
    of ``allowed``), with the closest valid name."""
    valid = (*_NOISE_OPTIONS, *allowed)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(f"{where} got an unexpected keyword argument {key!r}: it is not "
                            f"{what}; {hint}(noise options: {', '.join(_NOISE_OPTIONS)})")


def _is_uninitialized_lazy(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.lazy.LazyModuleMixin) and \
        module.has_uninitialized_params()


class _NoiseAfter:
    """The stochastic twin of an ``nn`` conv / linear layer: that layer, then ``self.noise``.

    A twin is ``class Twin(_NoiseAfter, <nn layer>)``: the nn layer is the class after this one
    in the MRO, so the twin's parameters, ``state_dict`` keys and ``isinstance`` are the
    layer's, its own ``forward`` runs, and the noise state lives under ``.noise``.  The
    constructor takes the layer's arguments plus ``alpha`` and the keyword options of
    :class:`AdaptiveNoise`.  A subclass of a supported layer (a weight-standardised conv, a
    "same"-padding conv, a Linear classifier) gets its twin class from :func:`twin_class`.
    """

    noise: AdaptiveNoise
    _channels_attr = "out_channels"  # the layer attribute that counts the output channels
    _channels_dim = 1  # where the output's channels are
    _unbatched_dim = -1  # the dims of an unbatched (C, *S) output: channels in dim 0
    _made_for = None  # the layer type of a twin class made by twin_class()

    def __init__(self, *args, alpha: float = 0.1, **kwargs):
        noise_options = {k: kwargs.pop(k) for k in _NOISE_OPTIONS if k in kwargs}
        layer_init = inspect.signature(self._layer_type().__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in layer_init.values()):
            check_noise_options([k for k in kwargs if k not in layer_init], type(self).__name__,
                                allowed=tuple(layer_init)[1:],
                                what=f"an argument of {self._layer_type().__name__} nor a "
                                     "noise option")
        super().__init__(*args, **kwargs)
        self._add_noise(alpha, noise_options)

    def _add_noise(self, alpha, noise_options) -> None:
        weight = self._reference_weight()
        self.noise = AdaptiveNoise(
            getattr(self, self._channels_attr), alpha, channels_dim=self._channels_dim,
            device=weight.device, dtype=weight.dtype, **noise_options,
        )

    def _reference_weight(self) -> Tensor:
        """A parameter whose device and dtype the noise state takes."""
        return self.weight

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # help() and inspect show the layer's arguments and the noise options, not *args.
        try:
            layer = list(inspect.signature(cls._layer_type().__init__).parameters.values())
        except (TypeError, ValueError):  # a layer type without an introspectable __init__
            return
        layer = [p for p in layer[1:] if p.kind is not p.VAR_KEYWORD]
        noise = inspect.signature(AdaptiveNoise).parameters
        extra = [inspect.Parameter("alpha", inspect.Parameter.KEYWORD_ONLY, default=0.1)]
        extra += [noise[k].replace(kind=inspect.Parameter.KEYWORD_ONLY) for k in _NOISE_OPTIONS]
        try:
            cls.__signature__ = inspect.Signature([*layer, *extra])
        except ValueError:  # the layer has an argument of the same name, or *args last
            pass

    @classmethod
    def _layer_type(cls) -> type:
        if cls._made_for is not None:
            return cls._made_for
        return cls.__mro__[cls.__mro__.index(_NoiseAfter) + 1]

    @classmethod
    def from_module(cls, module, alpha: float = 0.1, *, device=None, dtype=None,
                    **noise_options):
        """The stochastic twin of ``module`` with its weights copied (teacher-initialisation).

        ``module`` may be an instance of a subclass of this twin's layer: the twin is then of
        ``twin_class(type(module))``, a copy of ``module`` (its own ``forward``, attributes
        and parameters) followed by the noise.  ``device`` / ``dtype``: where the twin is
        built (default: ``module``'s own).
        """
        base = cls._layer_type()
        if not isinstance(module, base):
            raise TypeError(f"{cls.__name__}.from_module expects an instance of "
                            f"{base.__name__}, got {type(module).__name__}")
        if isinstance(module, _NoiseAfter):
            raise TypeError(f"{cls.__name__}.from_module: module is already a stochastic twin "
                            f"({type(module).__name__})")
        if _is_uninitialized_lazy(module):
            raise ValueError(
                f"{cls.__name__}.from_module: module is an uninitialised lazy layer "
                f"({type(module).__name__}); run one forward pass through it first so its "
                "weights have a shape"
            )
        check_noise_options(noise_options, f"{cls.__name__}.from_module")
        if type(module) is base and TWINS.get(base) is cls:  # conv / linear: a fresh twin
            args = layer_args(module)
            args.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
            student = cls(**args, alpha=alpha, **noise_options)
            copy_parameters(student, module)
            return student
        student = add_noise(copy.deepcopy(module), alpha, **noise_options)
        return student.to(device=device, dtype=dtype) if device or dtype else student

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        # *args: ConvTranspose*d's optional output_size.
        y = super().forward(x, *args, **kwargs)
        if y.dim() == self._unbatched_dim:  # (C, *S), as nn.ConvNd takes it: channels in dim 0
            return self.noise(y.unsqueeze(0)).squeeze(0)
        return self.noise(y)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "noise" in self._modules:  # the layer's own __init__ calls this before noise exists
            self.noise.reset_parameters()

    def __reduce_ex__(self, protocol):
        # A twin class made by twin_class() lives in no module: pickle (torch.save of a whole
        # model) and deepcopy rebuild it from the layer type it was made for.
        made_for = type(self).__dict__.get("_made_for")
        if made_for is None:
            return super().__reduce_ex__(protocol)
        return _new_twin, (made_for,), self.__getstate__()


class AdaptiveNoiseConv1d(_NoiseAfter, nn.Conv1d):
    """``nn.Conv1d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 2


class AdaptiveNoiseConv2d(_NoiseAfter, nn.Conv2d):
    """``nn.Conv2d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 3


class AdaptiveNoiseConv3d(_NoiseAfter, nn.Conv3d):
    """``nn.Conv3d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 4


class AdaptiveNoiseConvTranspose1d(_NoiseAfter, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 2


class AdaptiveNoiseConvTranspose2d(_NoiseAfter, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 3


class AdaptiveNoiseConvTranspose3d(_NoiseAfter, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` followed by :class:`AdaptiveNoise` over its output channels."""

    _unbatched_dim = 4


class AdaptiveNoiseLinear(_NoiseAfter, nn.Linear):
    """``nn.Linear`` followed by :class:`AdaptiveNoise` over its output features.

    Inputs ``(*, in_features)`` as for ``nn.Linear``, e.g. ``(N, L, C)`` tokens: the features
    are the channels (the last dim) and the statistics are taken over all other dims.
    """

    _channels_attr = "out_features"
    _channels_dim = -1


class AdaptiveNoiseMultiheadAttention(_NoiseAfter, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with :class:`AdaptiveNoise` on its attention output.

    ``nn.MultiheadAttention`` runs its output projection ``out_proj`` through its weights, never
    its ``forward``: the noise goes on the module's output, which is ``out_proj``'s output (the
    features are the channels, the last dim).  The attention weights are returned unchanged.
    The q/k/v projections live in the parameter ``in_proj_weight`` (no module) and get no noise
    of their own.
    """

    _channels_attr = "embed_dim"
    _channels_dim = -1

    def _reference_weight(self) -> Tensor:
        return self.out_proj.weight

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args, **kwargs):
        output, weights = nn.MultiheadAttention.forward(self, query, key, value, *args, **kwargs)
        return self.noise(output), weights


# Each nn conv / linear layer type and its twin.
TWINS = {t._layer_type(): t for t in (
    AdaptiveNoiseConv1d, AdaptiveNoiseConv2d, AdaptiveNoiseConv3d, AdaptiveNoiseConvTranspose1d,
    AdaptiveNoiseConvTranspose2d, AdaptiveNoiseConvTranspose3d, AdaptiveNoiseLinear,
)}
# ... and the modules that get noise on their output for a projection they run by its weights.
ALL_TWINS = {**TWINS, nn.MultiheadAttention: AdaptiveNoiseMultiheadAttention}

_MADE_TWINS: dict[type, type] = {}  # layer subclass -> its twin class, made once


def twin_class(layer_type: type) -> type:
    """The twin class of ``layer_type``: one of the ``AdaptiveNoise*`` classes for an ``nn``
    layer, else (a subclass of a supported layer) a class made once, cached, that derives from
    both the ``nn`` layer's twin and ``layer_type``: ``layer_type``'s ``forward`` runs, then the
    noise, and ``isinstance`` holds for both."""
    if layer_type in ALL_TWINS:
        return ALL_TWINS[layer_type]
    if layer_type in _MADE_TWINS:
        return _MADE_TWINS[layer_type]
    if issubclass(layer_type, _NoiseAfter):
        raise TypeError(f"{layer_type.__name__} is already a stochastic twin")
    base = next((t for t in ALL_TWINS if issubclass(layer_type, t)), None)
    if base is None:
        names = ", ".join(f"nn.{t.__name__}" for t in ALL_TWINS)
        raise TypeError(f"{layer_type.__name__} is no subclass of {names}: it has no twin")
    try:
        twin = type(f"AdaptiveNoise{layer_type.__name__}", (ALL_TWINS[base], layer_type), {
            "__module__": layer_type.__module__,
            "__doc__": f"``{layer_type.__qualname__}`` (its own forward), then AdaptiveNoise.",
            "_made_for": layer_type,
        })
    except TypeError as exc:  # e.g. no consistent method resolution order
        raise TypeError(f"cannot make a twin class for {layer_type.__qualname__}: {exc}") from exc
    _MADE_TWINS[layer_type] = twin
    return twin


def _new_twin(layer_type: type):
    """An empty instance of ``twin_class(layer_type)`` (for unpickling and deepcopy)."""
    cls = twin_class(layer_type)
    return cls.__new__(cls)


def add_noise(module: nn.Module, alpha: float = 0.1, **noise_options) -> nn.Module:
    """Turn ``module`` (an instance of a supported layer or a subclass of one) into its twin
    in place: its class becomes ``twin_class(type(module))`` and it gains ``.noise``; its
    parameters, buffers, hooks and attributes stay as they are.  Returns ``module``."""
    cls = twin_class(type(module))
    if hasattr(module, "noise"):
        raise TypeError(f"{type(module).__name__} already has an attribute 'noise', where its "
                        "twin keeps its AdaptiveNoise; it cannot be converted")
    module.__class__ = cls
    try:
        module._add_noise(alpha, noise_options)
    except BaseException:
        module.__class__ = cls._layer_type()
        raise
    return module
