"""Tables and polynomial coefficients of the AVX-512 and AVX2 Box-Muller in csrc/cpu/philox.h.

    python tools/cpu_noise_tables.py

Prints the C++ constants (float32 values as hex-float literals) and the worst error of each
approximation evaluated in float64 with float32 coefficients.  The fits are minimax, found by
Lawson's iteration (iteratively reweighted least squares) on a dense grid.
"""

from __future__ import annotations

import math

import numpy as np


def f32(x):
    return np.float32(x)


def hexf(x) -> str:
    h = float(np.float32(x)).hex()  # e.g. 0x1.f81f820000000p-1
    mant, exp = h.split("p")
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    return f"{mant}p{exp}f"


def minimax(func, basis, lo, hi, weight=None, n=20000, iters=300):
    """Coefficients c minimising max |weight * (sum c_i basis_i - func)| on [lo, hi]."""
    x = np.linspace(lo, hi, n)
    A = np.stack([b(x) for b in basis], axis=1)
    y = func(x)
    w = np.ones_like(x) if weight is None else weight(x)
    A, y = A * w[:, None], y * w
    lw = np.ones_like(x) / n
    for _ in range(iters):
        sw = np.sqrt(lw)
        c, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
        err = np.abs(A @ c - y)
        lw = lw * err
        lw = np.maximum(lw / lw.sum(), 1e-300)
    return c


def log_part():
    # x = M * 2^E, M in [1, 2); j = the top 5 bits of M's fraction; m = M (j < 16) or M / 2.
    K = -2 * math.log(2)
    rcp, T = [], []
    for j in range(32):
        if j == 31:
            r = 1.0  # m in [63/64, 1): f = m - 1 exactly, so -2 ln x keeps its relative accuracy
        elif j < 16:
            r = 1 / (1 + (j + 0.5) / 32)
        else:
            r = 1 / (0.5 + (j + 0.5) / 64)
        r = float(f32(r))
        rcp.append(r)
        T.append(float(f32(2 * math.log(r) + (K if j >= 16 else 0.0))))
    assert T[31] == float(f32(K))
    # f range
    fmax = 0.0
    for j in range(32):
        lo, hi = ((1 + j / 32, 1 + (j + 1) / 32) if j < 16 else (0.5 + j / 64, 0.5 + (j + 1) / 64))
        fmax = max(fmax, abs(lo * rcp[j] - 1), abs(hi * rcp[j] - 1))
    b = fmax * 1.001
    # P(f) = f * (a0 + a1 f + a2 f^2) ~ -2 ln(1 + f), relative error.
    c = minimax(lambda f: -2 * np.log1p(f) / f, [lambda f: f**0, lambda f: f, lambda f: f**2],
                -b, b)
    c = [float(f32(v)) for v in c]
    f = np.linspace(-b, b, 200000)
    f = f[f != 0]
    p = f * (c[0] + f * (c[1] + f * c[2]))
    rel = np.max(np.abs(p / (-2 * np.log1p(f)) - 1))
    return rcp, T, c, fmax, rel


def sincos_part():
    step = float(f32(0.2))
    ang = [k * step for k in range(32)]
    S = [float(f32(math.sin(a))) for a in ang]
    C = [float(f32(math.cos(a))) for a in ang]
    tmax = float(f32(f32(6.2831855) * f32(1 - 2**-24)))
    assert round(tmax / step) <= 31
    b = step / 2 * 1.002
    s = minimax(lambda r: np.sin(r) / r - 1, [lambda r: r**2], -b, b)  # relative
    s3 = float(f32(s[0]))
    cc = minimax(lambda r: np.cos(r) - 1, [lambda r: r**2, lambda r: r**4], -b, b)
    c2, c4 = float(f32(cc[0])), float(f32(cc[1]))
    r = np.linspace(-b, b, 200001)
    es = np.max(np.abs(r + s3 * r**3 - np.sin(r)))
    ec = np.max(np.abs(1 + c2 * r**2 + c4 * r**4 - np.cos(r)))
    return step, S, C, s3, c2, c4, es, ec, b


def sincos8_part():
    """AVX2: 8 entries (one vpermps), step 0.84f: k = round(t / step) <= 7, |r| <= 0.42."""
    step = float(f32(0.84))
    S = [float(f32(math.sin(k * step))) for k in range(8)]
    C = [float(f32(math.cos(k * step))) for k in range(8)]
    tmax = float(f32(f32(6.2831855) * f32(1 - 2**-24)))
    assert round(tmax / step) <= 7 and tmax / step < 7.49
    b = step / 2 * 1.002
    s = minimax(lambda r: np.sin(r) / r - 1, [lambda r: r**2, lambda r: r**4], -b, b)
    s3, s5 = float(f32(s[0])), float(f32(s[1]))
    cc = minimax(lambda r: np.cos(r) - 1, [lambda r: r**2, lambda r: r**4, lambda r: r**6], -b, b)
    c2, c4, c6 = (float(f32(v)) for v in cc)
    r = np.linspace(-b, b, 200000)
    es = np.max(np.abs(r + s3 * r**3 + s5 * r**5 - np.sin(r)))
    ec = np.max(np.abs(1 + c2 * r**2 + c4 * r**4 + c6 * r**6 - np.cos(r)))
    return step, S, C, (s3, s5), (c2, c4, c6), es, ec, b


def table(name, vals):
    n = len(vals)
    rows = [", ".join(hexf(v) for v in vals[i:i + 4]) for i in range(0, n, 4)]
    return (f"alignas({min(64, 4 * n)}) static constexpr float {name}[{n}] = {{\n    "
            + ",\n    ".join(rows) + "};")


def main():
    rcp, T, c, fmax, rel = log_part()
    step, S, C, s3, c2, c4, es, ec, b = sincos_part()
    print(f"// log: |f| <= {fmax:.5f}, relative error of the polynomial {rel:.3g}")
    print(table("kLogRcp", rcp))
    print(table("kLogT", T))
    print(f"constexpr float kLogA0 = {hexf(c[0])}, kLogA1 = {hexf(c[1])}, kLogA2 = {hexf(c[2])};")
    print(f"// sincos: step {step!r}, |r| <= {b:.5f}, sin error {es:.3g}, cos error {ec:.3g}")
    print(table("kSinTab", S))
    print(table("kCosTab", C))
    print(f"constexpr float kSinS3 = {hexf(s3)}, kCosC2 = {hexf(c2)}, kCosC4 = {hexf(c4)};")
    step, S, C, s, c, es, ec, b = sincos8_part()
    print(f"// AVX2 sincos: step {step!r}, |r| <= {b:.5f}, sin error {es:.3g}, cos error {ec:.3g}")
    print(table("kSinTab8", S))
    print(table("kCosTab8", C))
    print(f"constexpr float kSin8S3 = {hexf(s[0])}, kSin8S5 = {hexf(s[1])};")
    print(f"constexpr float kCos8C2 = {hexf(c[0])}, kCos8C4 = {hexf(c[1])}, "
          f"kCos8C6 = {hexf(c[2])};")


if __name__ == "__main__":
    main()
