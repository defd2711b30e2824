"""The noise stream of anoise (stream 2, SPEC section 3) in plain PyTorch integer ops.

One Philox4x32-10 call gives four normals.  The element at logical row-major index ``i`` of a
call with 64-bit ``seed`` draws component ``i & 3`` of Triton's ``tl.randn4x(seed, i >> 2)``:

* group ``j = i >> 2``: Philox4x32-10 on the counter ``(j_lo, j_hi, 0, 0)`` with the key
  ``(seed_lo, seed_hi)`` gives the words ``w0..w3``;
* each word becomes a uniform (Triton's ``uint_to_uniform_float``);
* two Box-Muller pairs, ``(u0, u1)`` and ``(u2, u3)``, give
  ``[r01 cos t01, r01 sin t01, r23 cos t23, r23 sin t23]``.

This module is the readable definition; the fused kernels in ``kernels/`` and ``csrc/``
implement the same stream.  The 32-bit words are held in int64 tensors (torch has no full
uint32 arithmetic).
"""

from __future__ import annotations

import torch

PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
N_ROUNDS = 10
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 4.6566127342e-10  # largest s with (2**31 - 1) * s < 1 in float32
TWO_PI = 6.2831855  # float32(2 * pi)
MIN_U1 = 1e-7
SEED_MAX = 2**64 - 1
GROUP = 4  # normals per Philox call


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for ``a`` (int64 tensor, < 2**32) and ``b`` < 2**32.

    The product can exceed 2**63: int64 multiplication wraps modulo 2**64 (two's complement),
    which keeps all 64 bits of it, and the masks read the two words back out.
    """
    p = a * b
    return (p >> 32) & MASK32, p & MASK32


def philox_words(seed: int | torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four Philox4x32-10 output words (as int64 in ``[0, 2**32)``) for each group index.

    ``groups`` is an int64 tensor of non-negative counters; ``seed`` an int in ``[0, 2**64)``,
    or a one-element int64 tensor holding its 64 bits (two's complement), which a traced graph
    or a GPU uses without reading it back.  Matches Triton's ``tl.randint4x(seed, groups)``.
    """
    if isinstance(seed, torch.Tensor):
        seed = seed.reshape(())
        k0, k1 = seed & MASK32, (seed >> 32) & MASK32  # the mask undoes the sign extension
    elif 0 <= seed <= SEED_MAX:
        k0, k1 = seed & MASK32, seed >> 32
    else:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    groups = groups.to(torch.int64)
    c0 = groups & MASK32
    c1 = (groups >> 32) & MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mulhilo(c2, PHILOX_ROUND_B)
        hi_a, lo_a = _mulhilo(c0, PHILOX_ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def uniform_from_word(word: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit words: float32 in ``[0, 1)``."""
    v = torch.where(word >= 2**31, word - 2**32, word)  # reinterpret as int32
    v = torch.where(v < 0, -v - 1, v)  # ~v, in [0, 2**31)
    return v.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton's ``pair_uniform_to_normal``: two float32 normals from two uniforms."""
    r = torch.sqrt(-2.0 * torch.log(torch.clamp_min(u1, MIN_U1)))
    t = TWO_PI * u2
    return r * torch.cos(t), r * torch.sin(t)


def philox_uniform4(seed: int, groups: torch.Tensor) -> torch.Tensor:
    """``tl.rand4x(seed, groups)`` as a ``(len(groups), 4)`` float32 tensor."""
    return torch.stack([uniform_from_word(w) for w in philox_words(seed, groups)], dim=-1)


def philox_normal4(seed: int, groups: torch.Tensor) -> torch.Tensor:
    """``tl.randn4x(seed, groups)`` as a ``(len(groups), 4)`` float32 tensor."""
    u0, u1, u2, u3 = philox_uniform4(seed, groups).unbind(-1)
    n0, n1 = box_muller(u0, u1)
    n2, n3 = box_muller(u2, u3)
    return torch.stack([n0, n1, n2, n3], dim=-1)


def philox_normal(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """``eps`` of the stream at element indices ``indices``: ``randn4x(seed, i >> 2)[i & 3]``."""
    indices = indices.to(torch.int64)
    normals = philox_normal4(seed, indices.flatten() >> 2)
    component = (indices.flatten() & (GROUP - 1)).unsqueeze(-1)
    return normals.gather(-1, component).view(indices.shape)


def noise_like(x: torch.Tensor, seed: int, offset: int = 0, chunk: int = 1 << 22) -> torch.Tensor:
    """``eps`` for every element of ``x`` (float32, shape of ``x``, contiguous).

    Element ``x[idx]`` gets ``philox_normal(seed, offset + i)`` with ``i`` its row-major
    (contiguous) index, whatever ``x``'s memory layout.  ``offset`` places ``x`` inside a larger
    logical tensor (a rank's slice of a global batch).  Works in chunks to bound the int64
    temporaries.
    """
    n = x.numel()
    if n <= chunk:  # one piece, written nowhere in place: vmap can batch the seed
        idx = torch.arange(offset, offset + n, dtype=torch.int64, device=x.device)
        return philox_normal(seed, idx).view(x.shape)
    out = torch.empty(n, dtype=torch.float32, device=x.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = torch.arange(offset + start, offset + stop, dtype=torch.int64, device=x.device)
        out[start:stop] = philox_normal(seed, idx)
    return out.view(x.shape)
