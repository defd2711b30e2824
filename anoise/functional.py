"""Functional API: :func:`adaptive_noise`."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

from . import backends as _backends
from . import distributed as _dist
from . import ops as _ops
from . import reference as _ref

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SEED_MAX = 2**64 - 1
# The statistics dtypes' ranges: eps must be a normal number there, alpha finite.
_NORMAL_MIN = {t: torch.finfo(t).tiny for t in (torch.float32, torch.float64)}
_FINITE_MAX = {t: torch.finfo(t).max for t in (torch.float32, torch.float64)}


def adaptive_noise(
    x: Tensor,
    alpha: float | Tensor,
    *,
    running_var: Tensor | None = None,
    num_batches_tracked: Tensor | None = None,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    stats_grad: bool = True,
    seed: int | None = None,
    backend: str = "auto",
    sync_stats: bool = False,
    process_group=None,
    channels_dim: int = 1,
) -> Tensor:
    """Inject Gaussian noise scaled by each channel's standard deviation.

    ``y = x + alpha_c * sigma_c * eps`` with ``eps ~ N(0, 1)`` drawn per element from the
    Philox stream of ``seed`` and ``sigma_c = sqrt(var_c + eps)`` (SPEC section 2).

    Args:
        x: ``(N, C, *S)`` floating tensor; the channel dim is 1.
        alpha: degree of stochasticity: a float >= 0, or a tensor of shape ``()`` or ``(C,)``.
        running_var: ``(C,)`` float32 buffer.  When ``training``, it is updated in place the way
            ``nn.BatchNorm`` updates its ``running_var``; when not ``training``, ``sigma`` is
            taken from it (so one sample's noise does not depend on its batch).  Without it,
            ``sigma`` always comes from the current batch.
        num_batches_tracked: int64 scalar buffer, incremented when ``running_var`` is updated;
            required when ``momentum`` is None (cumulative average).
        training: whether to use (and update) batch statistics.
        momentum: running-variance momentum, or None for a cumulative average.
        eps: added to the variance before the square root.
        stats_grad: differentiate through ``sigma`` (True) or treat it as a constant (False).
        seed: the noise seed, an int in ``[0, 2**64)``.  Default: a fresh one from the PyTorch
            generator of ``x``'s device, so ``torch.manual_seed`` reproduces a run.
        backend: ``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.
        sync_stats: take the batch statistics over every rank of ``process_group`` (default:
            the world), like ``nn.SyncBatchNorm``; a no-op without an initialised process group
            of more than one rank.  Statistics and ``dx`` are then PyTorch ops; the noise
            comes from ``backend``.
        process_group: the ``torch.distributed`` group for ``sync_stats``.
        channels_dim: the dim of ``x`` that holds the channels (default 1).  With another dim
            ``d`` (e.g. -1 for ``(N, L, C)`` tokens or ``(*, features)`` linear outputs), ``x``
            is handled as its row-major view ``(prod(shape[:d]), C, prod(shape[d+1:]))``: the
            statistics are taken over every other dim, and the noise of each element is that of
            its row-major index in ``x``, whatever the layout; no transpose copy is made.

    Returns:
        A tensor like ``x``.  With a float ``alpha == 0`` this is ``x`` itself.

    A tensor ``alpha`` is checked for negative and NaN values on the host when it is on the
    CPU; elsewhere on the device (``torch._assert_async``), as reading it back would
    synchronise: a bad value there fails a device-side assertion.
    """
    x3 = _channels_view(x, channels_dim)
    _check_input(x3)
    _check_alpha(alpha, x3.shape[1], _ref.stat_dtype(x3.dtype))
    if isinstance(alpha, Tensor):
        _check_alpha_values(alpha, host=alpha.device.type == "cpu")
    return _adaptive_noise(
        x, alpha, running_var=running_var, num_batches_tracked=num_batches_tracked,
        training=training, momentum=momentum, eps=eps, stats_grad=stats_grad, seed=seed,
        backend=backend, sync_stats=sync_stats, process_group=process_group,
        channels_dim=channels_dim,
    )


def _adaptive_noise(x, alpha, *, running_var, num_batches_tracked, training, momentum, eps,
                    stats_grad, seed, backend, sync_stats, process_group,
                    channels_dim=1) -> Tensor:
    """:func:`adaptive_noise` once ``x`` and ``alpha`` are checked.

    The modules call this directly: they check their ``alpha`` when it is set, so their
    forward reads none of its values.
    """
    if (x3 := _channels_view(x, channels_dim)) is not x:
        y3 = _adaptive_noise(
            x3, alpha, running_var=running_var, num_batches_tracked=num_batches_tracked,
            training=training, momentum=momentum, eps=eps, stats_grad=stats_grad, seed=seed,
            backend=backend, sync_stats=sync_stats, process_group=process_group,
        )
        return x if y3 is x3 else y3.reshape(x.shape)
    C = x.shape[1]
    update_running = training and running_var is not None
    _check_options(x, running_var, num_batches_tracked, training, momentum, eps, stats_grad,
                   seed, sync_stats, update_running)
    alpha_is_zero = not isinstance(alpha, Tensor) and float(alpha) == 0.0
    use_batch_stats = training or running_var is None
    name = _backends.resolve_for(backend, x.device.type)
    if sync_stats and use_batch_stats and _dist.is_active(process_group):
        return _adaptive_noise_sync(
            x, alpha, alpha_is_zero, seed, eps, stats_grad, process_group,
            running_var if update_running else None, num_batches_tracked, momentum, name,
        )
    M = x.numel() // C if C else 0
    if x.numel() == 0:
        return x.clone()
    if use_batch_stats and not torch.compiler.is_compiling() and M == 1:
        # Eager only: a traced graph (compile, export) holds no warning, and a symbolic M
        # must not be compared here (that would specialise the program to one batch size).
        warnings.warn(
            "adaptive_noise: one value per channel in batch mode: the variance is 0, so "
            "sigma = sqrt(eps), and the batch is not counted in the running variance",
            stacklevel=3,
        )
    if alpha_is_zero:
        if update_running:
            _update_running(running_var, num_batches_tracked, _ref.batch_stats(x)[1], M, momentum)
        return x

    sdtype = _ref.stat_dtype(x.dtype)
    alpha_c = _per_channel_alpha(alpha, C, sdtype, x.device)
    seed_t = _seed_tensor(seed, x)
    if use_batch_stats:
        if name == "reference":
            y, _, var = _ref.adaptive_noise_batch(x, alpha_c, seed_t, eps, stats_grad)
        else:
            y, _, var = _ops.noise_batch(x, alpha_c, seed_t, float(eps), stats_grad, name)
        if update_running:
            _update_running(running_var, num_batches_tracked, var, M, momentum)
        return y
    scale = alpha_c * torch.sqrt(running_var.to(sdtype) + eps)
    if name == "reference":
        return _ref.adaptive_noise_scaled(x, scale, seed_t)
    return _ops.noise_scaled(x, scale, seed_t, name)


def _adaptive_noise_sync(x, alpha, alpha_is_zero, seed, eps, stats_grad, group, running_var,
                         num_batches_tracked, momentum, backend):
    """Batch statistics over every rank of ``group`` (see :mod:`anoise.distributed`)."""
    alpha_c = _per_channel_alpha(alpha, x.shape[1], _ref.stat_dtype(x.dtype), x.device)
    seed_t = _seed_tensor(seed, x)
    y, var, count = _dist.SyncAdaptiveNoise.apply(
        x, alpha_c, int(seed_t.item()), eps, stats_grad, group, backend
    )
    if running_var is not None:
        _update_running(running_var, num_batches_tracked, var, int(count), momentum)
    return x if alpha_is_zero else y


# -- helpers ----------------------------------------------------------------------------------


def _channels_view(x: Tensor, channels_dim: int) -> Tensor:
    """``x`` with its channels in dim ``d`` as ``(prod(shape[:d]), C, prod(shape[d+1:]))``
    (``x`` itself when ``d`` is 1).

    A reshape keeps the row-major order, so every element keeps its logical index (and so its
    noise); it is a view, not a copy, whenever the dims on each side of ``d`` can be merged (any
    contiguous tensor, or a slice of one along its last dim).
    """
    if type(channels_dim) is int and channels_dim == 1:
        return x  # x's own checks say what is wrong with it
    if isinstance(channels_dim, bool) or not isinstance(channels_dim, int):
        raise TypeError(f"channels_dim must be an int, got {type(channels_dim).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim (the channels), got a 0-dim tensor")
    if not -x.dim() <= channels_dim < x.dim():
        raise ValueError(
            f"channels_dim must be in [-{x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, "
            f"got {channels_dim}"
        )
    d = channels_dim % x.dim()
    if d == 1:
        return x
    return x.reshape(math.prod(x.shape[:d]), x.shape[d], math.prod(x.shape[d + 1:]))


def _seed_tensor(seed: int | None, x: Tensor) -> Tensor:
    """The seed as a ``(1,)`` int64 tensor on ``x``'s device (its 64 bits, two's complement).

    An explicit seed is written by a fill kernel, not copied from the host, so it can be
    captured in a CUDA graph (where host-to-device copies are not allowed).
    """
    if seed is None:
        if _ops.plain_eager_call(x):  # the op's own computation, without its dispatch (~20 us)
            return torch.empty((1,), dtype=torch.int64, device=x.device).random_()
        # From a detached x: the seed is no function of x, and drawing it from x itself would
        # give it an autograd node (an autograd.Function without setup_context or jvp, which
        # torch.func transforms and forward-mode AD refuse, and ~0.1 ms a call in backward).
        return _ops.draw_seed(x.detach())
    if torch.compiler.is_compiling():  # the seed may be a dynamic (symbolic) int there
        return _ops.seed_from_words(x.detach(), seed // 2**32, seed % 2**32)
    seed = int(seed)
    signed = seed - 2**64 if seed >= 2**63 else seed
    return torch.full((1,), signed, dtype=torch.int64, device=x.device)


def _update_running(running_var, num_batches_tracked, var, M, momentum):
    """``running_var`` as ``nn.BatchNorm`` updates it, with the unbiased batch variance.

    A batch with one value per channel has no variance: it is neither used nor counted.  The
    new values are computed first and committed together at the end, so a failure leaves both
    buffers as they were.  No ``no_grad``: the values carry no graph, and a traced (exported)
    program must not hold a grad-mode switch.
    """
    if isinstance(M, torch.SymInt):  # a traced program for every batch size: no branch on M
        _update_running_symbolic(running_var, num_batches_tracked, var, M, momentum)
        return
    if M <= 1:
        return
    if momentum is not None:  # the same update in fewer ops (each ~3 us on a small tensor)
        unbiased_scale = momentum * M / (M - 1)
        running_var.copy_(torch.add(running_var * (1 - momentum),
                                    var.detach().to(running_var.dtype), alpha=unbiased_scale))
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return
    # momentum None: the cumulative average (num_batches_tracked is then required); the factor
    # is kept as a tensor so tracing needs no host sync.
    count = num_batches_tracked + 1
    factor = 1.0 / count.to(running_var.dtype)
    unbiased = var.detach().to(running_var.dtype) * (M / (M - 1))
    running_var.copy_(running_var * (1 - factor) + unbiased * factor)
    num_batches_tracked.copy_(count)


def _update_running_symbolic(running_var, num_batches_tracked, var, M, momentum):
    """:func:`_update_running` for an ``M`` known only when the traced program runs.

    An exported program (or a graph compiled for dynamic shapes) serves every batch size, so
    the batches with ``M <= 1`` (one value per channel, or none) are masked out by tensor ops
    on ``M``'s runtime value (symbolic arithmetic would be simplified under the tracer's
    assumption that sizes are >= 2): a ``where`` keeps the old variance, even when the
    unusable batch's variance is NaN (as an empty batch's is), and the count is not advanced.
    """
    m = torch.full((), M, dtype=running_var.dtype, device=running_var.device)
    used = m > 1
    count = None if num_batches_tracked is None else num_batches_tracked + used
    if momentum is None:
        factor = 1.0 / count.clamp_min(1).to(running_var.dtype)
    else:
        factor = momentum
    unbiased = var.detach().to(running_var.dtype) * (m / (m - 1).clamp_min(1))
    new_var = torch.where(used, running_var * (1 - factor) + unbiased * factor, running_var)
    running_var.copy_(new_var)
    if count is not None:
        num_batches_tracked.copy_(count)


def _per_channel_alpha(alpha, C: int, dtype: torch.dtype, device) -> Tensor:
    """``alpha`` as a contiguous ``(C,)`` tensor (differentiable when ``alpha`` is)."""
    if not isinstance(alpha, Tensor):
        return torch.full((C,), float(alpha), dtype=dtype, device=device)
    return alpha.to(device=device, dtype=dtype).expand(C).contiguous()


def _check_input(x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"x must have a floating dtype (float16, bfloat16, float32 or float64), got {x.dtype}"
        )
    if x.dim() < 2:
        raise ValueError(
            f"x must have at least 2 dims (N, C, *S) with channels in dim 1, got shape "
            f"{tuple(x.shape)}"
        )


def _check_alpha(alpha, C: int, stat_dtype: torch.dtype = torch.float32) -> None:
    """``alpha``'s type and shape, and its value when it is a number: >= 0 and finite in
    ``stat_dtype``, the dtype the noise is scaled in (float32; float64 for float64 input)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (numbers.Real, Tensor)):
        raise TypeError(f"alpha must be a float or a tensor, got {type(alpha).__name__}")
    if isinstance(alpha, Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a floating tensor, got dtype {alpha.dtype}")
        if alpha.shape not in ((), (C,)):
            raise ValueError(
                f"alpha must be a scalar or have shape ({C},) (one per channel), got shape "
                f"{tuple(alpha.shape)}"
            )
        return
    try:
        alpha = float(alpha)
    except OverflowError:  # an int beyond float64
        alpha = math.inf
    if math.isnan(alpha):
        raise ValueError("alpha must not be NaN")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha:g}")
    if alpha == math.inf:  # comparisons, not math.isinf: dynamo may hold a symbolic float
        raise ValueError(f"alpha must be finite, got {alpha:g}")
    if alpha > _FINITE_MAX[stat_dtype]:
        name = str(stat_dtype).removeprefix("torch.")
        raise ValueError(
            f"alpha must be at most {_FINITE_MAX[stat_dtype]:g} (the largest {name}: the "
            f"noise is scaled in {name}), got {alpha:g}"
        )


def _check_alpha_values(alpha: Tensor, host: bool) -> None:
    """No negative, NaN or infinite value: read on the host, or asserted on the device (no
    sync; also what a traced graph does)."""
    a = alpha.detach()
    if host and not torch.compiler.is_compiling():
        if torch.isnan(a).any():
            raise ValueError("alpha must not be NaN")
        if (a < 0).any():
            raise ValueError(f"alpha must be >= 0, got min {a.min().item():g}")
        if torch.isinf(a).any():
            raise ValueError("alpha must be finite, got inf")
    else:
        torch._assert_async(((a >= 0) & (a < math.inf)).all(),
                            "anoise: alpha must be >= 0 and finite (not NaN, not inf)")


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def _check_momentum(momentum) -> float | None:
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
    return float(momentum)


def _check_eps(eps, stat_dtype: torch.dtype = torch.float32) -> float:
    """``eps`` as a float: positive, and a finite normal number in ``stat_dtype``, the dtype of
    the statistics it is added to (float32; float64 for float64 input).  One that rounds to 0
    or to a subnormal there (flushed to 0 on some hardware) would make ``sigma`` 0 on a
    constant channel, and its gradients NaN."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    try:
        value = float(eps)
    except OverflowError:  # an int beyond float64
        value = math.inf
    if not value > 0:
        raise ValueError(f"eps must be > 0 (it keeps sigma finite), got {eps}")
    name = str(stat_dtype).removeprefix("torch.")
    if value == math.inf:  # comparisons, not math.isinf: dynamo may hold a symbolic float
        raise ValueError(f"eps must be finite, got {eps}")
    if value > _FINITE_MAX[stat_dtype]:
        raise ValueError(
            f"eps must be at most {_FINITE_MAX[stat_dtype]:g} (the largest {name}: the "
            f"statistics are {name}), got {eps}"
        )
    if value < _NORMAL_MIN[stat_dtype]:
        raise ValueError(
            f"eps must be at least {_NORMAL_MIN[stat_dtype]:g} (the smallest normal {name}: "
            f"the statistics are {name}, where a smaller eps rounds to 0 or a subnormal), "
            f"got {eps}"
        )
    return value


def _check_options(x, running_var, num_batches_tracked, training, momentum, eps, stats_grad,
                   seed, sync_stats, updates) -> None:
    C = x.shape[1]
    _check_flag(training, "training")
    _check_flag(stats_grad, "stats_grad")
    _check_flag(sync_stats, "sync_stats")
    if running_var is not None:
        if not isinstance(running_var, Tensor):
            raise TypeError(f"running_var must be a tensor, got {type(running_var).__name__}")
        if running_var.shape != (C,):
            raise ValueError(
                f"running_var must have shape ({C},) to match x's {C} channels, got "
                f"{tuple(running_var.shape)}"
            )
        if running_var.device != x.device:
            raise ValueError(
                f"running_var is on {running_var.device} but x is on {x.device}; move both to "
                "one device"
            )
        if not running_var.is_floating_point():
            raise TypeError(f"running_var must be a floating tensor, got {running_var.dtype}")
        if updates:
            if running_var.requires_grad:
                raise ValueError(
                    "running_var requires grad, so it cannot be updated in place in training; "
                    "pass a tensor that does not (a buffer, or running_var.detach())"
                )
            _check_updatable(running_var, "running_var")
    if num_batches_tracked is not None:
        _check_num_batches_tracked(num_batches_tracked, x.device, updates)
    if momentum is None and running_var is not None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    _check_momentum(momentum)
    _check_eps(eps, _ref.stat_dtype(x.dtype))
    if seed is not None:
        _check_seed(seed)


def _check_seed(seed) -> None:
    if isinstance(seed, torch.SymInt):  # a traced dynamic int: checked when the program runs
        torch._check(seed >= 0, lambda: "seed must be in [0, 2**64)")
        torch._check(seed <= _SEED_MAX, lambda: "seed must be in [0, 2**64)")
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= int(seed) <= _SEED_MAX:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def _check_updatable(buffer: Tensor, name: str) -> None:
    """The buffer can be written in place (checked before anything is written)."""
    if buffer.dim() and buffer.numel() > 1 and 0 in buffer.stride():
        raise ValueError(
            f"{name} has overlapping memory (an expanded tensor) and cannot be updated in place; "
            "pass a tensor of its own (e.g. .clone())"
        )
    if torch.compiler.is_compiling():  # dynamo cannot trace is_inference()
        return
    if buffer.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            f"{name} is an inference tensor (made under torch.inference_mode) and cannot be "
            "updated outside inference mode; pass a .clone() made outside it"
        )


def _check_num_batches_tracked(nbt, device, updates: bool) -> None:
    if not isinstance(nbt, Tensor):
        raise TypeError(
            f"num_batches_tracked must be a tensor (an int64 buffer) or None, got "
            f"{type(nbt).__name__}"
        )
    if nbt.is_floating_point() or nbt.is_complex() or nbt.dtype == torch.bool:
        raise TypeError(f"num_batches_tracked must be an integer tensor, got {nbt.dtype}")
    if nbt.numel() != 1:
        raise ValueError(
            f"num_batches_tracked must hold one value (shape ()), got shape {tuple(nbt.shape)}"
        )
    if nbt.device != device:
        raise ValueError(
            f"num_batches_tracked is on {nbt.device} but x is on {device}; move both to one "
            "device"
        )
    if updates:
        _check_updatable(nbt, "num_batches_tracked")
