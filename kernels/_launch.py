"""Launchers of the Triton backend (the interface of :mod:`anoise.backends`).

Each launcher takes ``(N, C, S)`` views of any strides and returns outputs laid out like the
input (``torch.empty_like``).  ``index_base`` shifts every element's noise index (element ``i``
draws the stream at ``index_base + i``, SPEC section 3): a rank's offset in a global batch, and
in tests the way to reach indices past 2**32 on small tensors.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton
import triton.language as tl

from . import _kernels as K
from ._config import plan, unit_dim

# Channels per program and chunks per step in the (small) combine kernels.
_COMBINE_BLOCK_C = 128
_COMBINE_ELEMS = 2048


def _on_input_device(fn):
    """Launch on the first argument's GPU (Triton launches on the current device)."""

    @functools.wraps(fn)
    def wrapper(t, *args, **kwargs):
        if t.is_cuda:
            with torch.cuda.device(t.device):
                return fn(t, *args, **kwargs)
        return fn(t, *args, **kwargs)

    return wrapper


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check3(name: str, t: torch.Tensor) -> None:
    if t.dim() != 3:
        raise ValueError(f"{name} must be an (N, C, S) view, got shape {tuple(t.shape)}")


def _check_base(index_base: int) -> None:
    if not 0 <= index_base < 2**62:
        raise ValueError(f"index_base must be >= 0 and < 2**62, got {index_base}")


def _kernel_view(t):
    """A ``(N, 1, 1)`` view as ``(1, 1, N)``: the same elements and logical indices, with the
    noise groups along the last axis (the kernels' fast case) instead of along ``N``."""
    return t.permute(1, 2, 0) if t is not None and t.shape[1] == 1 and t.shape[2] == 1 else t


def _check_seed(seed: torch.Tensor, like: torch.Tensor) -> None:
    if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != like.device:
        raise ValueError(
            f"seed must be a 1-element int64 tensor on {like.device}, got {seed.dtype} "
            f"with {seed.numel()} elements on {seed.device}"
        )


def _per_channel(t: torch.Tensor, C: int, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).expand(C).contiguous()


def _eps_split(eps: float, dtype: torch.dtype) -> tuple[float, float]:
    """``eps`` as a float32 value plus (for float64 input) its float32 rounding error."""
    hi = float(np.float32(eps))
    return hi, (float(eps) - hi if dtype == torch.float64 else 0.0)


def _combine_blocks(C: int, chunks: int) -> tuple[int, int]:
    bc = min(triton.next_power_of_2(C), _COMBINE_BLOCK_C)
    bk = min(triton.next_power_of_2(chunks), max(_COMBINE_ELEMS // bc, 1))
    return bc, bk


def _tiling(p):
    return dict(BN=p.block_n, BC=p.block_c, BS=p.block_s, INT64=p.int64, num_warps=p.num_warps)


def _groups(p):
    return dict(GD=p.group_dim, ALIGNED=p.aligned)


def _pow2_divisor(v: int) -> int:
    """The largest power of two up to 16 that divides ``v``."""
    q = 16
    while v % q:
        q //= 2
    return q


def _geometry(*tensors):
    """``(dims, strides, constexprs)``: the ``(N, C, S)`` extents and each tensor's strides as
    the kernels take them (divided by the powers of two the kernels multiply them back by, see
    kernels/_kernels.py), with the units and which tensors share the first one's strides."""
    N, C, S = tensors[0].shape
    units = [unit_dim(t) for t in tensors]
    # The unit stride is implied by UNIT, and a dim of extent 1 is only ever indexed at 0: both
    # are passed as 0, so that e.g. the stride 1 of the S == 1 dim of an (N, C) input does not
    # hide that the others are multiples of 16 (triton 3.6 then stops vectorising).
    strides = [[0 if d == u or t.shape[d] == 1 else st for d, st in enumerate(t.stride())]
               for t, u in zip(tensors, units, strict=True)]
    q = min(_pow2_divisor(st) for sts in strides for st in sts)
    qn, qc, qs = (_pow2_divisor(v) for v in (N, C, S))
    dims = (N // qn, C // qc, S // qs)
    strides = [st // q for sts in strides for st in sts]
    same = [t.stride() == tensors[0].stride() for t in tensors[1:]]
    return dims, strides, dict(QN=qn, QC=qc, QS=qs, Q=q), units, same


@_on_input_device
def forward_batch(x3, alpha, seed, eps, *, index_base: int = 0):
    """``(y3, mean, var)``: batch statistics (var biased) and ``y = x + alpha*sigma*eps``."""
    _check3("x3", x3)
    _check_seed(seed, x3)
    _check_base(index_base)
    N, C, S = x3.shape
    sd = _stats_dtype(x3.dtype)
    y3 = torch.empty_like(x3)
    mean = x3.new_empty((C,), dtype=sd)
    var = x3.new_empty((C,), dtype=sd)
    if x3.numel() == 0:
        return y3, mean.fill_(float("nan")), var.fill_(float("nan"))
    alpha = _per_channel(alpha, C, sd)
    eps_hi, eps_lo = _eps_split(eps, x3.dtype)
    xk, yk = _kernel_view(x3), _kernel_view(y3)
    p = plan(xk, yk, index_base=index_base)
    dims, strides, qs, (ux, uy), (same_y,) = _geometry(xk, yk)
    consts = dict(UNIT_X=ux, UNIT_Y=uy, SAME_Y=same_y, ACC=_acc(x3.dtype), **qs, **_tiling(p),
                  **_groups(p))
    args = (*dims, *strides, eps_hi, eps_lo, index_base, p.tiles_s, p.tiles,
            p.tiles_per_program)
    noise = (p.noise_tiles_s, p.noise_tiles)
    if p.chunks == 1:
        K.stats_kernel[(p.channel_blocks,)](
            xk, yk, alpha, seed, mean, var, mean, *args, 1, *noise, FUSED=True, **consts
        )
        return y3, mean, var
    part = torch.empty((3, p.chunks, C), dtype=sd, device=x3.device)
    K.stats_kernel[(p.channel_blocks * p.chunks,)](
        xk, yk, alpha, seed, mean, var, part, *args, p.chunks, *noise, FUSED=False, **consts
    )
    scale = torch.empty_like(mean)
    bc, bk = _combine_blocks(C, p.chunks)
    K.combine_stats_kernel[(triton.cdiv(C, bc),)](
        part, alpha, mean, var, scale, C, p.chunks, eps_hi, eps_lo, BC=bc, BK=bk,
        ACC=consts["ACC"]
    )
    _inject(xk, yk, scale, seed, p, index_base)
    return y3, mean, var


@_on_input_device
def forward_scaled(x3, scale, seed, *, index_base: int = 0):
    """``y = x + scale_c * eps`` (running statistics in eval)."""
    _check3("x3", x3)
    _check_seed(seed, x3)
    _check_base(index_base)
    y3 = torch.empty_like(x3)
    if x3.numel() == 0:
        return y3
    scale = _per_channel(scale, x3.shape[1], _stats_dtype(x3.dtype))
    xk, yk = _kernel_view(x3), _kernel_view(y3)
    _inject(xk, yk, scale, seed, plan(xk, yk, index_base=index_base), index_base)
    return y3


def _inject(x3, y3, scale, seed, p, index_base):
    dims, strides, qs, (ux, uy), (same_y,) = _geometry(x3, y3)
    P = min(p.elementwise_programs, p.noise_tiles)
    K.inject_kernel[(p.channel_blocks * P,)](
        x3, y3, scale, seed, *dims, *strides, index_base, p.noise_tiles_s, p.noise_tiles, P,
        UNIT_X=ux, UNIT_Y=uy, SAME_Y=same_y, ACC=_acc(x3.dtype), **qs, **_tiling(p),
        **_groups(p),
    )


def _backward_geometry(dy3, x3, dx3):
    """``_geometry`` of ``(dy, x, dx)``, any of ``x``, ``dx`` absent (passed as ``dy``)."""
    dims, strides, qs, units, same = _geometry(dy3, x3 if x3 is not None else dy3,
                                               dx3 if dx3 is not None else dy3)
    return dims, strides, dict(UNIT_D=units[0], UNIT_X=units[1], UNIT_O=units[2],
                               SAME_X=same[0], SAME_O=same[1], **qs)


def _reduce_noise(dy3, x3, dx3, seed, alpha, mean, sigma, g, index_base, want_dx):
    """Run noise_dot_kernel; returns the plan and, when split, the partial sums."""
    dy3, x3, dx3 = _kernel_view(dy3), _kernel_view(x3), _kernel_view(dx3)
    C = dy3.shape[1]
    # Tile order from dy's layout unless dy has no unit stride (e.g. the expanded gradient of a
    # sum, all strides 0).
    lead = dy3 if unit_dim(dy3) >= 0 or x3 is None else x3
    others = [t for t in (dy3, x3, dx3) if t is not None and t is not lead]
    p = plan(lead, *others, index_base=index_base)
    dims, strides, consts = _backward_geometry(dy3, x3, dx3)
    fused = p.chunks == 1
    part = g if fused else torch.empty((p.chunks, C), dtype=g.dtype, device=g.device)
    mode = (2 if want_dx else 1) if fused else 0
    K.noise_dot_kernel[(p.channel_blocks * p.chunks,)](
        dy3, x3 if x3 is not None else dy3, dx3 if dx3 is not None else dy3, seed,
        alpha if alpha is not None else g, mean if mean is not None else g,
        sigma if sigma is not None else g, g, part, *dims, *strides, index_base,
        dy3.shape[0] * dy3.shape[2], p.noise_tiles_s, p.noise_tiles, p.noise_tiles_per_program,
        p.tiles_s, p.tiles, ACC=_acc(dy3.dtype), MODE=mode, **consts, **_tiling(p),
        **_groups(p),
    )
    return p, (None if fused else part)


@_on_input_device
def noise_dot(dy3, seed, *, index_base: int = 0):
    """``g_c = sum(dy * eps)`` over channel ``c``."""
    _check3("dy3", dy3)
    _check_seed(seed, dy3)
    _check_base(index_base)
    C = dy3.shape[1]
    g = dy3.new_empty((C,), dtype=_stats_dtype(dy3.dtype))
    if dy3.numel() == 0:
        return g.zero_()
    _, part = _reduce_noise(dy3, None, None, seed, None, None, None, g, index_base, False)
    if part is not None:
        _combine_g(part, g, None, None, None, 0)
    return g


@_on_input_device
def backward_batch(dy3, x3, alpha, mean, sigma, seed, *, index_base: int = 0):
    """``(dx3, g)``: ``g_c = sum(dy * eps)``, ``dx = dy + alpha_c*(x-mean_c)/(M*sigma_c)*g_c``."""
    _check3("dy3", dy3)
    _check3("x3", x3)
    _check_seed(seed, dy3)
    _check_base(index_base)
    if dy3.shape != x3.shape:
        raise ValueError(f"dy3 {tuple(dy3.shape)} and x3 {tuple(x3.shape)} must match")
    N, C, S = dy3.shape
    sd = _stats_dtype(x3.dtype)
    dx3 = torch.empty_like(dy3)
    g = dy3.new_empty((C,), dtype=sd)
    if dy3.numel() == 0:
        return dx3, g.zero_()
    alpha, mean, sigma = (_per_channel(t, C, sd) for t in (alpha, mean, sigma))
    p, part = _reduce_noise(dy3, x3, dx3, seed, alpha, mean, sigma, g, index_base, True)
    if part is None:
        return dx3, g
    coef = torch.empty_like(g)
    _combine_g(part, g, alpha, sigma, coef, N * S)
    dyk, xk, dxk = _kernel_view(dy3), _kernel_view(x3), _kernel_view(dx3)
    dims, strides, consts = _backward_geometry(dyk, xk, dxk)
    K.dx_kernel[(p.channel_blocks * p.elementwise_programs,)](
        dyk, xk, dxk, coef, mean, *dims, *strides, p.tiles_s, p.tiles, p.elementwise_programs,
        ACC=_acc(dy3.dtype), GD=p.group_dim, **consts, **_tiling(p),
    )
    return dx3, g


def _combine_g(part, g, alpha, sigma, coef, M):
    chunks, C = part.shape
    bc, bk = _combine_blocks(C, chunks)
    with_coef = coef is not None
    K.combine_g_kernel[(triton.cdiv(C, bc),)](
        part, alpha if with_coef else g, sigma if with_coef else g, g, coef if with_coef else g,
        C, chunks, M, BC=bc, BK=bk, ACC=_acc(g.dtype), COEF=with_coef,
    )


@_on_input_device
def philox_at(groups: torch.Tensor, seed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(words, rand4, randn4)`` of the noise stream at int64 group indices, as the kernels
    compute them (for tests): ``tl.randint4x``, ``tl.rand4x`` and ``tl.randn4x``.

    Each output is ``(n, 4)``: ``words`` int64 in ``[0, 2**32)``, the others float32.  Element
    ``i`` of a call draws ``randn4[i >> 2, i & 3]``.  ``seed`` is an int in ``[0, 2**64)`` or a
    (1,) int64 tensor.
    """
    groups = groups.to(torch.int64).contiguous().view(-1)
    if not isinstance(seed, torch.Tensor):
        seed = int(seed)
        signed = seed - 2**64 if seed >= 2**63 else seed
        seed = torch.tensor([signed], dtype=torch.int64, device=groups.device)
    n = groups.numel()
    words = torch.empty((n, 4), dtype=torch.int32, device=groups.device)
    rand = torch.empty((n, 4), dtype=torch.float32, device=groups.device)
    randn = torch.empty((n, 4), dtype=torch.float32, device=groups.device)
    if n:
        # Few large programs when interpreted (each costs interpreter overhead).
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        block = min(triton.next_power_of_2(n), 1 << 16) if interpreted else 256
        for normals in (False, True):
            K.philox_kernel[(triton.cdiv(n, block),)](groups, seed, words, rand, randn, n,
                                                      BLOCK=block, NORMALS=normals)
    return words.to(torch.int64) & 0xFFFFFFFF, rand, randn
