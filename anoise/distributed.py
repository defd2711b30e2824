"""Statistics synchronised over the ranks of a ``torch.distributed`` process group.

Like ``nn.SyncBatchNorm``: the per-channel count, mean and variance of every rank (computed
as :func:`anoise.reference.batch_stats` does) are gathered and merged (Chan et al.'s pairwise
update, in rank order, in float64), so every rank injects noise with the statistics of the global
batch.  The ranks share rank 0's seed and each uses the global logical index of its elements
(its slice of the batch starts at ``(N_0 + ... + N_{r-1}) * C * S``), so the ranks' outputs
concatenated along the batch equal one process's output on the concatenated batch.  Backward
all-reduces ``G_c`` for the statistics term of ``dx``; ``d alpha`` stays local (DDP averages
parameter gradients).

The statistics and ``dx`` are computed with PyTorch ops; the noise (injection and ``G_c``) comes
from the chosen backend's launchers with the rank's index offset, or from the reference stream
for ``backend="reference"``.  Backward regenerates the noise instead of storing it.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from . import backends as _backends
from .ops import _shaped, _view3d
from .philox import noise_like
from .reference import batch_stats, stat_dtype


def is_active(process_group) -> bool:
    """Whether statistics must be synchronised: a process group with more than one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def _dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    return v.view((1, -1) + (1,) * (ndim - 2))


def _gather(t: Tensor, group) -> list[Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t.contiguous(), group=group)
    return out


def _merge(counts: list[int], means: list[Tensor], m2s: list[Tensor]):
    """Chan's merge of per-rank (count, mean, M2), in rank order: deterministic."""
    n, mean, m2 = 0, torch.zeros_like(means[0]), torch.zeros_like(m2s[0])
    for n_b, mean_b, m2_b in zip(counts, means, m2s, strict=True):
        if n_b == 0:
            continue
        total = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (n * n_b / total)
        n = total
    return n, mean, m2


def _inject(x, scale, seed_t, offset, backend):
    """``x + scale_c * eps`` with the noise of logical indices ``offset + i``."""
    if backend == "reference":
        noise = noise_like(x, seed_t, offset).to(scale.dtype)
        return (x.to(scale.dtype) + _per_channel(scale, x.dim()) * noise).to(x.dtype)
    y3 = _backends.launcher(backend).forward_scaled(_view3d(x), scale, seed_t,
                                                     index_base=offset)
    return _shaped(y3, x.shape)


def _noise_dot(dy, seed_t, offset, backend, dtype):
    """``G_c = sum(dy * eps)`` over this rank's elements of channel ``c``."""
    if backend == "reference":
        return (dy.to(dtype) * noise_like(dy, seed_t, offset).to(dtype)).sum(_dims(dy))
    return _backends.launcher(backend).noise_dot(_view3d(dy), seed_t, index_base=offset)


class SyncAdaptiveNoise(torch.autograd.Function):
    """Forward returns ``(y, var, M)``: the global biased variance and element count (a tensor)."""

    @staticmethod
    def forward(ctx, x, alpha, seed, eps, stats_grad, group, backend):
        sdtype = stat_dtype(x.dtype)
        N, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        if x.numel():
            mean_l, var_l = batch_stats(x)
        else:
            mean_l = var_l = x.new_zeros(C, dtype=sdtype)
        meta = _gather(torch.tensor([N, seed], dtype=torch.int64, device=x.device), group)
        batch_sizes = [int(m[0]) for m in meta]
        seed_t = meta[0][1:].clone()  # rank 0's seed for every rank, as a (1,) int64 tensor
        # Merged in float64: a rank's sum of squared deviations (var * count) overflows float32
        # for data whose variance float32 still holds (magnitude 1e19).
        stats = _gather(torch.stack([mean_l, var_l]).double(), group)
        counts = [b * S for b in batch_sizes]
        M, mean, m2 = _merge(counts, [s[0] for s in stats],
                             [s[1] * n for s, n in zip(stats, counts, strict=True)])
        mean, var = mean.to(sdtype), (m2 / max(M, 1)).to(sdtype)
        sigma = torch.sqrt(var + eps)
        offset = sum(batch_sizes[: dist.get_rank(group)]) * C * S
        y = _inject(x, alpha.to(sdtype) * sigma, seed_t, offset, backend)
        ctx.offset, ctx.M, ctx.stats_grad, ctx.group = offset, M, stats_grad, group
        ctx.alpha_dtype, ctx.backend = alpha.dtype, backend
        ctx.save_for_backward(x if stats_grad else None, alpha, mean, sigma, seed_t)
        count = torch.tensor(M, dtype=torch.int64)
        ctx.mark_non_differentiable(var, count)
        return y, var, count

    @staticmethod
    def backward(ctx, dy, _dvar, _dM):
        x, alpha, mean, sigma, seed_t = ctx.saved_tensors
        sdtype = sigma.dtype
        dx = g_local = None
        if ctx.stats_grad or ctx.needs_input_grad[1]:  # the noise is regenerated only for G
            g_local = _noise_dot(dy, seed_t, ctx.offset, ctx.backend, sdtype)
        if ctx.stats_grad:  # every rank joins the all-reduce, whatever it needs
            g = g_local.clone()
            dist.all_reduce(g, group=ctx.group)
        if ctx.needs_input_grad[0]:
            if ctx.stats_grad:
                coef = alpha.to(sdtype) * g / (ctx.M * sigma)
                xc = x.to(sdtype) - _per_channel(mean, x.dim())
                dx = (dy.to(sdtype) + _per_channel(coef, x.dim()) * xc).to(dy.dtype)
            else:
                dx = dy
        dalpha = (sigma * g_local).to(ctx.alpha_dtype) if ctx.needs_input_grad[1] else None
        return dx, dalpha, None, None, None, None, None
