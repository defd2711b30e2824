"""The ``anoise::*`` custom ops behind the fused backends.

Registered with ``torch.library`` (fake kernels for tracing, autograd formulas from SPEC
section 2) so ``torch.compile(fullgraph=True)`` sees them as single nodes.  Each op takes the
backend's name and calls that backend's launcher (see :mod:`anoise.backends`).  Backward
regenerates the noise from the seed: forward saves ``x`` (only when the statistics are
differentiated), the ``(C,)`` statistics and the seed, never the noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import backends as _backends


def _view3d(t: Tensor) -> Tensor:
    """``(N, C, *S)`` as ``(N, C, prod(S))``, a view whenever the strides allow it."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


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


# -- forward with batch statistics ------------------------------------------------------------


@torch.library.custom_op("anoise::forward_batch", mutates_args=())
def forward_batch(
    x: Tensor, alpha: Tensor, seed: Tensor, eps: float, stats_grad: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, var)``: the noise injected with this batch's statistics (var biased)."""
    y3, mean, var = _backends.launcher(backend).forward_batch(_view3d(x), alpha, seed, eps)
    return y3.reshape(x.shape), mean, var


@forward_batch.register_fake
def _(x, alpha, seed, eps, stats_grad, backend):
    y = torch.empty_like(_view3d(x)).reshape(x.shape)
    return y, _stats_like(x, alpha.dtype), _stats_like(x, alpha.dtype)


def _forward_batch_setup(ctx, inputs, output):
    x, alpha, seed, eps, stats_grad, backend = inputs
    _, mean, var = output
    ctx.eps, ctx.stats_grad, ctx.backend = eps, stats_grad, backend
    ctx.save_for_backward(x if stats_grad else None, alpha, mean, var, seed)
    ctx.mark_non_differentiable(mean, var)


def _forward_batch_backward(ctx, dy, _dmean, _dvar):
    x, alpha, mean, var, seed = ctx.saved_tensors
    sigma = torch.sqrt(var + ctx.eps)
    if ctx.stats_grad:
        dx, g = backward_batch(dy, x, alpha, mean, sigma, seed, ctx.backend)
    else:
        dx, g = dy, noise_dot(dy, seed, ctx.backend)
    return dx, sigma * g, None, None, None, None


forward_batch.register_autograd(_forward_batch_backward, setup_context=_forward_batch_setup)


@torch.library.custom_op("anoise::backward_batch", mutates_args=())
def backward_batch(
    dy: Tensor, x: Tensor, alpha: Tensor, mean: Tensor, sigma: Tensor, seed: Tensor, backend: str
) -> tuple[Tensor, Tensor]:
    """``(dx, g)`` with ``g_c = sum(dy * eps)`` and ``dx`` of SPEC section 2 (batch stats)."""
    dx3, g = _backends.launcher(backend).backward_batch(
        _view3d(dy), _view3d(x), alpha, mean, sigma, seed
    )
    return dx3.reshape(x.shape), g


@backward_batch.register_fake
def _(dy, x, alpha, mean, sigma, seed, backend):
    return torch.empty_like(_view3d(dy)).reshape(dy.shape), _stats_like(x, alpha.dtype)


# -- forward with a given per-channel scale (running statistics in eval) ----------------------


@torch.library.custom_op("anoise::forward_scaled", mutates_args=())
def forward_scaled(x: Tensor, scale: Tensor, seed: Tensor, backend: str) -> Tensor:
    """``y = x + scale_c * eps``."""
    return _backends.launcher(backend).forward_scaled(_view3d(x), scale, seed).reshape(x.shape)


@forward_scaled.register_fake
def _(x, scale, seed, backend):
    return torch.empty_like(_view3d(x)).reshape(x.shape)


def _forward_scaled_setup(ctx, inputs, output):
    _, _, seed, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(seed)


def _forward_scaled_backward(ctx, dy):
    (seed,) = ctx.saved_tensors
    return dy, noise_dot(dy, seed, ctx.backend), None, None


forward_scaled.register_autograd(_forward_scaled_backward, setup_context=_forward_scaled_setup)


@torch.library.custom_op("anoise::noise_dot", mutates_args=())
def noise_dot(dy: Tensor, seed: Tensor, backend: str) -> Tensor:
    """``g_c = sum(dy * eps)`` over the elements of channel ``c``."""
    return _backends.launcher(backend).noise_dot(_view3d(dy), seed)


@noise_dot.register_fake
def _(dy, seed, backend):
    return _stats_like(dy, torch.float64 if dy.dtype == torch.float64 else torch.float32)
