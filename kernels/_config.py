"""Launch planning for the Triton kernels: tile shapes, reduction split, index width.

Every kernel works on 3-D tiles ``[BLOCK_N, BLOCK_C, BLOCK_S]`` of the ``(N, C, S)`` view.
The tile shape is searched per shape and layout: the dimension with the smallest stride gets a
contiguous run (so a warp reads consecutive addresses and loads vectorise) and the shape
minimises padding, so the same kernels serve contiguous NCHW, channels_last, ``(N, C)`` linear
outputs and transposed inputs without a copy.

The per-channel reductions (statistics, ``sum(dy * eps)``) are split over ``chunks`` programs
per channel block, each owning a fixed range of tiles; the partial results are merged in a
fixed order, so results are reproducible run to run.  The plan is a deterministic function of
the shapes, strides and device (heuristics, not autotuning): a timing-based choice would change
the reduction partition, hence the rounding, from one process to the next.

Everything here can be forced through :data:`config` (or :func:`configure` as a context
manager), which tests use to exercise the split path with tiny tiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import NamedTuple

import torch

_INT32_LIMIT = 2**31 - 1
# Per-program element counts are carried in the accumulation dtype; keep them exact in float32.
_MAX_ELEMENTS_PER_PROGRAM = 2**24


@dataclasses.dataclass
class KernelConfig:
    """Knobs of the Triton backend; ``None`` means "chosen by the heuristics".

    tile: elements per tile (a power of two).  Default 2048 on GPU; 16384 when interpreted on
        the CPU, where each program costs interpreter overhead, so fewer and larger is faster.
    block: forced ``(BLOCK_N, BLOCK_C, BLOCK_S)`` (powers of two), overriding ``tile``.
    chunks: forced number of programs per channel block in the reductions (1 = a single pass
        that computes the statistics and writes the output in the same kernel).
    programs_per_sm: how many reduction programs per SM the split aims for.
    min_tiles_per_program: a reduction program is not split below this many tiles.
    program_overhead: the fixed cost of a program, in elements, traded against padding when
        choosing the tile shape (default 128 on GPU; 2**16 interpreted, where programs are
        expensive).
    num_warps: forced warps per program (default: 16 tile elements per thread, 8 for
        float64 or 64-bit indices; 1..16 warps).
    force_int64: use 64-bit index arithmetic even when 32 bits would do.
    elementwise_programs: programs per channel block in the elementwise kernels (noise
        injection, ``dx``), each taking every ``P``-th tile; default: enough for
        ``elementwise_programs_per_sm`` per SM on a GPU, one per tile on the CPU.
    elementwise_programs_per_sm: see ``elementwise_programs``.
    """

    tile: int | None = None
    block: tuple[int, int, int] | None = None
    chunks: int | None = None
    programs_per_sm: int = 4
    min_tiles_per_program: int = 4
    program_overhead: int | None = None
    num_warps: int | None = None
    force_int64: bool = False
    elementwise_programs: int | None = None
    elementwise_programs_per_sm: int = 8


config = KernelConfig()


@contextlib.contextmanager
def configure(**overrides):
    """Temporarily override fields of :data:`config` (``with configure(chunks=3): ...``)."""
    saved = dataclasses.replace(config)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown kernel config field {key!r}")
        setattr(config, key, value)
    try:
        yield config
    finally:
        for field in dataclasses.fields(KernelConfig):
            setattr(config, field.name, getattr(saved, field.name))


class Plan(NamedTuple):
    block_n: int
    block_c: int
    block_s: int
    tiles_s: int  # tiles along S
    tiles: int  # reduction tiles per channel block (tiles along N times tiles along S)
    channel_blocks: int
    chunks: int  # programs per channel block in a reduction
    tiles_per_program: int
    int64: bool
    num_warps: int
    # Noise tiles (see kernels/_kernels.py): the axis the stream's groups run along (2: S,
    # 1: C when S == 1), whether every row starts on a group, and the tile counts, which
    # exceed the plain ones when rows are shifted onto groups.
    group_dim: int
    aligned: bool
    noise_tiles_s: int
    noise_tiles: int
    noise_tiles_per_program: int
    # Programs per channel block of the elementwise kernels (at most the tile count).
    elementwise_programs: int


_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    """Multiprocessor count, queried on first use (never at import: no GPU may be present)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _pow2s(lo: int, hi: int) -> list[int]:
    out, b = [], 1
    while b <= hi:
        if b >= lo:
            out.append(b)
        b *= 2
    return out


@functools.lru_cache(maxsize=1024)
def _blocks(shape, strides, tile: int, overhead: int, group_dim: int, shifted: bool
            ) -> tuple[int, int, int]:
    """The tile ``(BLOCK_N, BLOCK_C, BLOCK_S)`` of at most ``tile`` elements that minimises
    padded work plus a per-program ``overhead`` (in element-equivalents).

    The dim with the smallest stride gets at least 32 elements (or all of it), so a warp reads
    whole 32-byte sectors and loads vectorise.  The group axis (``group_dim``, or none when
    < 0) gets at least 4 (one group), and ``shifted`` rows span 3 more positions along it.
    Padding matters because masked lanes still pay for Philox: a 56x56 feature map in
    1024-wide tiles would waste 23% of the work, in 64-wide ones none.  Ties go to fewer
    channels per tile (more channel blocks for the reductions), then to a longer contiguous run.
    """
    extent = list(shape)
    if shifted:
        extent[group_dim] += 3
    dims = [d for d in range(3) if shape[d] > 1]
    # A stride-0 (expanded) dim reads one address: no reason to favour it.
    dims.sort(key=lambda d: (strides[d] if strides[d] != 0 else math.inf, d))
    inner = dims[0] if dims else -1

    def options(d):
        lo = 4 if d == group_dim else 1
        top = max(min(1 << max(extent[d] - 1, 0).bit_length(), tile), lo)
        if d == inner:
            lo = max(lo, min(32, top))
        return _pow2s(lo, top)

    best, best_key = (1, 1, 1), None
    for bn in options(0):
        for bc in options(1):
            for bs in options(2):
                elems = bn * bc * bs
                if elems > tile and best_key is not None:
                    continue
                tiles = -(-extent[0] // bn) * -(-extent[1] // bc) * -(-extent[2] // bs)
                cost = tiles * (elems + overhead)
                inner_block = (bn, bc, bs)[inner] if inner >= 0 else 1
                key = (elems > tile, cost, bc, -inner_block)
                if best_key is None or key < best_key:
                    best, best_key = (bn, bc, bs), key
    return best


def _max_offset(shape, strides) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(shape, strides, strict=True))


def group_layout(shape, index_base: int) -> tuple[int, bool]:
    """``(group_dim, aligned)`` of an ``(N, C, S)`` view (see kernels/_kernels.py)."""
    group_dim = 2 if shape[2] > 1 else 1
    return group_dim, shape[group_dim] % 4 == 0 and index_base % 4 == 0


def plan(x3: torch.Tensor, *others: torch.Tensor, index_base: int = 0) -> Plan:
    """The launch plan for kernels reading ``x3`` (tile order taken from its strides).

    ``others`` are the other tensors the kernel addresses (outputs, ``dy``, ...): they only
    matter for choosing 32- or 64-bit index arithmetic.
    """
    N, C, S = x3.shape
    on_gpu = x3.device.type == "cuda"
    group_dim, aligned = group_layout((N, C, S), index_base)
    shifted = group_dim == 2 and not aligned
    if config.block is not None:
        bn, bc, bs = config.block
        for b in (bn, bc, bs):
            if b < 1 or b & (b - 1):
                raise ValueError(f"kernel block sizes must be powers of two, got {config.block}")
        if S == 1:
            bs = 1  # the noise tiles of (N, C) inputs run along C
        if (group_dim == 2 or aligned) and (bn, bc, bs)[group_dim] < 4:
            raise ValueError(f"kernel block {config.block} must hold at least 4 elements (one "
                             f"noise group) along dim {group_dim}")
    else:
        tile = config.tile or (2048 if on_gpu else 1 << 14)
        if tile < 4 or tile & (tile - 1):
            raise ValueError(f"kernel tile must be a power of two >= 4, got {tile}")
        overhead = config.program_overhead or (128 if on_gpu else 1 << 16)
        gd = group_dim if group_dim == 2 or aligned else -1
        bn, bc, bs = _blocks((N, C, S), tuple(x3.stride()), tile, overhead, gd, shifted)
    tiles_s = -(-S // bs)
    tiles_n = -(-N // bn)
    tiles = tiles_n * tiles_s
    noise_tiles_s = -(-(S + 3) // bs) if shifted else tiles_s
    noise_tiles = tiles_n * noise_tiles_s
    channel_blocks = -(-C // bc)
    tile_elems = bn * bc * bs

    if config.chunks is not None:
        chunks = max(1, min(config.chunks, tiles))
    elif on_gpu:
        target = config.programs_per_sm * _sm_count(x3.device)
        chunks = 1 if channel_blocks >= target else -(-target // channel_blocks)
        chunks = max(1, min(chunks, tiles // max(config.min_tiles_per_program, 1)))
    else:
        chunks = 1
    tiles_per_program = -(-tiles // chunks)
    per_program_cap = max(1, _MAX_ELEMENTS_PER_PROGRAM // (bn * bs))
    tiles_per_program = min(tiles_per_program, per_program_cap)
    chunks = -(-tiles // tiles_per_program)
    noise_tiles_per_program = -(-noise_tiles // chunks)

    # Padding lanes compute indices beyond the tensor (never used): keep them in range too.
    largest = max(
        [(N + bn) * C * S + index_base + (bc + 3) * S + tile_elems]
        + [_max_offset(t.shape, t.stride()) + tile_elems for t in (x3, *others)]
    )
    int64 = config.force_int64 or largest > _INT32_LIMIT
    # 16 elements per thread: a thread's four groups amortise the loops' per-tile work and
    # give the Philox chains instruction-level parallelism.  8 with float64 or 64-bit indices
    # (two registers per value), and with shifted rows or per-element groups, whose scalar
    # accesses and masks hold a register per element.
    narrow = not aligned or int64 or x3.element_size() > 4
    per_thread = 8 if narrow else 16
    num_warps = config.num_warps or min(max(tile_elems // (32 * per_thread), 1), 16)
    if config.elementwise_programs is not None:
        programs = config.elementwise_programs
    elif on_gpu:
        programs = -(-config.elementwise_programs_per_sm * _sm_count(x3.device) // channel_blocks)
    else:
        programs = noise_tiles
    programs = max(1, min(programs, tiles))
    return Plan(bn, bc, bs, tiles_s, tiles, channel_blocks, chunks, tiles_per_program, int64,
                num_warps, group_dim, aligned, noise_tiles_s, noise_tiles,
                noise_tiles_per_program, programs)


def unit_dim(t: torch.Tensor) -> int:
    """Which of the 3 dims has stride 1 (and size > 1): lets the kernel know it statically."""
    for d in (2, 1, 0):
        if t.shape[d] > 1 and t.stride(d) == 1:
            return d
    return -1
