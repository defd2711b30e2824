"""Triton kernels of the adaptive-noise operator.

All kernels address the ``(N, C, S)`` view through three strides per tensor, so any layout
works without a copy; ``UNIT_*`` names the dim whose stride is 1 so the compiler sees the
contiguity and vectorises.  Element ``(n, c, s)`` draws its noise at the logical index
``i = (n * C + c) * S + s + base`` (``base``: the call's index offset, e.g. a rank's slice of
a global batch): component ``i & 3`` of group ``i >> 2`` of the stream (:mod:`._noise`).  The
seed is read from device memory.  ``INT64`` switches index arithmetic to 64 bits.

Tiles.  A tile is ``[BN, BC, BS]`` elements; tile ``t`` of a channel block is tile
``(t // TS, t % TS)`` along ``(N, S)``, and a reduction program owns tiles
``[k * TPP, (k + 1) * TPP)``.  Tiles that draw noise are laid on the stream's groups so that one
Philox call serves four elements of the tile (``GD``: the axis the groups run along):

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
noise loops use ``TS`` and ``RN``.  Arithmetic is in ``ACC`` (float32, or float64 for float64
input); the noise is float32 and is cast.  Python floats reach a kernel as float32, so ``eps``
comes as ``eps + eps_lo`` (``eps_lo`` is the float32 rounding error, non-zero only for float64
input, where it keeps ``sigma`` exact to float64).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._noise import component, interleave4, normals4, philox_words, seed_key, uniform


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
def _tile_pos(tn, ts, cb, BN: tl.constexpr, BC: tl.constexpr, INT64: tl.constexpr):
    """Row and channel indices (shaped ``[BN, 1, 1]``, ``[1, BC, 1]``) of tile ``(tn, ts)`` of
    channel block ``cb``, and ``ts`` in the index type."""
    if INT64:
        tn = tn.to(tl.int64)
        ts = ts.to(tl.int64)
        cb = cb.to(tl.int64)
    n = tn * BN + tl.arange(0, BN)[:, None, None]
    c = cb * BC + tl.arange(0, BC)[None, :, None]
    return n, c, ts


@triton.jit
def _coords(tn, ts, cb, N, C, S, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
            INT64: tl.constexpr):
    """Index tensors ``(n, c, s)`` of an unshifted tile and its mask."""
    n, c, ts = _tile_pos(tn, ts, cb, BN, BC, INT64)
    s = ts * BS + tl.arange(0, BS)[None, None, :]
    return n, c, s, (n < N) & (c < C) & (s < S)


@triton.jit
def _noise_coords(k0, k1, tn, ts, cb, N, C, S, base, BN: tl.constexpr, BC: tl.constexpr,
                  BS: tl.constexpr, INT64: tl.constexpr, GD: tl.constexpr,
                  ALIGNED: tl.constexpr):
    """``(n, c, s, mask, eps)`` of noise tile ``(tn, ts)``: element coordinates laid on the
    stream's groups (see the module docstring) and the float32 noise of every element."""
    n, c, ts = _tile_pos(tn, ts, cb, BN, BC, INT64)
    if GD == 2:
        row = (n * C + c) * S + base  # logical index of (n, c, 0)
        if ALIGNED:
            lead = row
            s = ts * BS + tl.arange(0, BS)[None, None, :]
            mask = (n < N) & (c < C) & (s < S)
        else:
            r = row & 3
            lead = row - r
            s = ts * BS - r + tl.arange(0, BS)[None, None, :]
            mask = (n < N) & (c < C) & (s >= 0) & (s < S)
        g = (lead >> 2) + ts * (BS // 4) + tl.arange(0, BS // 4)[None, None, :]
        n0, n1, n2, n3 = normals4(k0, k1, g, INT64)
        eps = interleave4(n0, n1, n2, n3, [BN, BC, BS])
    else:
        s = ts * BS + tl.arange(0, BS)[None, None, :]  # S == 1: only s == 0 is in range
        mask = (n < N) & (c < C) & (s < S)
        if ALIGNED:
            q = cb * (BC // 4) + tl.arange(0, BC // 4)[None, :, None]
            g = ((n * C + base) >> 2) + q
            n0, n1, n2, n3 = normals4(k0, k1, g, INT64)
            eps = interleave4(n0, n1, n2, n3, [BN, BC, BS])
        else:
            i = n * C + c + base
            n0, n1, n2, n3 = normals4(k0, k1, i >> 2, INT64)
            eps = component(n0, n1, n2, n3, i & 3)
    return n, c, s, mask, eps


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
def _inject_tile(x_ptr, y_ptr, k0, k1, scale, tn, ts, cb, N, C, S, sxn, sxc, sxs, syn, syc,
                 sys, base, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                 UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, INT64: tl.constexpr,
                 ACC: tl.constexpr, GD: tl.constexpr, ALIGNED: tl.constexpr):
    """``y = x + scale_c * eps`` on one noise tile; ``y = x`` (bitwise) where ``scale_c == 0``."""
    n, c, s, mask, eps = _noise_coords(k0, k1, tn, ts, cb, N, C, S, base, BN, BC, BS, INT64,
                                       GD, ALIGNED)
    x = tl.load(x_ptr + _addr(n, c, s, sxn, sxc, sxs, UNIT_X), mask=mask, other=0.0)
    sc = scale[None, :, None]
    y = (x.to(ACC) + sc * eps.to(ACC)).to(x.dtype)
    y = tl.where(sc == 0, x, y)
    tl.store(y_ptr + _addr(n, c, s, syn, syc, sys, UNIT_Y), y, mask=mask)


# -- forward ----------------------------------------------------------------------------------


@triton.jit
def stats_kernel(x_ptr, y_ptr, alpha_ptr, seed_ptr, mean_ptr, var_ptr, part_ptr,
                 N, C, S, sxn, sxc, sxs, syn, syc, sys, eps, eps_lo, base, TSU, R, TPP, K,
                 TS, RN, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                 UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, INT64: tl.constexpr,
                 ACC: tl.constexpr, FUSED: tl.constexpr, GD: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """Per-channel (count, mean, M2) over this program's tiles (Chan's merge, tile by tile).

    Each tile is reduced exactly (its own mean, then the squared deviations from it, while it
    is in registers) and merged into the running triple, so there is no E[x^2] - E[x]^2
    cancellation.  With ``FUSED`` the program covers whole channels: it finishes the
    statistics and injects the noise in a second sweep (one launch for the whole forward).
    Otherwise it writes the partial triple to ``part[0..2, k, c]`` for :func:`combine_stats`.
    """
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    k = pid // CB
    t0 = k * TPP
    t1 = tl.minimum(t0 + TPP, R)
    cnt = tl.zeros([BC], ACC)
    mean = tl.zeros([BC], ACC)
    m2 = tl.zeros([BC], ACC)
    tn, ts = _split(t0, TSU)
    for _ in range(t0, t1):
        n, c, s, mask = _coords(tn, ts, cb, N, C, S, BN, BC, BS, INT64)
        x = tl.load(x_ptr + _addr(n, c, s, sxn, sxc, sxs, UNIT_X), mask=mask, other=0.0)
        x = x.to(ACC)
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
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    if FUSED:
        var = m2 / cnt
        tl.store(mean_ptr + cv, mean, mask=cmask)
        tl.store(var_ptr + cv, var, mask=cmask)
        alpha = tl.load(alpha_ptr + cv, mask=cmask, other=0.0).to(ACC)
        scale = alpha * _sqrt(var + eps + eps_lo, ACC)
        k0, k1 = seed_key(seed_ptr)
        tn = 0
        ts = 0
        for _ in range(0, RN):
            _inject_tile(x_ptr, y_ptr, k0, k1, scale, tn, ts, cb, N, C, S, sxn, sxc, sxs, syn,
                         syc, sys, base, BN, BC, BS, UNIT_X, UNIT_Y, INT64, ACC, GD, ALIGNED)
            tn, ts = _advance(tn, ts, 0, 1, TS)
    else:
        off = k * C + cv
        if INT64:
            off = k.to(tl.int64) * C + cv
        plane = K * C
        tl.store(part_ptr + off, cnt, mask=cmask)
        tl.store(part_ptr + plane + off, mean, mask=cmask)
        tl.store(part_ptr + 2 * plane + off, m2, mask=cmask)


@triton.jit
def combine_stats_kernel(part_ptr, alpha_ptr, mean_ptr, var_ptr, scale_ptr, C, K, eps, eps_lo,
                         BC: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr):
    """Merge the ``K`` partial triples of each channel, in chunk order.

    mean = sum_k n_k mean_k / n;  M2 = sum_k (M2_k + n_k (mean_k - mean)^2): every term is a
    non-negative deviation, so the merge is as stable as the partials themselves.
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
        n = tl.load(part_ptr + off, mask=m, other=0.0)
        mu = tl.load(part_ptr + plane + off, mask=m, other=0.0)
        total += tl.sum(n, axis=0)
        weighted += tl.sum(n * mu, axis=0)
    total = tl.maximum(total, 1.0)  # only the padding channels beyond C have no elements
    mean = weighted / total
    m2 = tl.zeros([BC], ACC)
    for k0 in range(0, K, BK):
        m = (k0 + kk < K) & (c < C)
        off = (k0 + kk) * C + c
        n = tl.load(part_ptr + off, mask=m, other=0.0)
        mu = tl.load(part_ptr + plane + off, mask=m, other=0.0)
        q = tl.load(part_ptr + 2 * plane + off, mask=m, other=0.0)
        d = mu - mean[None, :]
        m2 += tl.sum(tl.where(m, q + n * d * d, 0.0), axis=0)
    var = m2 / total
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    alpha = tl.load(alpha_ptr + cv, mask=cmask, other=0.0).to(ACC)
    tl.store(mean_ptr + cv, mean, mask=cmask)
    tl.store(var_ptr + cv, var, mask=cmask)
    tl.store(scale_ptr + cv, alpha * _sqrt(var + eps + eps_lo, ACC), mask=cmask)


@triton.jit
def inject_kernel(x_ptr, y_ptr, scale_ptr, seed_ptr, N, C, S, sxn, sxc, sxs, syn, syc, sys, base,
                  TS, RN, P, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                  UNIT_X: tl.constexpr, UNIT_Y: tl.constexpr, INT64: tl.constexpr,
                  ACC: tl.constexpr, GD: tl.constexpr, ALIGNED: tl.constexpr):
    """``y = x + scale_c * eps`` (the eval path, and the forward after a split reduction).

    ``P`` programs per channel block; program ``p`` injects noise tiles ``p, p + P, ...``, so
    the seed, the scales and the index setup are paid once per program, not per tile."""
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    t0 = pid // CB
    cv = cb * BC + tl.arange(0, BC)
    scale = tl.load(scale_ptr + cv, mask=cv < C, other=0.0).to(ACC)
    k0, k1 = seed_key(seed_ptr)
    tn, ts = _split(t0, TS)
    dn, ds = _split(P, TS)
    for _ in range(t0, RN, P):
        _inject_tile(x_ptr, y_ptr, k0, k1, scale, tn, ts, cb, N, C, S, sxn, sxc, sxs, syn, syc,
                     sys, base, BN, BC, BS, UNIT_X, UNIT_Y, INT64, ACC, GD, ALIGNED)
        tn, ts = _advance(tn, ts, dn, ds, TS)


# -- backward (the math is in noise_dot_kernel's docstring) ----------------------------------


@triton.jit
def _dx_tile(dy_ptr, x_ptr, dx_ptr, coef, mean, tn, ts, cb, N, C, S, sdn, sdc, sds, sxn, sxc,
             sxs, son, soc, sos, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
             UNIT_D: tl.constexpr, UNIT_X: tl.constexpr, UNIT_O: tl.constexpr,
             INT64: tl.constexpr, ACC: tl.constexpr):
    n, c, s, mask = _coords(tn, ts, cb, N, C, S, BN, BC, BS, INT64)
    dy = tl.load(dy_ptr + _addr(n, c, s, sdn, sdc, sds, UNIT_D), mask=mask, other=0.0)
    x = tl.load(x_ptr + _addr(n, c, s, sxn, sxc, sxs, UNIT_X), mask=mask, other=0.0).to(ACC)
    k = coef[None, :, None]
    dx = (dy.to(ACC) + k * (x - mean[None, :, None])).to(dy.dtype)
    dx = tl.where(k == 0, dy, dx)
    tl.store(dx_ptr + _addr(n, c, s, son, soc, sos, UNIT_O), dx, mask=mask)


@triton.jit
def noise_dot_kernel(dy_ptr, x_ptr, dx_ptr, seed_ptr, alpha_ptr, mean_ptr, sigma_ptr, g_ptr,
                     part_ptr, N, C, S, sdn, sdc, sds, sxn, sxc, sxs, son, soc, sos, base, M,
                     TS, RN, TPP, TSU, R, BN: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                     UNIT_D: tl.constexpr, UNIT_X: tl.constexpr, UNIT_O: tl.constexpr,
                     INT64: tl.constexpr, ACC: tl.constexpr, MODE: tl.constexpr,
                     GD: tl.constexpr, ALIGNED: tl.constexpr):
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

    MODE 0: write the partial sum to ``part[k, c]`` (split reduction, see combine_g_kernel).
    MODE 1: the program covers whole channels; write ``G`` to ``g``.
    MODE 2: as 1, then sweep again for ``dx = dy + coef_c * (x - mean_c)`` (fused backward).
    """
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    k = pid // CB
    t0 = k * TPP
    t1 = tl.minimum(t0 + TPP, RN)
    k0, k1 = seed_key(seed_ptr)
    acc = tl.zeros([BC], ACC)
    tn, ts = _split(t0, TS)
    for _ in range(t0, t1):
        n, c, s, mask, eps = _noise_coords(k0, k1, tn, ts, cb, N, C, S, base, BN, BC, BS,
                                           INT64, GD, ALIGNED)
        dy = tl.load(dy_ptr + _addr(n, c, s, sdn, sdc, sds, UNIT_D), mask=mask, other=0.0)
        # Masked lanes load dy = 0 and the noise is always finite, so they add nothing.
        acc += _sum_nc(dy.to(ACC) * eps.to(ACC))
        tn, ts = _advance(tn, ts, 0, 1, TS)
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    if MODE == 0:
        off = k * C + cv
        if INT64:
            off = k.to(tl.int64) * C + cv
        tl.store(part_ptr + off, acc, mask=cmask)
    else:
        tl.store(g_ptr + cv, acc, mask=cmask)
        if MODE == 2:
            alpha = tl.load(alpha_ptr + cv, mask=cmask, other=0.0).to(ACC)
            sigma = tl.load(sigma_ptr + cv, mask=cmask, other=1.0).to(ACC)
            mean = tl.load(mean_ptr + cv, mask=cmask, other=0.0).to(ACC)
            coef = alpha * acc / (M * sigma)
            tn = 0
            ts = 0
            for _ in range(0, R):
                _dx_tile(dy_ptr, x_ptr, dx_ptr, coef, mean, tn, ts, cb, N, C, S, sdn, sdc, sds,
                         sxn, sxc, sxs, son, soc, sos, BN, BC, BS, UNIT_D, UNIT_X, UNIT_O, INT64,
                         ACC)
                tn, ts = _advance(tn, ts, 0, 1, TSU)


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
              INT64: tl.constexpr, ACC: tl.constexpr):
    """``dx = dy + coef_c * (x - mean_c)``; program ``p`` of a channel block takes tiles
    ``p, p + P, ...`` (as in :func:`inject_kernel`)."""
    pid = tl.program_id(0)
    CB = tl.cdiv(C, BC)
    cb = pid % CB
    t0 = pid // CB
    cv = cb * BC + tl.arange(0, BC)
    cmask = cv < C
    coef = tl.load(coef_ptr + cv, mask=cmask, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + cv, mask=cmask, other=0.0).to(ACC)
    tn, ts = _split(t0, TS)
    dn, ds = _split(P, TS)
    for _ in range(t0, R, P):
        _dx_tile(dy_ptr, x_ptr, dx_ptr, coef, mean, tn, ts, cb, N, C, S, sdn, sdc, sds, sxn,
                 sxc, sxs, son, soc, sos, BN, BC, BS, UNIT_D, UNIT_X, UNIT_O, INT64, ACC)
        tn, ts = _advance(tn, ts, dn, ds, TS)


# -- the raw stream, for tests ----------------------------------------------------------------


@triton.jit
def philox_kernel(group_ptr, seed_ptr, words_ptr, rand_ptr, randn_ptr, n, BLOCK: tl.constexpr):
    """Per group index (int64): the four Philox words, uniforms and normals, as the fused
    kernels compute them (``tl.randint4x`` / ``tl.rand4x`` / ``tl.randn4x``)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    g = tl.load(group_ptr + i, mask=m, other=0)
    k0, k1 = seed_key(seed_ptr)
    w0, w1, w2, w3 = philox_words(k0, k1, g, True)
    n0, n1, n2, n3 = normals4(k0, k1, g, True)
    out = 4 * i
    tl.store(words_ptr + out, w0.to(tl.int32, bitcast=True), mask=m)
    tl.store(words_ptr + out + 1, w1.to(tl.int32, bitcast=True), mask=m)
    tl.store(words_ptr + out + 2, w2.to(tl.int32, bitcast=True), mask=m)
    tl.store(words_ptr + out + 3, w3.to(tl.int32, bitcast=True), mask=m)
    tl.store(rand_ptr + out, uniform(w0), mask=m)
    tl.store(rand_ptr + out + 1, uniform(w1), mask=m)
    tl.store(rand_ptr + out + 2, uniform(w2), mask=m)
    tl.store(rand_ptr + out + 3, uniform(w3), mask=m)
    tl.store(randn_ptr + out, n0, mask=m)
    tl.store(randn_ptr + out + 1, n1, mask=m)
    tl.store(randn_ptr + out + 2, n2, mask=m)
    tl.store(randn_ptr + out + 3, n3, mask=m)
