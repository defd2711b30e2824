"""Shared definitions of the benchmark suite: shapes, byte accounting, the timed calls.

Bytes moved (the "effective GB/s" of every row) count the passes over memory that an ideal
fused implementation needs, in units of ``numel * itemsize``:

- forward (batch statistics): read x for the statistics, read x again, write y -> 3
- forward + backward: the forward's 3, then read dy for ``g_c = sum(dy * eps)``, read dy and x
  and write dx -> 3 + 4 = 7
- eval (running statistics): read x, write y -> 2
- eval forward + backward (running statistics, constant alpha: an attack's input gradient):
  the forward's 2, then read dy and write dx (dx = dy) -> 4

The noise itself is never counted: it is regenerated from the seed, not read.

Every row of an op group times the same step: the PyTorch idiom a user would write instead
(``var_mean`` + ``randn_like`` + add, eagerly and under ``torch.compile``), anoise's reference
and each fused backend.
"""

from __future__ import annotations

import ctypes
import math
import time

import torch

import anoise
import anoise.functional as AF
from anoise.backends import resolve

SHAPES = [(128, 16, 32, 32), (128, 64, 8, 8), (32, 64, 56, 56), (8, 256, 14, 14), (4096, 1024)]
# The roofline shape: large enough that a memory-bound kernel runs well past launch overhead
# and its data is several times a GPU's L2.  Too slow for the reference on a CPU.
ROOFLINE_SHAPE = (256, 64, 56, 56)
MODES = ("forward", "fwd+bwd", "eval", "eval fwd+bwd")
# eval fwd+bwd: the forward's 2, then dx = dy (read dy, write dx): what an attack step pays.
PASSES = {"forward": 3, "fwd+bwd": 7, "eval": 2, "eval fwd+bwd": 4}
ALPHA = 0.1
EPS = 1e-5
SEED = 0x5EED_1234_ABCD  # the noise benchmark's seed
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What a user would run instead of anoise, eagerly and under torch.compile: the speed-ups are
# against these.  "reference" is anoise's bit-exact noise stream in pure PyTorch (the
# definition of correctness, slow by construction); every other name is a fused backend.
# (benchmarks/report.py names the rows in its tables.)
BASELINES = ("torch-eager", "torch-compile")


def impl_names() -> list[str]:
    """Rows of the suite: the two baselines, the reference, then every fused backend."""
    return [*BASELINES, *anoise.backends()]


def backend_of(impl: str) -> str | None:
    """The anoise backend a row runs (None for the PyTorch idiom)."""
    return None if impl in BASELINES else impl


def unusable_reason(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot be benchmarked on ``device`` (None when it can)."""
    if impl == "triton" and device.type == "cpu":
        return "triton on CPU runs only in its interpreter, whose timings mean nothing"
    if impl in BASELINES:
        return None
    try:
        resolve(impl, device)
    except ValueError as exc:
        return str(exc)
    return None


def shape_label(shape) -> str:
    return "x".join(str(s) for s in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in text.lower().split("x"))


def bytes_moved(mode: str, numel: int, itemsize: int) -> int:
    return PASSES[mode] * numel * itemsize


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced_timer() -> float:
    """``time.perf_counter`` after the current CUDA stream drained.

    Used as the benchmark timer on GPU, so a round of many launches is timed from an idle
    device to an idle device without a synchronisation after every call.
    """
    torch.cuda.synchronize()
    return time.perf_counter()


# -- the timed calls ---------------------------------------------------------------------------


def idiom_batch(x: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """Batch-statistics noise as a user writes it in PyTorch (biased variance over every dim
    but the channels, gradients through the statistics)."""
    dims = (0, *range(2, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
    return x + alpha * torch.sqrt(var + eps) * torch.randn_like(x)


def idiom_scaled(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Running-statistics (eval) noise as a user writes it: a per-channel scale."""
    return x + scale * torch.randn_like(x)


_COMPILED: dict[str, object] = {}


def compiled_idiom(kind: str):
    """``torch.compile`` of the idiom (one wrapper per kind; each shape recompiles)."""
    if kind not in _COMPILED:
        # Every (shape, dtype, requires_grad) is a recompile of the same code object; the default
        # limit would silently fall back to eager after a few of them.
        torch._dynamo.config.recompile_limit = 256
        fn = idiom_batch if kind == "batch" else idiom_scaled
        _COMPILED[kind] = torch.compile(fn, dynamic=False)
    return _COMPILED[kind]


def make_call(impl: str, mode: str, x: torch.Tensor):
    """A zero-argument callable running one ``mode`` step of ``impl`` on ``x``."""
    C = x.shape[1]
    running_var = torch.rand(C, device=x.device, dtype=torch.float32) + 0.5
    if impl in BASELINES:
        batch, scaled = idiom_batch, idiom_scaled
        if impl == "torch-compile":
            batch, scaled = compiled_idiom("batch"), compiled_idiom("scaled")
        view = (1, C) + (1,) * (x.dim() - 2)
        # The module's buffer would be float32; a user's scale is cast once, not per call.
        scale = (ALPHA * torch.sqrt(running_var + EPS)).view(view).to(x.dtype)

        def forward(t):
            return batch(t, ALPHA, EPS)

        def evaluate(t):
            return scaled(t, scale)
    else:
        # A fresh seed per call, as the modules draw it.
        def forward(t):
            return AF.adaptive_noise(t, ALPHA, backend=impl)

        def evaluate(t):
            return AF.adaptive_noise(t, ALPHA, running_var=running_var, training=False,
                                     backend=impl)

    if mode == "forward":
        return lambda: forward(x)
    if mode == "eval":
        return lambda: evaluate(x)
    xg = x.detach().clone().requires_grad_(True)
    dy = torch.randn_like(x)
    step = evaluate if mode == "eval fwd+bwd" else forward

    def fwd_bwd():
        (dx,) = torch.autograd.grad(step(xg), xg, dy)
        return dx

    return fwd_bwd


def forward_of(call_mode: str, impl: str, x: torch.Tensor):
    """The forward alone of ``mode``, on an ``x`` that requires grad (to see what it saves)."""
    xg = x.detach().clone().requires_grad_(True)
    return make_call(impl, "eval" if call_mode.startswith("eval") else "forward", xg)


# -- memory ------------------------------------------------------------------------------------


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak CUDA memory allocated during ``fn`` above what was allocated before it."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)


def timed_once(fn, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def plan_rounds(t_call: float, device: torch.device, target_s: float) -> tuple[int, int]:
    """``(rounds, iterations)``: about ``target_s`` of timing, at least 3 rounds (2 for calls
    over a second: the reference on a CPU, whose spread is small next to its time).

    On GPU a round holds enough calls to last about 2 ms, so the host's synchronisation at
    the round's ends is a small share of it.
    """
    t_call = max(t_call, 1e-7)
    iterations = max(1, math.ceil(2e-3 / t_call)) if device.type == "cuda" else 1
    rounds = int(min(200, max(2 if t_call > 1.0 else 3, target_s / (t_call * iterations))))
    return rounds, iterations


def run_pedantic(benchmark, call, device: torch.device, target_s: float) -> None:
    """Warm ``call`` up, then time it with pytest-benchmark's pedantic mode."""
    t_call = timed_once(call, device)  # compiles, autotunes, fills caches
    if t_call < 0.5 or device.type == "cuda":
        t_call = timed_once(call, device)
    rounds, iterations = plan_rounds(t_call, device, target_s)
    if device.type == "cuda":
        if hasattr(benchmark, "_timer"):
            benchmark._timer = synced_timer
        else:  # a pytest-benchmark without that attribute: synchronise after every call
            iterations = 1

            def synced_call(fn=call):
                out = fn()
                torch.cuda.synchronize()
                return out

            call = synced_call
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=0)


def steady_allocator() -> bool:
    """Make glibc's allocator keep its heap (no trimming, blocks up to 32 MiB from the heap).

    With its defaults, glibc returns the top of the heap to the system whenever more than a
    few MB there are free, and the next step faults those pages back in.  Which model pays
    depends on the heap's history, not on the model: measured on ResNet-20 (2 threads),
    timed in one process the student took ~7,300 page faults and ~15 ms of system time a step
    and its teacher none; each alone in a process, both fault (teacher ~7,000, student
    ~1,200 to 7,000, varying with the run).  A steady heap times the models' own work.
    Returns whether the settings were taken (False where there is no glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_trim_threshold, 2**31 - 1)) and bool(
        mallopt(m_mmap_threshold, 32 * 2**20))
