"""Drop-in modules: :class:`AdaptiveNoise` and conv / linear layers followed by it."""

from __future__ import annotations

import inspect

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
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"channels_dim must be an int, got {type(value).__name__}")
    return value


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
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
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
        shape = (num_channels,) if per_channel_alpha else ()
        value = torch.empty(shape, device=device, dtype=dtype)
        self._write_alpha(value, alpha)
        if learnable_alpha:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)
        self.register_buffer("running_var", torch.ones(num_channels, device=device))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def __setattr__(self, name, value):
        check = _OPTION_CHECKS.get(name)
        if check is not None:
            value = check(value)
        elif name == "alpha" and "alpha" in {**self._parameters, **self._buffers}:
            if not isinstance(value, nn.Parameter):
                self._write_alpha(self.alpha, value)
                return
            self._checked_alpha(value, self.alpha)
        super().__setattr__(name, value)

    def _checked_alpha(self, value, like: Tensor):
        """``value`` if it is a valid alpha for a tensor like ``like``; else raises."""
        AF._check_alpha(value, self.num_channels)
        if isinstance(value, Tensor):
            if value.dim() > like.dim():
                raise ValueError(
                    f"alpha must be a scalar (per_channel_alpha=False), got shape "
                    f"{tuple(value.shape)}"
                )
            AF._check_alpha_values(value, host=True)
        return value

    @torch.no_grad()
    def _write_alpha(self, dst: Tensor, value) -> None:
        value = self._checked_alpha(value, dst)
        if isinstance(value, Tensor):
            dst.copy_(value)
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

    def extra_repr(self) -> str:
        if self.learnable_alpha or self.per_channel_alpha:
            alpha = f"tensor{tuple(self.alpha.shape)}"
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
        key = prefix + "alpha"
        if key in state_dict and not self.learnable_alpha:
            try:
                self._checked_alpha(state_dict[key], self.alpha)
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"{key}: {exc}")
                state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        own = {prefix + name for name in ("alpha", "running_var", "num_batches_tracked")}
        missing_keys[:] = [k for k in missing_keys if k not in own]


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


class _NoiseAfter:
    """The stochastic twin of an ``nn`` conv / linear layer: that layer, then ``self.noise``.

    A twin is ``class Twin(_NoiseAfter, <nn layer>)``: the nn layer is the class after this one
    in the MRO, so the twin's parameters, ``state_dict`` keys and ``isinstance`` are the
    layer's, and the noise state lives under ``.noise``.  The constructor takes the layer's
    arguments plus ``alpha`` and the keyword options of :class:`AdaptiveNoise`.
    """

    noise: AdaptiveNoise
    _channels_attr = "out_channels"  # the layer attribute that counts the output channels
    _channels_dim = 1  # where the output's channels are

    def __init__(self, *args, alpha: float = 0.1, **kwargs):
        noise_options = {k: kwargs.pop(k) for k in _NOISE_OPTIONS if k in kwargs}
        super().__init__(*args, **kwargs)
        self.noise = AdaptiveNoise(
            getattr(self, self._channels_attr), alpha, channels_dim=self._channels_dim,
            device=self.weight.device, dtype=self.weight.dtype, **noise_options,
        )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # help() and inspect show the layer's arguments and the noise options, not *args.
        layer = inspect.signature(cls._layer_type().__init__).parameters.values()
        noise = inspect.signature(AdaptiveNoise).parameters
        extra = [inspect.Parameter("alpha", inspect.Parameter.KEYWORD_ONLY, default=0.1)]
        extra += [noise[k].replace(kind=inspect.Parameter.KEYWORD_ONLY) for k in _NOISE_OPTIONS]
        cls.__signature__ = inspect.Signature([*list(layer)[1:], *extra])

    @classmethod
    def _layer_type(cls) -> type:
        return cls.__mro__[cls.__mro__.index(_NoiseAfter) + 1]

    @classmethod
    def from_module(cls, module, alpha: float = 0.1, *, device=None, dtype=None,
                    **noise_options):
        """The stochastic twin of ``module`` with its weights copied (teacher-initialisation).

        ``device`` / ``dtype``: where the twin is built (default: ``module``'s own).
        """
        base = cls._layer_type()
        if not isinstance(module, base):
            raise TypeError(f"{cls.__name__}.from_module expects an instance of "
                            f"{base.__name__}, got {type(module).__name__}")
        args = layer_args(module)
        args.update({k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        student = cls(**args, alpha=alpha, **noise_options)
        copy_parameters(student, module)
        return student

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        # *args: ConvTranspose*d's optional output_size.
        return self.noise(super().forward(x, *args, **kwargs))


class AdaptiveNoiseConv1d(_NoiseAfter, nn.Conv1d):
    """``nn.Conv1d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseConv2d(_NoiseAfter, nn.Conv2d):
    """``nn.Conv2d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseConv3d(_NoiseAfter, nn.Conv3d):
    """``nn.Conv3d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseConvTranspose1d(_NoiseAfter, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseConvTranspose2d(_NoiseAfter, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseConvTranspose3d(_NoiseAfter, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` followed by :class:`AdaptiveNoise` over its output channels."""


class AdaptiveNoiseLinear(_NoiseAfter, nn.Linear):
    """``nn.Linear`` followed by :class:`AdaptiveNoise` over its output features.

    Inputs ``(*, in_features)`` as for ``nn.Linear``, e.g. ``(N, L, C)`` tokens: the features
    are the channels (the last dim) and the statistics are taken over all other dims.
    """

    _channels_attr = "out_features"
    _channels_dim = -1


# Each nn layer type and its twin (exact types: nn.ConvTranspose2d is no nn.Conv2d).
TWINS = {t._layer_type(): t for t in (
    AdaptiveNoiseConv1d, AdaptiveNoiseConv2d, AdaptiveNoiseConv3d, AdaptiveNoiseConvTranspose1d,
    AdaptiveNoiseConvTranspose2d, AdaptiveNoiseConvTranspose3d, AdaptiveNoiseLinear,
)}
