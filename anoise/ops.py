"""The ``anoise::*`` custom ops behind the fused backends.

Registered with ``torch.library`` (fake kernels for tracing, autograd formulas from SPEC
section 2, vmap rules) so ``torch.compile(fullgraph=True)`` sees them as single nodes.  Each op
takes the backend's name and calls that backend's launcher (see :mod:`anoise.backends`).
Backward regenerates the noise from the seed: forward saves ``x`` (only when the statistics are
differentiated), the ``(C,)`` statistics and the seed, never the noise; it computes ``g`` only
when a gradient needs it.

:func:`noise_batch` and :func:`noise_scaled` are the differentiable entry points.  Ordinary
autograd and ``torch.compile`` use the ops' own (``torch.library``) autograd.  Under
``torch.func`` transforms or forward-mode AD they go through :class:`torch.autograd.Function`
twins of the ops, with the same formulas plus what the ``torch.library`` autograd lacks:
``setup_context`` (so ``torch.func.grad`` / ``vjp`` / ``jacrev`` work), forward-mode formulas
(``torch.func.jvp`` / ``jacfwd``, dual tensors) and a vmap rule.  Only then: the twins cost some
Python per call, and dynamo cannot trace an ``autograd.Function`` with a custom ``jvp``.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import backends as _backends
from .reference import _per_channel


def _view3d(t: Tensor) -> Tensor:
    """``(N, C, *S)`` as ``(N, C, prod(S))``, a view whenever the strides allow it."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _shaped(t3: Tensor, shape) -> Tensor:
    """A launcher's 3-D output in ``shape``, as a tensor of its own rather than a view.

    Autograd forbids in-place ops on a view that a custom function returns, and users apply
    ``relu_`` (``nn.ReLU(inplace=True)``) to the output.
    """
    return t3.reshape(shape).detach()


def _stats_like(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.new_empty((x.shape[1],), dtype=dtype)


@torch.library.custom_op(
    "anoise::draw_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def draw_seed(like: Tensor) -> Tensor:
    """A fresh 63-bit seed from the PyTorch generator of ``like``'s device, as a (1,) tensor.

    It stays on the device: no host synchronisation, and CUDA-graph replays draw anew.
    """
    return torch.empty((1,), dtype=torch.int64, device=like.device).random_()


@draw_seed.register_fake
def _(like):
    return like.new_empty((1,), dtype=torch.int64)


@torch.library.custom_op("anoise::seed_from_words", mutates_args=())
def seed_from_words(like: Tensor, high: int, low: int) -> Tensor:
    """The seed ``high * 2**32 + low`` (two 32-bit words) as a (1,) int64 tensor holding its 64
    bits (two's complement) on ``like``'s device, written by a fill kernel.

    For a seed that a compiled graph holds as a symbolic int: its words always fit in the int64
    arguments of an op, and an opaque op keeps the seed out of generated kernels, which take
    symbolic ints as int64 (a seed >= 2**63 would overflow there).
    """
    seed = (high << 32) | low
    return torch.full((1,), seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64,
                      device=like.device)


@seed_from_words.register_fake
def _(like, high, low):
    return like.new_empty((1,), dtype=torch.int64)


# -- forward with batch statistics ------------------------------------------------------------


@torch.library.custom_op("anoise::forward_batch", mutates_args=())
def forward_batch(
    x: Tensor, alpha: Tensor, seed: Tensor, eps: float, stats_grad: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)``: the noise injected with this batch's statistics (var biased)."""
    return _forward_batch_impl(x, alpha, seed, eps, stats_grad, backend)


def _forward_batch_impl(x, alpha, seed, eps, stats_grad, backend):
    y3, mean, var = _backends.launcher(backend).forward_batch(_view3d(x), alpha, seed, eps)
    return _shaped(y3, x.shape), mean, var


@forward_batch.register_fake
def _(x, alpha, seed, eps, stats_grad, backend):
    y = _shaped(torch.empty_like(_view3d(x)), x.shape)
    return y, _stats_like(x, alpha.dtype), _stats_like(x, alpha.dtype)


def _forward_batch_setup(ctx, inputs, output):
    x, alpha, seed, eps, stats_grad, backend = inputs
    _, mean, var = output
    ctx.eps, ctx.stats_grad, ctx.backend = eps, stats_grad, backend
    ctx.x_like = (x.shape, x.dtype, x.device)
    saved = (x if stats_grad else None, alpha, mean, var, seed)
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.mark_non_differentiable(mean, var)


def _batch_backward(kernels):
    """Backward of :func:`forward_batch` computing its kernels with ``kernels`` (the ops, or
    the launchers called directly on plain eager calls)."""
    backward_batch_fn, noise_dot_fn = kernels

    def backward(ctx, dy, _dmean, _dvar):
        x, alpha, mean, var, seed = ctx.saved_tensors
        need_x, need_alpha = ctx.needs_input_grad[:2]
        sigma = torch.sqrt(var + ctx.eps)
        dx = g = None
        with torch.no_grad():
            if need_x and ctx.stats_grad:
                dx, g = backward_batch_fn(dy, x, alpha, mean, sigma, seed, ctx.backend)
            elif need_alpha:
                g = noise_dot_fn(dy, seed, ctx.backend)
        if need_x:
            # Without stats_grad, sigma is a constant: y - x does not depend on x.
            dx = _first_order_only(dx, dy, x, alpha) if ctx.stats_grad else dy
        dalpha = sigma * _first_order_only(g, dy, x, alpha) if need_alpha else None
        return dx, dalpha, None, None, None, None

    return backward


def _forward_batch_jvp(ctx, tx, talpha, *_):
    """``ty = tx + t_c * eps`` with ``t_c = talpha_c sigma_c + alpha_c tsigma_c`` and
    ``tsigma_c = sum_k (x_k - mu_c) tx_k / (M sigma_c)``: an injection of scale ``t``."""
    x, alpha, mean, var, seed = ctx.saved_tensors
    sigma = torch.sqrt(var + ctx.eps)
    t = torch.zeros_like(sigma)
    if talpha is not None:
        t = t + talpha * sigma
    if tx is not None and ctx.stats_grad:
        dims = [0, *range(2, x.dim())]
        xc = x.to(sigma.dtype) - _per_channel(mean, x.dim())
        t = t + alpha * (xc * tx.to(sigma.dtype)).sum(dims) / (x.numel() // x.shape[1] * sigma)
    return forward_scaled(_tangent_or_zeros(tx, ctx), t, seed, ctx.backend), None, None


def _tangent_or_zeros(tx, ctx):
    shape, dtype, device = ctx.x_like
    return tx if tx is not None else torch.zeros(shape, dtype=dtype, device=device)


@torch.library.custom_op("anoise::backward_batch", mutates_args=())
def backward_batch(
    dy: Tensor, x: Tensor, alpha: Tensor, mean: Tensor, sigma: Tensor, seed: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    """``(dx, g)`` with ``g_c = sum(dy * eps)`` and ``dx`` of SPEC section 2 (batch stats)."""
    return _backward_batch_impl(dy, x, alpha, mean, sigma, seed, backend)


def _backward_batch_impl(dy, x, alpha, mean, sigma, seed, backend):
    dx3, g = _backends.launcher(backend).backward_batch(
        _view3d(dy), _view3d(x), alpha, mean, sigma, seed
    )
    return _shaped(dx3, x.shape), g


@backward_batch.register_fake
def _(dy, x, alpha, mean, sigma, seed, backend):
    return _shaped(torch.empty_like(_view3d(dy)), dy.shape), _stats_like(x, alpha.dtype)


# -- forward with a given per-channel scale (running statistics in eval) ----------------------


@torch.library.custom_op("anoise::forward_scaled", mutates_args=())
def forward_scaled(x: Tensor, scale: Tensor, seed: Tensor, backend: str) -> Tensor:
    """``y = x + scale_c * eps``."""
    return _forward_scaled_impl(x, scale, seed, backend)


def _forward_scaled_impl(x, scale, seed, backend):
    return _shaped(_backends.launcher(backend).forward_scaled(_view3d(x), scale, seed), x.shape)


@forward_scaled.register_fake
def _(x, scale, seed, backend):
    return _shaped(torch.empty_like(_view3d(x)), x.shape)


def _forward_scaled_setup(ctx, inputs, output):
    x, _, seed, backend = inputs
    ctx.backend = backend
    ctx.x_like = (x.shape, x.dtype, x.device)
    ctx.save_for_backward(seed)
    ctx.save_for_forward(seed)


def _scaled_backward(noise_dot_fn):
    """Backward of :func:`forward_scaled` computing ``g`` with ``noise_dot_fn`` (the op, or the
    launcher called directly on plain eager calls)."""

    def backward(ctx, dy):
        (seed,) = ctx.saved_tensors
        need_x, need_scale = ctx.needs_input_grad[:2]
        dscale = None
        if need_scale:
            with torch.no_grad():
                dscale = noise_dot_fn(dy, seed, ctx.backend)
            dscale = _first_order_only(dscale, dy)
        return dy if need_x else None, dscale, None, None

    return backward


def _forward_scaled_jvp(ctx, tx, tscale, *_):
    if tscale is None:
        return tx
    (seed,) = ctx.saved_tensors
    return forward_scaled(_tangent_or_zeros(tx, ctx), tscale, seed, ctx.backend)


@torch.library.custom_op("anoise::noise_dot", mutates_args=())
def noise_dot(dy: Tensor, seed: Tensor, backend: str) -> Tensor:
    """``g_c = sum(dy * eps)`` over the elements of channel ``c``."""
    return _noise_dot_impl(dy, seed, backend)


def _noise_dot_impl(dy, seed, backend):
    return _backends.launcher(backend).noise_dot(_view3d(dy), seed)


@noise_dot.register_fake
def _(dy, seed, backend):
    return _stats_like(dy, torch.float64 if dy.dtype == torch.float64 else torch.float32)


_forward_batch_backward = _batch_backward((backward_batch, noise_dot))
_forward_scaled_backward = _scaled_backward(noise_dot)
forward_batch.register_autograd(_forward_batch_backward, setup_context=_forward_batch_setup)
forward_scaled.register_autograd(_forward_scaled_backward, setup_context=_forward_scaled_setup)


# -- second derivatives -------------------------------------------------------------------------

_NO_SECOND_ORDER = (
    "anoise: second derivatives (differentiating a gradient that flowed through an adaptive "
    "noise layer) are not implemented"
)


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a gradient the kernels computed from ``sources``, attached to them so that
    differentiating it again raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, *sources):
        return grad.view_as(grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_NO_SECOND_ORDER)

    @staticmethod
    def jvp(ctx, *_):
        raise RuntimeError(_NO_SECOND_ORDER)


def _first_order_only(grad: Tensor, *sources: Tensor | None) -> Tensor:
    """``grad``, marked when backward is itself differentiated (create_graph=True, nested
    torch.func transforms) and depends on ``sources``."""
    sources = tuple(t for t in sources if t is not None and t.requires_grad)
    if not sources or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return grad
    return _FirstOrderOnly.apply(grad, *sources)


# -- torch.func: vmap rules and the autograd.Function twins -----------------------------------


def _register_vmap_by_loop(op) -> None:
    """vmap over ``op``: one call per sample (each sample has its own statistics).

    A loop, as no launcher takes a batch of calls; vmap is for Jacobians and per-sample
    gradients here, not for speed.
    """

    def rule(info, in_dims, *args):
        def call(b):
            pairs = zip(args, in_dims, strict=True)
            return op(*(a if d is None else a.select(d, b) for a, d in pairs))

        outs = [call(b) for b in range(info.batch_size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs, strict=True)), (0,) * len(outs[0])
        return torch.stack(outs), 0

    torch.library.register_vmap(op, rule)


for _op in (forward_batch, backward_batch, forward_scaled, noise_dot):
    _register_vmap_by_loop(_op)


@torch.library.register_vmap(draw_seed)
def _(info, in_dims, like):
    """vmap's ``randomness`` flag, as for torch's own random ops."""
    one = like if in_dims[0] is None else like.select(in_dims[0], 0)
    if info.randomness == "same":
        return draw_seed(one), None
    if info.randomness == "different":
        return torch.stack([draw_seed(one) for _ in range(info.batch_size)]), 0
    raise RuntimeError(
        "anoise: a noise seed was drawn under vmap with randomness='error'; pass seed= or "
        "use randomness='same' or 'different' (torch.func.vmap / jacfwd)"
    )


def _function_twin(name, op, setup_context, backward, jvp):
    """An ``autograd.Function`` computing ``op`` with the op's own autograd formulas."""
    methods = dict(forward=op, setup_context=setup_context, backward=backward, jvp=jvp)
    return type(name, (torch.autograd.Function,), {
        "generate_vmap_rule": True, **{k: staticmethod(f) for k, f in methods.items()}})


_ForwardBatch = _function_twin("_ForwardBatch", forward_batch, _forward_batch_setup,
                               _forward_batch_backward, _forward_batch_jvp)
_ForwardScaled = _function_twin("_ForwardScaled", forward_scaled, _forward_scaled_setup,
                                _forward_scaled_backward, _forward_scaled_jvp)


def _functorch_or_forward_ad() -> bool:
    if torch.compiler.is_compiling():
        return False
    return torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0


# -- plain eager calls: the launchers without the custom-op dispatch -------------------------
#
# In an eager training step, the custom ops' Python dispatch (argument normalisation, two
# redispatches, alias checks, the torch.library autograd wrapper) costs several times the
# kernels of a small layer, in forward and again in backward.  When nothing traces or
# transforms the call (no torch.compile / export, no dispatch or function mode, no functorch
# transform, no forward AD) and every tensor is a plain torch.Tensor, the same formulas run
# through a lean autograd.Function that calls the launchers directly; everything else keeps the
# ops.  A backend may go further and offer the whole autograd node natively (``eager_batch``:
# the cpu backend's is C++, so a training step's forward and backward of a noise layer run no
# Python at all past the functional layer).


def _plain_eager(*tensors: Tensor) -> bool:
    return (torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and all(type(t) is Tensor for t in tensors))


def plain_eager_call(*tensors: Tensor) -> bool:
    """Whether a call on ``tensors`` is a plain eager one (nothing traces or transforms it)."""
    return (not torch.compiler.is_compiling() and not _functorch_or_forward_ad()
            and _plain_eager(*tensors))


def _eager_twin(name, op, setup_context, backward):
    """An ``autograd.Function`` computing ``op`` with the op's own backward, in the old style
    (``forward`` takes ``ctx``): ``Function.apply`` then binds no signature (``inspect``,
    about 20 us a call), which a ``setup_context`` Function needs only for ``torch.func``,
    and ``torch.func`` never reaches these."""

    def forward(ctx, *args):
        out = op(*args)
        setup_context(ctx, args, out)
        return out

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})


_EagerBatch = _eager_twin("_EagerBatch", _forward_batch_impl, _forward_batch_setup,
                          _batch_backward((_backward_batch_impl, _noise_dot_impl)))
_EagerScaled = _eager_twin("_EagerScaled", _forward_scaled_impl, _forward_scaled_setup,
                           _scaled_backward(_noise_dot_impl))


def noise_batch(x: Tensor, alpha: Tensor, seed: Tensor, eps: float, stats_grad: bool,
                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward_batch`, differentiable in every autograd mode (see the module doc)."""
    if _functorch_or_forward_ad():
        return _ForwardBatch.apply(x, alpha, seed, eps, stats_grad, backend)
    if not torch.compiler.is_compiling() and _plain_eager(x, alpha, seed):
        # A backend may offer the whole autograd node natively (the cpu one does, in C++).
        native = getattr(_backends.launcher(backend), "eager_batch", None)
        if native is not None:
            return native(x, alpha, seed, eps, stats_grad)
        return _EagerBatch.apply(x, alpha, seed, eps, stats_grad, backend)
    return forward_batch(x, alpha, seed, eps, stats_grad, backend)


def noise_scaled(x: Tensor, scale: Tensor, seed: Tensor, backend: str) -> Tensor:
    """:func:`forward_scaled`, differentiable in every autograd mode (see the module doc)."""
    if _functorch_or_forward_ad():
        return _ForwardScaled.apply(x, scale, seed, backend)
    if not torch.compiler.is_compiling() and _plain_eager(x, scale, seed):
        return _EagerScaled.apply(x, scale, seed, backend)
    return forward_scaled(x, scale, seed, backend)
