"""The noise stream (SPEC section 3, stream 2) as Triton device functions.

Group ``j`` gives the four normals of elements ``4j .. 4j+3``: Philox4x32-10 on the counter
``(j_lo, j_hi, 0, 0)`` with the key ``(seed_lo, seed_hi)``, the words turned into uniforms
exactly as ``tl.rand4x`` does, then two Box-Muller pairs.  The Philox words and the uniforms are
bit-exact; the transcendental functions are evaluated with short polynomials instead of
libdevice's ``logf``/``sinf``/``cosf`` (which carry range reduction and slow paths for
arguments the stream never produces):

* ``-2 ln(u)`` for ``u`` in ``[1e-7, 1)``: ``u = 2**e * m`` with ``m`` in ``[2/3, 4/3)`` (the
  reduction of libdevice's ``logf``), then ``-2 log1p(m - 1)`` as ``f * R(f)`` with a degree-7
  minimax polynomial: relative error about 3e-7, so ``r = sqrt(-2 ln u)`` is within 2e-7
  relative even where ``u`` is next to 1 (``ln u`` tiny), which an approximate hardware
  ``log2`` is not.
* ``cos(2 pi v)``, ``sin(2 pi v)`` for ``v`` in ``[0, 1)``, reduced exactly in ``v`` (not in
  radians): ``2v = q + f`` with ``q`` an integer and ``|f| <= 1/2``, degree-8/9 minimax
  polynomials of ``cos(pi f)`` and ``sin(pi f)`` (absolute error < 5e-8), and the sign
  ``(-1)**q`` moved onto ``r``.  ``2v`` comes from the word's integer in one rounding, an angle
  within 2 pi * 2**-25 of the reference's; the reference itself rounds ``t = 6.2831855 * v`` to
  float32 (up to 2.4e-7 rad).
* ``sqrt`` is the hardware approximation (``sqrt.approx.f32``, relative error ~2**-23).

Over 1e8 normals the worst deviation from Box-Muller evaluated in float64 on the same uniforms
is 1.04e-6, and from the reference stream 0.2 of SPEC's tolerance (benchmarks/RESULTS.md).
Everything here is plain float32 arithmetic, so the interpreter runs the same polynomials the
GPU does and the CPU tests measure their error (tests/test_triton_stream.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

_ROUND_A = tl.constexpr(0xD2511F53)
_ROUND_B = tl.constexpr(0xCD9E8D57)
_KEY_A = tl.constexpr(0x9E3779B9)
_KEY_B = tl.constexpr(0xBB67AE85)
# Largest s with (2**31 - 1) * s < 1 in float32 (tl.rand's scale).
_UNIFORM_SCALE = tl.constexpr(4.6566127342e-10)


@triton.jit
def seed_key(seed_ptr):
    """The Philox key ``(seed_lo, seed_hi)`` of the int64 seed in device memory."""
    seed = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    return seed.to(tl.uint32), (seed >> 32).to(tl.uint32)


@triton.jit
def philox_words(k0, k1, g, INT64: tl.constexpr):
    """Philox4x32-10 words of group indices ``g`` (``tl.randint4x(seed, g)``).

    Each round's two 32x32-bit products are taken as one 64-bit product (one wide multiply
    gives both halves).  Without ``INT64`` the counter's high word is 0 and the compiler folds
    the first round's zero terms away.
    """
    if INT64:
        c0 = g.to(tl.uint32)
        c1 = (g >> 32).to(tl.uint32)
    else:
        c0 = g.to(tl.uint32, bitcast=True)
        c1 = c0 * 0
    c2 = c1 * 0
    c3 = c1 * 0
    for _ in tl.static_range(10):
        pa = c0.to(tl.uint64) * _ROUND_A
        pb = c2.to(tl.uint64) * _ROUND_B
        c0 = (pb >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (pa >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = pb.to(tl.uint32)
        c3 = pa.to(tl.uint32)
        k0 = tl.add(k0, _KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, _KEY_B, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _unsigned_float(w):
    v = w.to(tl.int32, bitcast=True)
    return (v ^ (v >> 31)).to(tl.float32)  # ~v where v < 0


@triton.jit
def uniform(w):
    """``tl.rand``'s float32 in ``[0, 1)`` from a 32-bit word (bit-exact)."""
    return _unsigned_float(w) * _UNIFORM_SCALE


@triton.jit
def _neg2log(u):
    """``-2 ln(u)`` for float32 ``u`` in ``[1e-7, 1)``."""
    bits = u.to(tl.int32, bitcast=True)
    e = (bits - 0x3F2AAAAB) & -8388608  # exponent bits, so that m = u / 2**e is in [2/3, 4/3)
    f = (bits - e).to(tl.float32, bitcast=True) - 1.0
    # R(f) = -2 log1p(f) / f, minimax on [-1/3, 1/3].
    p = -0.30354407
    p = p * f + 0.33929765
    p = p * f + -0.32924914
    p = p * f + 0.39645007
    p = p * f + -0.50009328
    p = p * f + 0.66673130
    p = p * f + -1.0
    p = p * f + 2.0
    # e holds the exponent shifted left by 23: e * (2**-23 * float32(-2 ln 2)) is exact.
    return f * -p + e.to(tl.float32) * -1.6525916635146132e-07


@triton.jit
def _cos_sin_2pi(w):
    """``(cos(2 pi v), sin(2 pi v))`` of the uniform ``v`` of word ``w``, up to a common sign:
    returns ``(c, s, sign)`` with ``sign`` the sign bit (int32) to apply to both.

    Reduced exactly in ``v`` (not in radians): ``2v = q + f`` with ``q`` an integer and
    ``|f| <= 1/2``, then ``cos(2 pi v) = (-1)**q cos(pi f)`` and likewise for ``sin``.  ``2v``
    is formed from the word's integer in one rounding instead of through the rounded
    uniform, which moves the angle by at most 2 pi * 2**-25 (1.9e-7 rad)."""
    v = _unsigned_float(w)
    t = v * (2.0 * _UNIFORM_SCALE) + 12582912.0  # + 1.5 * 2**23: q in the low bits
    f = v * (2.0 * _UNIFORM_SCALE) - (t - 12582912.0)  # one fused multiply-add on the GPU
    z = f * f
    s = 0.077220127
    s = s * z + -0.59804517
    s = s * z + 2.5500314
    s = s * z + -5.1677070
    s = s * z + 3.1415925
    c = 0.21969679
    c = c * z + -1.3318802
    c = c * z + 4.0584121
    c = c * z + -4.9347930
    c = c * z + 0.99999994
    return c, s * f, t.to(tl.int32, bitcast=True) << 31


@triton.jit
def _box_muller(u1, w2):
    """Box-Muller on the uniform ``u1`` and the word ``w2`` of the angle, in polar form:
    ``(r, c, s)`` with normals ``r * c`` and ``r * s``."""
    r = tl.sqrt(_neg2log(tl.maximum(u1, 1.0e-7)))
    c, s, sign = _cos_sin_2pi(w2)
    return (r.to(tl.int32, bitcast=True) ^ sign).to(tl.float32, bitcast=True), c, s


@triton.jit
def polar4(k0, k1, g, INT64: tl.constexpr):
    """The normals of groups ``g`` as ``(ra, ca, sa, rb, cb, sb)``: ``tl.randn4x(seed, g)`` is
    ``(ra * ca, ra * sa, rb * cb, rb * sb)``.  A caller that scales the noise multiplies the
    two radii instead of the four normals."""
    w0, w1, w2, w3 = philox_words(k0, k1, g, INT64)
    ra, ca, sa = _box_muller(uniform(w0), w1)
    rb, cb, sb = _box_muller(uniform(w2), w3)
    return ra, ca, sa, rb, cb, sb


@triton.jit
def interleave4(n0, n1, n2, n3, SHAPE: tl.constexpr):
    """The four ``[..., B/4, 1...]`` component tensors as one ``SHAPE`` tensor whose group axis
    runs ``n0, n1, n2, n3`` per group: element ``4q + k`` is component ``k`` of group ``q``.
    In registers this is free: each thread holds a group's four values side by side, which is
    the layout of a 4-wide vector load along that axis."""
    # join(a, b) stacks along a new last axis, so the outer join's pair index is the fastest.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), SHAPE)


@triton.jit
def component(n0, n1, n2, n3, k):
    """Component ``k`` (0..3, per element) of the four normals (the per-element fallback)."""
    return tl.where(k < 2, tl.where(k == 0, n0, n1), tl.where(k == 2, n2, n3))
