"""Sources and flags of the C++/CUDA extensions, shared by ``setup.py`` (ahead-of-time build)
and :func:`load` (just-in-time build at first use).

This module imports nothing heavy at the top so that ``setup.py`` can load it by path.

Environment variables:
    ANOISE_EXT=auto|aot|jit  which build to use at import (default auto: the prebuilt
                             ``anoise._C_cpu`` / ``anoise._C_cuda`` if present and not older
                             than its sources in csrc/, else JIT).
    ANOISE_CPU_NATIVE=1      add ``-march=native`` (a build for this machine only).  Without it
                             the build is portable: the hot kernels are compiled for baseline
                             x86-64, AVX2 and AVX-512, and the widest one the CPU runs is chosen
                             at run time (``ANOISE_CPU_ISA`` forces one).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

# A source checkout has csrc/ next to anoise/; an installed package carries it as anoise/csrc.
_CHECKOUT = Path(__file__).resolve().parent.parent
ROOT = _CHECKOUT if (_CHECKOUT / "csrc").is_dir() else Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

CPU_SOURCES = [
    "csrc/cpu/adaptive_noise.cpp",
    "csrc/cpu/kernels_baseline.cpp",
    "csrc/cpu/kernels_avx2.cpp",
    "csrc/cpu/kernels_avx512.cpp",
]
CUDA_SOURCES = [
    "csrc/cuda/adaptive_noise.cu",
    "csrc/cuda/adaptive_noise_binding.cpp",
]


def cpu_cflags() -> list[str]:
    # -fno-math-errno lets sqrt vectorise; it changes no result.
    flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("ANOISE_CPU_NATIVE") == "1":
        flags.append("-march=native")
    return flags


CPU_LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3"]
# No fast-math: __cosf is inaccurate past pi, and the noise must match the stream to 1e-5.
NVCC_FLAGS = ["-O3", "-lineinfo"]


def load(kind: str):
    """The compiled extension module for ``kind`` ("cpu" or "cuda").

    Raises ImportError saying why when it is neither prebuilt nor buildable here.
    """
    mode = os.environ.get("ANOISE_EXT", "auto")
    if mode not in ("auto", "aot", "jit"):
        raise ImportError(f"ANOISE_EXT must be auto, aot or jit, got {mode!r}")
    aot_error = None
    if mode == "aot" or (mode == "auto" and not _prebuilt_is_stale(kind)):
        try:
            return importlib.import_module(f"anoise._C_{kind}")
        except ImportError as exc:
            aot_error = exc
            if mode == "aot":
                raise
    try:
        return _jit(kind)
    except Exception as exc:  # compiler missing, build error, ...
        detail = f"no prebuilt anoise._C_{kind} ({aot_error}); " if aot_error else ""
        raise ImportError(f"{detail}building it just in time failed: {exc}") from exc


def _prebuilt_is_stale(kind: str) -> bool:
    """In a source checkout, a prebuilt module older than its sources is not used (it would
    silently run old kernels after an edit); the sources are then built just in time."""
    spec = importlib.util.find_spec(f"anoise._C_{kind}")
    if spec is None or spec.origin is None or not (CSRC / kind).is_dir():
        return False
    built = Path(spec.origin).stat().st_mtime
    return any(f.stat().st_mtime > built for f in (CSRC / kind).iterdir())


def _jit(kind: str):
    from torch.utils import cpp_extension

    sources = CPU_SOURCES if kind == "cpu" else CUDA_SOURCES
    missing = [s for s in sources if not (ROOT / s).exists()]
    if missing:
        raise FileNotFoundError(f"sources not found (not a source checkout?): {missing}")
    kwargs = dict(
        name=f"anoise_C_{kind}",
        sources=[str(ROOT / s) for s in sources],
        extra_include_paths=[str(CSRC / kind)],
        verbose=os.environ.get("ANOISE_VERBOSE_BUILD") == "1",
    )
    if kind == "cpu":
        kwargs.update(extra_cflags=cpu_cflags(), extra_ldflags=CPU_LDFLAGS)
    else:
        kwargs.update(extra_cflags=CUDA_CFLAGS, extra_cuda_cflags=NVCC_FLAGS)
    return cpp_extension.load(**kwargs)
