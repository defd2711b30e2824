"""The pure-PyTorch reference of the adaptive-noise operator (SPEC section 2).

It is the definition every fused backend is tested against, so it is written for clarity:
plain tensor ops, gradients from autograd.  It materialises the noise and keeps it for
backward (autograd saves it), which the fused backends never do.
"""

from __future__ import annotations

import torch

from .philox import noise_like

Seed = int | torch.Tensor


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are accumulated in float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a ``(C,)`` tensor to broadcast over ``(N, C, *S)``."""
    return v.view((1, -1) + (1,) * (ndim - 2))


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` (N, C, *S), in the statistics dtype."""
    xs = x.to(stat_dtype(x.dtype))
    dims = [0] + list(range(2, x.dim()))
    mean = xs.mean(dims)
    var = ((xs - _per_channel(mean, x.dim())) ** 2).mean(dims)
    return mean, var


def adaptive_noise_batch(
    x: torch.Tensor, alpha: torch.Tensor, seed: Seed, eps: float, stats_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = x + alpha_c * sqrt(var_c + eps) * randn(seed, i)`` with this batch's statistics.

    ``alpha`` has shape ``(C,)``; ``seed`` is an int or an int64 tensor (see
    :func:`anoise.philox.philox_words`).  Returns ``y`` and the (detached) batch mean and biased
    variance, which the caller uses for the running-variance update.
    """
    mean, var = batch_stats(x)
    sigma = torch.sqrt(var + eps)
    if not stats_grad:
        sigma = sigma.detach()
    y = _inject(x, alpha.to(sigma.dtype) * sigma, seed)
    return y, mean.detach(), var.detach()


def adaptive_noise_scaled(x: torch.Tensor, scale: torch.Tensor, seed: Seed) -> torch.Tensor:
    """``y = x + scale_c * randn(seed, i)``: the eval path with running statistics."""
    return _inject(x, scale, seed)


def _inject(x: torch.Tensor, scale: torch.Tensor, seed: Seed) -> torch.Tensor:
    xs = x.to(scale.dtype)
    term = _per_channel(scale, x.dim()) * noise_like(x, seed).to(scale.dtype)
    # x - (0 - term) is x + term, except that a zero term leaves x bitwise itself: x + (+0.0)
    # would turn -0.0 into +0.0, and alpha = 0 must return x exactly.
    return (xs - (0.0 - term)).to(x.dtype)
