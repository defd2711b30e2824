"""The pure-PyTorch reference of the adaptive-noise operator (SPEC section 2).

It is the definition every fused backend is tested against, so it is written for clarity:
plain tensor ops, gradients from autograd.  It materialises the noise and keeps it for
backward (autograd saves it), which the fused backends never do.
"""

from __future__ import annotations

import torch

from .philox import noise_like, philox_normal

Seed = int | torch.Tensor


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are accumulated in float32, or float64 for float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a ``(C,)`` tensor to broadcast over ``(N, C, *S)``."""
    return v.view((1, -1) + (1,) * (ndim - 2))


# Sign and exponent bits, per statistics dtype: masking a float's bits with them gives the
# power of two at or below its magnitude.
_EXPONENT_BITS = {torch.float32: (torch.int32, 0x7F800000),
                  torch.float64: (torch.int64, 0x7FF0000000000000)}


def _channel_scale(xs: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Per channel, the power of two ``s <= max|x|`` (1 where that is 0, subnormal, inf or
    NaN): ``|x / s| < 2``, so the squares and sums of the scaled values cannot overflow."""
    magnitude = xs.detach().abs()
    if isinstance(xs.numel(), torch.SymInt):  # a traced program for every size, 0 included:
        magnitude = torch.nn.functional.pad(magnitude, (0, 0) * (xs.dim() - 1) + (0, 1))
    amax = magnitude.amax(dims)  # (a zero row added, as the max of nothing has no value)
    int_dtype, mask = _EXPONENT_BITS[xs.dtype]
    scale = (amax.view(int_dtype) & mask).view(xs.dtype)
    normal = (scale > 0) & torch.isfinite(scale)
    return torch.where(normal, scale, torch.ones_like(scale))


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` (N, C, *S), in the statistics dtype.

    Computed on ``x / s_c`` with ``s_c`` a power of two (:func:`_channel_scale`), then scaled
    back: dividing by a power of two is exact, so this is bit for bit the direct formula
    wherever that stays finite, and it stays finite wherever the variance itself does (data
    of magnitude 1e19 in float32, whose squares' sum overflows).
    """
    xs = x.to(stat_dtype(x.dtype))
    dims = [0] + list(range(2, x.dim()))
    if xs.numel() == 0:  # no scale to take (amax of nothing); mean and var are NaN
        mean = xs.mean(dims)
        return mean, ((xs - _per_channel(mean, x.dim())) ** 2).mean(dims)
    scale = _channel_scale(xs, dims)
    xn = xs / _per_channel(scale, x.dim())
    mean_n = xn.mean(dims)
    var_n = ((xn - _per_channel(mean_n, x.dim())) ** 2).mean(dims)
    return mean_n * scale, var_n * scale * scale


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


def _noise(x: torch.Tensor, seed: Seed) -> torch.Tensor:
    """``eps`` for every element of ``x``.  A traced program for every batch size (a symbolic
    ``numel``) draws it in one piece: chunking by size would tie the program to a size range."""
    if isinstance(x.numel(), torch.SymInt):
        idx = torch.arange(x.numel(), dtype=torch.int64, device=x.device)
        return philox_normal(seed, idx).view(x.shape)
    return noise_like(x, seed)


def _inject(x: torch.Tensor, scale: torch.Tensor, seed: Seed) -> torch.Tensor:
    xs = x.to(scale.dtype)
    term = _per_channel(scale, x.dim()) * _noise(x, seed).to(scale.dtype)
    # x - (0 - term) is x + term, except that a zero term leaves x bitwise itself: x + (+0.0)
    # would turn -0.0 into +0.0, and alpha = 0 must return x exactly.
    return (xs - (0.0 - term)).to(x.dtype)
