"""Triton kernels of the adaptive-noise operator.

All kernels address the ``(N, C, S)`` view through three strides per tensor, so any layout
works without a copy; ``UNIT_*`` names the dim whose stride is 1 so the compiler sees the
contiguity and vectorises.  Element ``(n, c, s)`` draws its noise at the logical index
``i = (n * C + c) * S + s + base`` (``base``: the call's index offset, e.g. a rank's slice of
a global batch): component ``i & 3`` of group ``i >> 2`` of the stream (:mod:`._noise`).  The
seed is read from device memory.  ``INT64`` switches index arithmetic to 64 bits.

Tiles.  A tile is ``[BN, BC, BS]`` elements; tile ``t`` of a channel block is tile
``(t // TS, t % TS)`` along ``(N, S)``, and a reduction program owns tiles
``[k * TPP, (k + 1) * TPP)``.  Offsets within a tile are computed once per program; a tile adds
a scalar, so the loops carry no per-element index arithmetic beyond one add.  Tiles that draw
noise are laid on the stream's groups so that one Philox call serves four elements of the tile
(``GD``: the axis the groups run along):

* ``GD == 2`` (``S > 1``): each ``(n, c)`` row's logical indices are consecutive along ``s``.
  When a row does not start on a group (``S`` or ``base`` not a multiple of 4, ``ALIGNED``
  false) the row's window is shifted left by ``r = row_start & 3``: ``s = ts * BS - r + p``, so
  positions ``4q .. 4q+3`` of the tile are one group.  Such noise tiles cover ``S + 3``
  positions per row (``TS`` counts them); the shifted-out positions are masked.
* ``GD == 1`` (``S == 1``, ``(N, C)`` inputs): consecutive channels are consecutive indices.
  With ``C`` and ``base`` multiples of 4 a channel block (``BC`` a multiple of 4) starts on a
  group in every row.  Otherwise (``ALIGNED`` false) each element evaluates its own group and
  takes its component: four times the work, for the rare ``(N, C)`` shapes with ``C`` not a
  multiple of 4 (a per-row shift along ``c`` would move elements between channel blocks).

Reductions and ``dx`` use unshifted tiles (``TSU`` along ``s``, ``R`` per channel block); the
noise loops use ``TS`` and ``RN``.

Divisibility.  Triton knows an integer argument's divisibility only up to 16 and only when the
value itself is divisible, so a row stride of 196 (14x14 maps) would hide that rows start on
16-byte boundaries and turn every vector access into four.  The launchers pass the extents
divided by ``QN, QC, QS`` and the strides divided by ``Q`` (each the largest power of two up to
16 that divides them); multiplying back by these constants tells the compiler.

Arithmetic is in ``ACC`` (float32, or float64 for float64 input); the noise is float32 and is
cast.  Python floats reach a kernel as float32, so ``eps`` comes as ``eps + eps_lo`` (``eps_lo``
is the float32 rounding error, non-zero only for float64 input, where it keeps ``sigma`` exact
to float64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._noise import (
    component,
    interleave4,
    philox_words,
    polar4,
    seed_key,
    uniform,
)


@triton.jit
def _split(t, TS):
    """Tile index ``t`` as ``(tn, ts)``: its position along ``N`` and along ``S``."""
    tn = t // TS
    return tn, t - tn * TS


@triton.jit
def _advance(tn, ts, dn, ds, TS):
    """``(tn, ts)`` moved on by ``dn * TS + ds`` tiles (``ds < TS``): no division in loops."""
    ts = ts + ds
    wrap = ts >= TS
    return tn + dn + wrap.to(tl.int32), tl.where(wrap, ts - TS, ts)


@triton.jit
def _addr(n, c, s, sn, sc, ss, UNIT: tl.constexpr):
    if UNIT == 0:
        off = n + c * sc + s * ss
    elif UNIT == 1:
        off = n * sn + c + s * ss
    elif UNIT == 2:
        off = n * sn + c * sc + s
    else:
        off = n * sn + c * sc + s * ss
    return off


@triton.jit
def _step(off, d, ss, UNIT: tl.constexpr):
    """``off`` moved by ``d`` along ``s``."""
    if UNIT == 2:
        r = off + d
    else:
        r = off + d * ss
    return r


@triton.jit
def _channels(cb, BC: tl.constexpr, INT64: tl.constexpr):
    """Channel indices ``[1, BC, 1]`` of channel block ``cb``."""
    if INT64:
        cb = cb.to(tl.int64)
    return cb * BC + tl.arange(0, BC)[None, :, None]


@triton.jit
def _local(c, sn, sc, ss, BN: tl.constexpr, BS: tl.constexpr, UNIT: tl.constexpr):
    """Offsets of a tile's elements from the tile's corner ``(tn * BN, 0, ts * BS)``."""
    return _addr(tl.arange(0, BN)[:, None, None], c, tl.arange(0, BS)[None, None, :], sn, sc, ss,
                 UNIT)


@triton.jit
def _corner(tn, ts, sn, ss, BN: tl.constexpr, BS: tl.constexpr, UNIT: tl.constexpr,
            INT64: tl.constexpr):
    """Offset of tile ``(tn, ts)``'s corner."""
    if INT64:
        tn = tn.to(tl.int64)
        ts = ts.to(tl.int64)
    return _addr(tn * BN, 0, ts * BS, sn, 0, ss, UNIT)


@triton.jit
def _mask(cmask, tn, ts, N, S, BN: tl.constexpr, BS: tl.constexpr):
    """In-range elements of the unshifted tile ``(tn, ts)``."""
    return (cmask & (tl.arange(0, BN)[:, None, None] < N - tn * BN)
            & (tl.arange(0, BS)[None, None, :] < S - ts * BS))


@triton.jit
def _noise_rows(c, cb, C, S, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                GD: tl.constexpr, ALIGNED: tl.constexpr):
    """The loop-invariant part of a noise tile's group indices (see :func:`_noise_tile`)."""
    a = tl.arange(0, BN)[:, None, None].to(c.dtype)
    if GD == 2:
        rows = (a * C + c) * S  # logical index of (a, c, 0) from the tile's corner row
        if ALIGNED:
            rows = (rows >> 2) + tl.arange(0, BS // 4)[None, None, :]
    elif ALIGNED:
        rows = ((a * C + cb * BC) >> 2) + tl.arange(0, BC // 4)[None, :, None]
    else:
        rows = a * C + c
    return rows


@triton.jit
def _noise_tile(k0, k1, rows, tn, ts, C, S, base, scale, BN: tl.constexpr, BC: tl.constexpr,
                BS: tl.constexpr, INT64: tl.constexpr, GD: tl.constexpr,
                ALIGNED: tl.constexpr):
    """``(radius, angle, r)`` of noise tile ``(tn, ts)``: ``eps * scale_c = radius * angle``
    elementwise (in float32 the scale is applied to the two radii of each group rather than to
    its four normals), and the shift of the tile's rows (``[BN, BC, 1]``, or 0 where rows start
    on a group)."""
    if INT64:
        tn = tn.to(tl.int64)
        ts = ts.to(tl.int64)
    first = tn * BN * C * S + base  # logical index of the tile's corner row
    r = 0
    if GD == 2:
        if ALIGNED:
            g = rows + ((first >> 2) + ts * (BS // 4))
        else:
            row = rows + first
            r = row & 3
            g = (row >> 2) + (ts * (BS // 4) + tl.arange(0, BS // 4)[None, None, :])
    elif ALIGNED:
        g = rows + (first >> 2)
    else:
        g = (rows + first) >> 2
    ra, ca, sa, rb, cb, sb = polar4(k0, k1, g, INT64)
    if scale.dtype == tl.float64:
        # The noise is the float32 stream: round each normal before the float64 arithmetic.
        if GD == 1 and not ALIGNED:
            eps = component(ra * ca, ra * sa, rb * cb, rb * sb, (rows + first) & 3)
        else:
            eps = interleave4(ra * ca, ra * sa, rb * cb, rb * sb, [BN, BC, BS])
        radius = eps.to(tl.float64) * scale
        angle = 1.0
    else:
        if GD == 2:  # a group lies in one channel: scale its radii
            ra = ra * scale
            rb = rb * scale
        if GD == 1 and not ALIGNED:
            k = (rows + first) & 3
            radius = tl.where(k < 2, ra, rb)
            angle = component(ca, sa, cb, sb, k)
        else:
            radius = interleave4(ra, ra, rb, rb, [BN, BC, BS])
            angle = interleave4(ca, sa, cb, sb, [BN, BC, BS])
        if GD == 1:
            radius = radius * scale
    return radius, angle, r


@triton.jit
def _narrow(ptr, UNIT: tl.constexpr, GD: tl.constexpr):
    """Whether accesses through ``ptr`` along the group axis must be capped at 4 elements.

    A thread holds a group's 4 noise values side by side.  A 16-bit dtype would otherwise be
    accessed 8 per thread (16 bytes), a different register layout, and the compiler reconciles
    the two through shared memory on every tile; 8-byte accesses stay coalesced.  (The hint
    goes on the pointers at the access: it does not survive a function return, and on shared
    loop-invariant offsets it would also narrow the other loops' accesses.)
    """
    return ptr.dtype.element_ty.primitive_bitwidth == 16 and UNIT == GD


@triton.jit
def _noise_mask(cmask, r, tn, ts, N, S, BN: tl.constexpr, BS: tl.constexpr,
                SHIFTED: tl.constexpr):
    """In-range elements of noise tile ``(tn, ts)`` (rows shifted by ``r``)."""
    if SHIFTED:
        p = tl.arange(0, BS)[None, None, :] - r
        smask = (p >= -ts * BS) & (p < S - ts * BS)
        mask = cmask & (tl.arange(0, BN)[:, None, None] < N - tn * BN) & smask
    else:
        mask = _mask(cmask, tn, ts, N, S, BN, BS)
    return mask


@triton.jit
def _sum_nc(v):
    """Per-channel sum of a ``[BN, BC, BS]`` tile: a ``[BC]`` vector."""
    return tl.sum(tl.sum(v, axis=2), axis=0)


@triton.jit
def _sqrt(v, ACC: tl.constexpr):
    """Correctly rounded square root (tl.sqrt is approximate in float32)."""
    if ACC == tl.float64:
        r = tl.sqrt(v)
    else:
        r = tl.sqrt_rn(v)
    return r


@triton.jit
def _inject_loop(x_ptr, y_ptr, k0, k1, scale, t0, t1, step, cb, N, C, S, sxn, sxc, sxs, syn,
                 syc, sys, base, TS, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                 UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, SAME_Y: tl.constexpr,
                 INT64: tl.constexpr, ACC: tl.constexpr, GD: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """``y = x + scale_c * eps`` on noise tiles ``t0, t0 + step, ... < t1``; ``y = x``
    (bitwise) where ``scale_c == 0``."""
    SHIFTED: tl.constexpr = GD == 2 and not ALIGNED
    c = _channels(cb, BC, INT64)
    cmask = c < C
    rows = _noise_rows(c, cb, C, S, BN, BC, BS, GD, ALIGNED)
    ox = _local(c, sxn, sxc, sxs, BN, BS, UNIT_X)
    oy = ox if SAME_Y else _local(c, syn, syc, sys, BN, BS, UNIT_Y)
    sc = scale[None, :, None]
    keep = sc == 0
    tn, ts = _split(t0, TS)
    dn, ds = _split(step, TS)
    for _ in range(t0, t1, step):
        radius, angle, r = _noise_tile(k0, k1, rows, tn, ts, C, S, base, sc, BN, BC, BS, INT64,
                                       GD, ALIGNED)
        mask = _noise_mask(cmask, r, tn, ts, N, S, BN, BS, SHIFTED)
        px = x_ptr + _corner(tn, ts, sxn, sxs, BN, BS, UNIT_X, INT64) + _step(ox, -r, sxs, UNIT_X)
        if _narrow(x_ptr, UNIT_X, GD):
            px = tl.max_contiguous(px, [1, 1, 4] if GD == 2 else [1, 4, 1])
        x = tl.load(px, mask=mask)  # lanes out of range are never stored
        y = (x.to(ACC) + radius * angle).to(x.dtype)
        y = tl.where(keep, x, y)
        if SAME_Y:
            py = y_ptr + _corner(tn, ts, sxn, sxs, BN, BS, UNIT_X, INT64)
            py += _step(ox, -r, sxs, UNIT_X)
        else:
            py = y_ptr + _corner(tn, ts, syn, sys, BN, BS, UNIT_Y, INT64)
            py += _step(oy, -r, sys, UNIT_Y)
        if _narrow(y_ptr, UNIT_Y, GD):
            py = tl.max_contiguous(py, [1, 1, 4] if GD == 2 else [1, 4, 1])
        tl.store(py, y, mask=mask)
        tn, ts = _advance(tn, ts, dn, ds, TS)


# -- forward ----------------------------------------------------------------------------------


@triton.jit
def _stats_tiles(x_ptr, t0, t1, cb, N, C, S, sxn, sxc, sxs, TSU, SCALE: tl.constexpr,
                 BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr, UNIT_X: tl.constexpr,
                 INT64: tl.constexpr, ACC: tl.constexpr, FUSED: tl.constexpr,
                 GD: tl.constexpr):
    """Per-channel ``(count, mean, M2)`` of ``x * SCALE`` over tiles ``t0 .. t1 - 1``."""
    c = _channels(cb, BC, INT64)
    cmask = c < C
    ox = _local(c, sxn, sxc, sxs, BN, BS, UNIT_X)
    cnt = tl.zeros([BC], ACC)
    mean = tl.zeros([BC], ACC)
    m2 = tl.zeros([BC], ACC)
    tn, ts = _split(t0, TSU)
    for _ in range(t0, t1):
        mask = _mask(cmask, tn, ts, N, S, BN, BS)
        px = x_ptr + _corner(tn, ts, sxn, sxs, BN, BS, UNIT_X, INT64) + ox
        if FUSED and _narrow(x_ptr, UNIT_X, GD):  # the inject loop's register layout
            px = tl.max_contiguous(px, [1, 1, 4] if GD == 2 else [1, 4, 1])
        x = tl.load(px, mask=mask, other=0.0).to(ACC)
        if SCALE != 1.0:
            x = x * SCALE
        tcnt = (tl.minimum(N - tn * BN, BN) * tl.minimum(S - ts * BS, BS)).to(ACC)
        tmean = _sum_nc(x) / tcnt
        d = tl.where(mask, x - tmean[None, :, None], 0.0)
        tm2 = _sum_nc(d * d)
        total = cnt + tcnt
        w = tcnt / total
        delta = tmean - mean
        mean = mean + delta * w
        m2 = m2 + tm2 + delta * delta * cnt * w
        cnt = total
        tn, ts = _advance(tn, ts, 0, 1, TSU)
    return cnt, mean, m2


@triton.jit
def stats_kernel(x_ptr, y_ptr, alpha_ptr, seed_ptr, mean_ptr, var_ptr, part_ptr,
                 N, C, S, sxn, sxc, sxs, syn, syc, sys, eps, eps_lo, base, TSU, R, TPP, K,
                 TS, RN, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                 UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, SAME_Y: tl.constexpr,
                 INT64: tl.constexpr, ACC: tl.constexpr, FUSED: tl.constexpr, GD: tl.constexpr,
                 ALIGNED: tl.constexpr, QN: tl.constexpr, QC: tl.constexpr,
                 QS: tl.constexpr, Q: tl.constexpr):
    """Per-channel (count, mean, M2) over this program's tiles (Chan's merge, tile by tile).

    Each tile is reduced exactly (its own mean, then the squared deviations from it, while it
    is in registers) and merged into the running triple, so there is no E[x^2] - E[x]^2
    cancellation.  With ``FUSED`` the program covers whole channels: it finishes the
    statistics and injects the noise in a second sweep (one launch for the whole forward).
    Otherwise it writes the partial triple to ``part[0..2, k, c]`` for :func:`combine_stats`.
    """
    N, C, S = N * QN, C * QC, S * QS
    sxn, sxc, sxs, syn, syc, sys = sxn * Q, sxc * Q, sxs * Q, syn * Q, syc * Q, sys * Q
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    k = pid // CB
    t0 = k * TPP
    t1 = tl.minimum(t0 + TPP, R)
    cnt, mean, m2 = _stats_tiles(x_ptr, t0, t1, cb, N, C, S, sxn, sxc, sxs, TSU, 1.0, BN, BC, BS,
                                 UNIT_X, INT64, ACC, FUSED, GD)
    rescaled = tl.zeros([BC], tl.int32) != 0
    if ACC == tl.float32:
        # M2 (n times the variance) overflows float32 where the variance itself need not, e.g.
        # |x| ~ 1e19: such channels are reduced again on x * 2**-64, off the hot loop, and
        # their M2 kept scaled by 2**-128 (as the rounding is, since the scale is a power of
        # two).  A channel with Inf or NaN gets NaN here, not +inf, and is left alone.
        overflow = m2 == float("inf")
        if tl.max(overflow.to(tl.int32), axis=0) > 0:
            _, _, m2_scaled = _stats_tiles(x_ptr, t0, t1, cb, N, C, S, sxn, sxc, sxs, TSU,
                                           5.421010862427522e-20, BN, BC, BS, UNIT_X, INT64,
                                           ACC, FUSED, GD)
            m2 = tl.where(overflow, m2_scaled, m2)
            rescaled = overflow
    cv = cb * BC + tl.arange(0, BC)
    if FUSED:
        var = m2 / cnt
        var = tl.where(rescaled, var * 18446744073709551616.0 * 18446744073709551616.0, var)
        tl.store(mean_ptr + cv, mean, mask=cv < C)
        tl.store(var_ptr + cv, var, mask=cv < C)
        alpha = tl.load(alpha_ptr + cv, mask=cv < C, other=0.0).to(ACC)
        scale = alpha * _sqrt(var + eps + eps_lo, ACC)
        k0, k1 = seed_key(seed_ptr)
        _inject_loop(x_ptr, y_ptr, k0, k1, scale, 0, RN, 1, cb, N, C, S, sxn, sxc, sxs, syn, syc,
                     sys, base, TS, BN, BC, BS, UNIT_X, UNIT_Y, SAME_Y, INT64, ACC, GD, ALIGNED)
    else:
        off = k * C + cv
        if INT64:
            off = k.to(tl.int64) * C + cv
        plane = K * C
        # A rescaled M2 is marked by a negative count (see combine_stats_kernel).
        tl.store(part_ptr + off, tl.where(rescaled, -cnt, cnt), mask=cv < C)
        tl.store(part_ptr + plane + off, mean, mask=cv < C)
        tl.store(part_ptr + 2 * plane + off, m2, mask=cv < C)


@triton.jit
def combine_stats_kernel(part_ptr, alpha_ptr, mean_ptr, var_ptr, scale_ptr, C, K, eps, eps_lo,
                         BC: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr):
    """Merge the ``K`` partial triples of each channel, in chunk order.

    mean = sum_k n_k mean_k / n;  M2 = sum_k (M2_k + n_k (mean_k - mean)^2): every term is a
    non-negative deviation, so the merge is as stable as the partials themselves.  Where that
    sum overflows, or a partial's M2 came rescaled (stored with a negative count, see
    stats_kernel), the sum is taken again on values scaled by 2**-64.
    """
    cb = tl.program_id(0)
    c = cb * BC + tl.arange(0, BC)[None, :]
    kk = tl.arange(0, BK)[:, None]
    plane = K * C
    total = tl.zeros([BC], ACC)
    weighted = tl.zeros([BC], ACC)
    for k0 in range(0, K, BK):
        m = (k0 + kk < K) & (c < C)
        off = (k0 + kk) * C + c
        n = tl.abs(tl.load(part_ptr + off, mask=m, other=0.0))
        mu = tl.load(part_ptr + plane + off, mask=m, other=0.0)
        total += tl.sum(n, axis=0)
        weighted += tl.sum(n * mu, axis=0)
    total = tl.maximum(total, 1.0)  # only the padding channels beyond C have no elements
    mean = weighted / total
    m2 = tl.zeros([BC], ACC)
    m2_scaled = tl.zeros([BC], ACC)  # M2 * 2**-128
    for k0 in range(0, K, BK):
        m = (k0 + kk < K) & (c < C)
        off = (k0 + kk) * C + c
        n = tl.load(part_ptr + off, mask=m, other=0.0)
        mu = tl.load(part_ptr + plane + off, mask=m, other=0.0)
        q = tl.load(part_ptr + 2 * plane + off, mask=m, other=0.0)
        d = mu - mean[None, :]
        rescaled = n < 0
        n = tl.abs(n)
        m2 += tl.sum(tl.where(m, tl.where(rescaled, float("inf"), q) + n * d * d, 0.0), axis=0)
        if ACC == tl.float32:
            ds = d * 5.421010862427522e-20
            qs = tl.where(rescaled, q, q * 5.421010862427522e-20 * 5.421010862427522e-20)
            m2_scaled += tl.sum(tl.where(m, qs + n * ds * ds, 0.0), axis=0)
    var = m2 / total
    if ACC == tl.float32:
        var = tl.where(m2 == float("inf"),
                       m2_scaled / total * 18446744073709551616.0 * 18446744073709551616.0, var)
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    alpha = tl.load(alpha_ptr + cv, mask=cmask, other=0.0).to(ACC)
    tl.store(mean_ptr + cv, mean, mask=cmask)
    tl.store(var_ptr + cv, var, mask=cmask)
    tl.store(scale_ptr + cv, alpha * _sqrt(var + eps + eps_lo, ACC), mask=cmask)


@triton.jit
def inject_kernel(x_ptr, y_ptr, scale_ptr, seed_ptr, N, C, S, sxn, sxc, sxs, syn, syc, sys, base,
                  TS, RN, P, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                  UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, SAME_Y: tl.constexpr,
                  INT64: tl.constexpr, ACC: tl.constexpr, GD: tl.constexpr,
                  ALIGNED: tl.constexpr, QN: tl.constexpr, QC: tl.constexpr,
                  QS: tl.constexpr, Q: tl.constexpr):
    """``y = x + scale_c * eps`` (the eval path, and the forward after a split reduction).

    ``P`` programs per channel block; program ``p`` injects noise tiles ``p, p + P, ...``, so
    the seed, the scales and the offsets are set up once per program, not per tile."""
    N, C, S = N * QN, C * QC, S * QS
    sxn, sxc, sxs, syn, syc, sys = sxn * Q, sxc * Q, sxs * Q, syn * Q, syc * Q, sys * Q
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    cv = cb * BC + tl.arange(0, BC)
    scale = tl.load(scale_ptr + cv, mask=cv < C, other=0.0).to(ACC)
    k0, k1 = seed_key(seed_ptr)
    _inject_loop(x_ptr, y_ptr, k0, k1, scale, pid // CB, RN, P, cb, N, C, S, sxn, sxc, sxs, syn,
                 syc, sys, base, TS, BN, BC, BS, UNIT_X, UNIT_Y, SAME_Y, INT64, ACC, GD, ALIGNED)


# -- backward (the math is in noise_dot_kernel's docstring) ----------------------------------


@triton.jit
def _dx_loop(dy_ptr, x_ptr, dx_ptr, coef, mean, t0, t1, step, cb, N, C, S, sdn, sdc, sds, sxn,
             sxc, sxs, son, soc, sos, TS, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
             UNIT_D: tl.constexpr, UNIT_X: tl.constexpr, UNIT_O: tl.constexpr,
             SAME_X: tl.constexpr, SAME_O: tl.constexpr, INT64: tl.constexpr,
             ACC: tl.constexpr, GD: tl.constexpr, AFTER_NOISE: tl.constexpr):
    """``dx = dy + coef_c * (x - mean_c)`` on tiles ``t0, t0 + step, ... < t1``."""
    c = _channels(cb, BC, INT64)
    cmask = c < C
    od = _local(c, sdn, sdc, sds, BN, BS, UNIT_D)
    ox = od if SAME_X else _local(c, sxn, sxc, sxs, BN, BS, UNIT_X)
    oo = od if SAME_O else _local(c, son, soc, sos, BN, BS, UNIT_O)
    k = coef[None, :, None]
    mu = mean[None, :, None]
    tn, ts = _split(t0, TS)
    dn, ds = _split(step, TS)
    for _ in range(t0, t1, step):
        mask = _mask(cmask, tn, ts, N, S, BN, BS)
        cd = _corner(tn, ts, sdn, sds, BN, BS, UNIT_D, INT64)
        cx = cd if SAME_X else _corner(tn, ts, sxn, sxs, BN, BS, UNIT_X, INT64)
        co = cd if SAME_O else _corner(tn, ts, son, sos, BN, BS, UNIT_O, INT64)
        pd = dy_ptr + cd + od
        px = x_ptr + cx + ox
        po = dx_ptr + co + oo
        # After a noise loop in the same kernel: that loop's register layout (see _narrow).
        if AFTER_NOISE and _narrow(dy_ptr, UNIT_D, GD):
            pd = tl.max_contiguous(pd, [1, 1, 4] if GD == 2 else [1, 4, 1])
        if AFTER_NOISE and _narrow(x_ptr, UNIT_X, GD):
            px = tl.max_contiguous(px, [1, 1, 4] if GD == 2 else [1, 4, 1])
        if AFTER_NOISE and _narrow(dx_ptr, UNIT_O, GD):
            po = tl.max_contiguous(po, [1, 1, 4] if GD == 2 else [1, 4, 1])
        dy = tl.load(pd, mask=mask)
        x = tl.load(px, mask=mask).to(ACC)
        dx = (dy.to(ACC) + k * (x - mu)).to(dy.dtype)
        dx = tl.where(k == 0, dy, dx)
        tl.store(po, dx, mask=mask)
        tn, ts = _advance(tn, ts, dn, ds, TS)


@triton.jit
def noise_dot_kernel(dy_ptr, x_ptr, dx_ptr, seed_ptr, alpha_ptr, mean_ptr, sigma_ptr, g_ptr,
                     part_ptr, N, C, S, sdn, sdc, sds, sxn, sxc, sxs, son, soc, sos, base, M,
                     TS, RN, TPP, TSU, R, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                     UNIT_D: tl.constexpr, UNIT_X: tl.constexpr, UNIT_O: tl.constexpr,
                     SAME_X: tl.constexpr, SAME_O: tl.constexpr, INT64: tl.constexpr,
                     ACC: tl.constexpr, MODE: tl.constexpr, GD: tl.constexpr,
                     ALIGNED: tl.constexpr, QN: tl.constexpr, QC: tl.constexpr,
                     QS: tl.constexpr, Q: tl.constexpr):
    """Per-channel ``G_c = sum(dy * eps)`` over this program's noise tiles, and the backward.

    The math: with ``y = x + alpha_c * sigma_c * eps`` and ``sigma_c = sqrt(var_c + eps0)`` from
    the batch, the only path from ``x`` to ``y`` besides the identity runs through ``sigma_c``.
    ``dL/dsigma_c = alpha_c * G_c``, and ``dsigma_c/dx_k = (x_k - mean_c) / (M * sigma_c)``
    (the mean's own dependence on ``x`` drops out because the deviations sum to zero), so
    ``dx_k = dy_k + coef_c * (x_k - mean_c)`` with ``coef_c = alpha_c * G_c / (M * sigma_c)``.
    Backward is therefore one reduction that regenerates ``eps`` from the seed (the noise is
    never stored) to form ``G_c``, then an elementwise pass that needs no noise at all.  The
    caller forms ``d alpha_c = sigma_c * G_c``.  When ``sigma`` is a constant (``stats_grad``
    off, or running statistics) ``dx = dy`` and only ``G`` is needed (``noise_dot``).

    Each lane of the tile accumulates its own products over the program's tiles; the lanes are
    summed once at the end (a fixed tree, so the result is reproducible).

    MODE 0: write the partial sum to ``part[k, c]`` (split reduction, see combine_g_kernel).
    MODE 1: the program covers whole channels; write ``G`` to ``g``.
    MODE 2: as 1, then sweep again for ``dx = dy + coef_c * (x - mean_c)`` (fused backward).
    """
    N, C, S = N * QN, C * QC, S * QS
    sdn, sdc, sds, sxn, sxc, sxs = sdn * Q, sdc * Q, sds * Q, sxn * Q, sxc * Q, sxs * Q
    son, soc, sos = son * Q, soc * Q, sos * Q
    SHIFTED: tl.constexpr = GD == 2 and not ALIGNED
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    k = pid // CB
    t0 = k * TPP
    t1 = tl.minimum(t0 + TPP, RN)
    k0, k1 = seed_key(seed_ptr)
    c = _channels(cb, BC, INT64)
    cmask = c < C
    rows = _noise_rows(c, cb, C, S, BN, BC, BS, GD, ALIGNED)
    od = _local(c, sdn, sdc, sds, BN, BS, UNIT_D)
    acc = tl.zeros([BN, BC, BS], ACC)
    one = tl.full([1, 1, 1], 1.0, ACC)
    tn, ts = _split(t0, TS)
    for _ in range(t0, t1):
        radius, angle, r = _noise_tile(k0, k1, rows, tn, ts, C, S, base, one, BN, BC, BS, INT64,
                                       GD, ALIGNED)
        mask = _noise_mask(cmask, r, tn, ts, N, S, BN, BS, SHIFTED)
        pd = dy_ptr + _corner(tn, ts, sdn, sds, BN, BS, UNIT_D, INT64) + _step(od, -r, sds, UNIT_D)
        if _narrow(dy_ptr, UNIT_D, GD):
            pd = tl.max_contiguous(pd, [1, 1, 4] if GD == 2 else [1, 4, 1])
        # Lanes out of range load dy = 0 and the noise is always finite: they add nothing.
        acc += tl.load(pd, mask=mask, other=0.0).to(ACC) * (radius * angle)
        tn, ts = _advance(tn, ts, 0, 1, TS)
    g = _sum_nc(acc)
    cv = cb * BC + tl.arange(0, BC)
    if MODE == 0:
        off = k * C + cv
        if INT64:
            off = k.to(tl.int64) * C + cv
        tl.store(part_ptr + off, g, mask=cv < C)
    else:
        tl.store(g_ptr + cv, g, mask=cv < C)
        if MODE == 2:
            alpha = tl.load(alpha_ptr + cv, mask=cv < C, other=0.0).to(ACC)
            sigma = tl.load(sigma_ptr + cv, mask=cv < C, other=1.0).to(ACC)
            mean = tl.load(mean_ptr + cv, mask=cv < C, other=0.0).to(ACC)
            coef = alpha * g / (M * sigma)
            _dx_loop(dy_ptr, x_ptr, dx_ptr, coef, mean, 0, R, 1, cb, N, C, S, sdn, sdc, sds,
                     sxn, sxc, sxs, son, soc, sos, TSU, BN, BC, BS, UNIT_D, UNIT_X, UNIT_O,
                     SAME_X, SAME_O, INT64, ACC, GD, True)


@triton.jit
def combine_g_kernel(part_ptr, alpha_ptr, sigma_ptr, g_ptr, coef_ptr, C, K, M,
                     BC: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, COEF: tl.constexpr):
    """``G_c`` = the ``K`` partial sums added in chunk order; with ``COEF`` also
    ``coef_c = alpha_c * G_c / (M * sigma_c)`` for dx_kernel."""
    cb = tl.program_id(0)
    c = cb * BC + tl.arange(0, BC)[None, :]
    kk = tl.arange(0, BK)[:, None]
    acc = tl.zeros([BC], ACC)
    for k0 in range(0, K, BK):
        m = (k0 + kk < K) & (c < C)
        acc += tl.sum(tl.load(part_ptr + (k0 + kk) * C + c, mask=m, other=0.0), axis=0)
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    tl.store(g_ptr + cv, acc, mask=cmask)
    if COEF:
        alpha = tl.load(alpha_ptr + cv, mask=cmask, other=0.0).to(ACC)
        sigma = tl.load(sigma_ptr + cv, mask=cmask, other=1.0).to(ACC)
        tl.store(coef_ptr + cv, alpha * acc / (M * sigma), mask=cmask)


@triton.jit
def dx_kernel(dy_ptr, x_ptr, dx_ptr, coef_ptr, mean_ptr, N, C, S, sdn, sdc, sds, sxn, sxc, sxs,
              son, soc, sos, TS, R, P, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
              UNIT_D: tl.constexpr, UNIT_X: tl.constexpr, UNIT_O: tl.constexpr,
              SAME_X: tl.constexpr, SAME_O: tl.constexpr, INT64: tl.constexpr,
              ACC: tl.constexpr, GD: tl.constexpr, QN: tl.constexpr, QC: tl.constexpr,
              QS: tl.constexpr, Q: tl.constexpr):
    """``dx = dy + coef_c * (x - mean_c)``; program ``p`` of a channel block takes tiles
    ``p, p + P, ...`` (as in :func:`inject_kernel`)."""
    N, C, S = N * QN, C * QC, S * QS
    sdn, sdc, sds, sxn, sxc, sxs = sdn * Q, sdc * Q, sds * Q, sxn * Q, sxc * Q, sxs * Q
    son, soc, sos = son * Q, soc * Q, sos * Q
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    cv = cb * BC + tl.arange(0, BC)
    coef = tl.load(coef_ptr + cv, mask=cv < C, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + cv, mask=cv < C, other=0.0).to(ACC)
    _dx_loop(dy_ptr, x_ptr, dx_ptr, coef, mean, pid // CB, R, P, cb, N, C, S, sdn, sdc, sds, sxn,
             sxc, sxs, son, soc, sos, TS, BN, BC, BS, UNIT_D, UNIT_X, UNIT_O, SAME_X, SAME_O,
             INT64, ACC, GD, False)


# -- the raw stream, for tests ----------------------------------------------------------------


@triton.jit
def philox_kernel(group_ptr, seed_ptr, words_ptr, rand_ptr, randn_ptr, n, BLOCK: tl.constexpr,
                  NORMALS: tl.constexpr):
    """Per group index (int64): the four Philox words and uniforms (``tl.randint4x`` /
    ``tl.rand4x``), or with ``NORMALS`` the four normals (``tl.randn4x``), as the fused kernels
    compute them.

    Two launches rather than one: a kernel that stores both the uniforms and the normals made
    of the same words fails to compile with triton 3.6 (its TritonGPURemoveLayoutConversions
    pass: "operand does not dominate this use")."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    g = tl.load(group_ptr + i, mask=m, other=0)
    k0, k1 = seed_key(seed_ptr)
    out = 4 * i
    if NORMALS:
        ra, ca, sa, rb, cb, sb = polar4(k0, k1, g, True)
        tl.store(randn_ptr + out, ra * ca, mask=m)
        tl.store(randn_ptr + out + 1, ra * sa, mask=m)
        tl.store(randn_ptr + out + 2, rb * cb, mask=m)
        tl.store(randn_ptr + out + 3, rb * sb, mask=m)
    else:
        w0, w1, w2, w3 = philox_words(k0, k1, g, True)
        tl.store(words_ptr + out, w0.to(tl.int32, bitcast=True), mask=m)
        tl.store(words_ptr + out + 1, w1.to(tl.int32, bitcast=True), mask=m)
        tl.store(words_ptr + out + 2, w2.to(tl.int32, bitcast=True), mask=m)
        tl.store(words_ptr + out + 3, w3.to(tl.int32, bitcast=True), mask=m)
        tl.store(rand_ptr + out, uniform(w0), mask=m)
        tl.store(rand_ptr + out + 1, uniform(w1), mask=m)
        tl.store(rand_ptr + out + 2, uniform(w2), mask=m)
        tl.store(rand_ptr + out + 3, uniform(w3), mask=m)
