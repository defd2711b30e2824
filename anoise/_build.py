"""Sources and flags of the C++/CUDA extensions, and their build, shared by ``setup.py``
(ahead-of-time build at install) and :func:`load` (just-in-time build at first use).

This module imports nothing heavy at the top so that ``setup.py`` can load it by path.

A build is never attempted twice for the same inputs: the key of a build hashes the sources
(every file in ``csrc/<kind>``), the flags, the torch and Python versions and the compiler's
identity.  ``setup.py`` keeps each successful build under ``build/anoise-ext/`` of the source
tree (a second ``pip install`` of another extra copies it instead of compiling again); a
just-in-time build leaves a ``built-<key>`` marker, or a ``build-failed-<key>.log`` with the
whole log, in torch's extension directory (``TORCH_EXTENSIONS_DIR``).  A recorded failure is
not retried until the key changes (a compiler installed, the sources edited) or the log is
deleted, so a machine without a compiler pays for the probe once, not in every process.

Environment variables:
    ANOISE_EXT=auto|aot|jit  which build to use at import (default auto: the prebuilt
                             ``anoise._C_cpu`` / ``anoise._C_cuda`` if present and built from
                             the current sources in csrc/, else JIT).
    ANOISE_CPU_NATIVE=1      add ``-march=native`` (a build for this machine only).  Without it
                             the build is portable: the hot kernels are compiled for baseline
                             x86-64, AVX2 and AVX-512, and the widest one the CPU runs is chosen
                             at run time (``ANOISE_CPU_ISA`` forces one).
    ANOISE_VERBOSE_BUILD=1   show the compiler's output of a just-in-time build.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
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

# What each build is, how long it takes, and how to get it when it cannot be built.
LABEL = {"cpu": "the fused C++ CPU backend", "cuda": "the CUDA backend"}
# Measured: a build of csrc/cpu with g++ 12 and torch 2.13 takes about 105 s of CPU time, most
# of it in the one translation unit with torch's headers, so about 1.5 min of wall time on 2
# idle cores (much longer on a loaded machine).
DURATION = {"cpu": "about 1.5 min on 2 idle cores", "cuda": "several minutes per GPU architecture"}
REMEDY = {
    "cpu": "install a C++ compiler with OpenMP (e.g. g++); the next pip install of anoise, or "
           "its first use, builds it",
    "cuda": "install the CUDA toolkit matching torch.version.cuda (nvcc, CUDA_HOME) and a C++ "
            "compiler; the next pip install of anoise, or its first use, builds it",
}


def say(message: str, terminal: bool = False) -> None:
    """One progress line for the user, on stderr.

    pip captures a build's output and shows it only when the build fails, so a long build at
    install would be a silent spinner: with ``terminal``, when stderr is not a terminal, the
    line also goes to the controlling terminal if there is one.
    """
    line = f"anoise: {message}"
    print(line, file=sys.stderr, flush=True)
    if not terminal or sys.stderr.isatty():
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(f"\n{line}\n")
    except OSError:  # no controlling terminal (CI, a daemon): stderr is all there is
        pass


def sources_hash(kind: str) -> str:
    """sha256 over the names and bytes of every file in ``csrc/<kind>`` (headers included)."""
    h = hashlib.sha256()
    for path in sorted((CSRC / kind).iterdir()):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def tool_identity(program: str | None) -> str:
    """Which executable ``program`` resolves to here (path, size, mtime), or that none does.

    Part of a build's key, so installing or changing a compiler makes a new key.
    """
    words = shlex.split(program or "")
    if not words:
        return "none"
    path = shutil.which(words[-1])
    if path is None:
        return f"{program}: not found"
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{program}: {real} {st.st_size} {st.st_mtime_ns}"


def build_key(kind: str, *parts: str) -> str:
    """A short hash of everything a build of ``kind`` depends on, plus ``parts``."""
    h = hashlib.sha256(sources_hash(kind).encode())
    flags = cpu_cflags() + CPU_LDFLAGS if kind == "cpu" else CUDA_CFLAGS + NVCC_FLAGS
    for part in [*flags, sys.version, *parts]:
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:16]


_PROBE_SOURCE = "#include <omp.h>\nint anoise_probe() { return omp_get_max_threads(); }\n"


def compiler_problem(compiler: str, linker: list[str] | None = None) -> str | None:
    """Why ``compiler`` (and ``linker``, a command such as ``["gcc", "-shared"]``) cannot build
    an OpenMP C++ extension here, in a few words; None when they can.

    A trivial compile and link: a fraction of a second, where a failed build of the real
    sources would take seconds to tell the same (and bury it in a long log).
    """
    command = shlex.split(compiler)  # CXX may carry a launcher: "ccache g++"
    if not command or shutil.which(command[0]) is None:
        return f"C++ compiler {compiler!r} not found on PATH (or set CXX)"
    with tempfile.TemporaryDirectory(prefix="anoise-probe-") as tmp:
        src, obj = Path(tmp, "probe.cpp"), Path(tmp, "probe.o")
        src.write_text(_PROBE_SOURCE)
        steps = [([*command, "-fPIC", "-fopenmp", "-c", str(src), "-o", str(obj)], compiler)]
        if linker:
            if shutil.which(linker[0]) is None:
                return f"linker {linker[0]!r} not found on PATH (or set CC / LDSHARED)"
            steps.append(([*linker, "-fopenmp", str(obj), "-o", str(Path(tmp, "probe.so"))],
                          linker[0]))
        for cmd, who in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{who!r} could not run ({exc})"
            if proc.returncode != 0:
                why = short_reason(proc.stdout + proc.stderr) or f"exit status {proc.returncode}"
                return f"{who!r} cannot build OpenMP C++ code here: {why}"
    return None


# In order of preference: a compiler's diagnostic, then a missing tool or file.
_ERROR_LINES = [re.compile(r"\berror\b:", re.IGNORECASE),
                re.compile(r"not found|no such file|cannot find|undefined reference|killed",
                           re.IGNORECASE)]


def short_reason(log: str, limit: int = 200) -> str:
    """The line of a build log that says what went wrong (else its last line)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    # torch's summary and ninja's echo of each command name no error themselves.
    lines = [ln for ln in lines if not re.match(r"\[\d+/\d+\]|FAILED:|Error building extension",
                                                ln)]
    pick = next((ln for pattern in _ERROR_LINES for ln in lines if pattern.search(ln)),
                lines[-1] if lines else "")
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


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
        detail = "" if aot_error is None or "No module named" in str(aot_error) else \
            f"the prebuilt anoise._C_{kind} failed to load ({aot_error}); "
        raise ImportError(f"{detail}{exc}") from exc


def stamp_path(extension_file: str | Path) -> Path:
    """The file beside a prebuilt extension holding the :func:`sources_hash` it was built from."""
    return Path(extension_file).with_name(Path(extension_file).name.split(".")[0] + ".sources")


def _prebuilt_is_stale(kind: str) -> bool:
    """A prebuilt module built from other sources than those in csrc/ is not used (it would
    silently run old kernels after an edit); the sources are then built just in time."""
    spec = importlib.util.find_spec(f"anoise._C_{kind}")
    if spec is None or spec.origin is None or not (CSRC / kind).is_dir():
        return False
    stamp = stamp_path(spec.origin)
    if stamp.exists():
        return stamp.read_text().strip() != sources_hash(kind)
    built = Path(spec.origin).stat().st_mtime  # built by an older setup.py: no stamp
    return any(f.stat().st_mtime > built for f in (CSRC / kind).iterdir())


def _jit_directory(name: str) -> Path:
    from torch.utils import cpp_extension

    try:  # torch's own choice (TORCH_EXTENSIONS_DIR, else a per-Python, per-CUDA cache)
        return Path(cpp_extension._get_build_directory(name, verbose=False))
    except AttributeError:
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        path = Path(root, name)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _jit(kind: str):
    import torch
    from torch.utils import cpp_extension

    sources = CPU_SOURCES if kind == "cpu" else CUDA_SOURCES
    missing = [s for s in sources if not (ROOT / s).exists()]
    if missing:
        raise FileNotFoundError(f"sources not found (not a source checkout?): {missing}")
    name = f"anoise_C_{kind}"
    directory = _jit_directory(name)
    compiler = cpp_extension.get_cxx_compiler()
    tools = [tool_identity(compiler)]
    if kind == "cuda":
        tools.append(f"CUDA_HOME={cpp_extension.CUDA_HOME}")
    key = build_key(kind, torch.__version__, *tools)
    failed = directory / f"build-failed-{key}.log"
    built = directory / f"built-{key}"
    library = directory / f"{name}.so"
    if failed.exists():
        first = failed.read_text().splitlines()[0] if failed.stat().st_size else "?"
        raise ImportError(f"{first} (recorded when a build of these sources was tried; log: "
                          f"{failed}; delete it to try again)")
    if built.exists() and library.exists():
        return _import_library(name, library)

    problem = compiler_problem(compiler)
    if problem is not None:
        _record_failure(failed, kind, problem, problem)
    for stale in directory.glob("built-*"):
        stale.unlink(missing_ok=True)
    say(f"compiling {LABEL[kind]} just in time, {DURATION[kind]} (once for these sources; "
        f"cached in {directory})")
    t0 = time.monotonic()
    verbose = os.environ.get("ANOISE_VERBOSE_BUILD") == "1"
    kwargs = dict(
        name=name,
        sources=[str(ROOT / s) for s in sources],
        extra_include_paths=[str(CSRC / kind)],
        build_directory=str(directory),
        verbose=verbose,
    )
    if kind == "cpu":
        kwargs.update(extra_cflags=cpu_cflags(), extra_ldflags=CPU_LDFLAGS)
    else:
        kwargs.update(extra_cflags=CUDA_CFLAGS, extra_cuda_cflags=NVCC_FLAGS)
    with _torch_build_log(verbose) as records:
        try:
            module = cpp_extension.load(**kwargs)
        except Exception as exc:
            log = "\n".join([*records, f"{type(exc).__name__}: {exc}"])
            _record_failure(failed, kind, short_reason(str(exc)) or type(exc).__name__, log)
    built.write_text(f"{time.monotonic() - t0:.0f} s\n")
    say(f"built {LABEL[kind]} in {time.monotonic() - t0:.0f} s")
    return module


def _record_failure(path: Path, kind: str, reason: str, log: str):
    """Write the failure where the next process finds it, tell the user once, and raise."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(f"{reason}\n\n{log}\n")
    os.replace(tmp, path)
    say(f"{LABEL[kind]} is unavailable ({reason}); anoise runs without it. To get it: "
        f"{REMEDY[kind]}. Full log: {path}")
    raise ImportError(f"{reason} (log: {path})")


def _import_library(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _torch_build_log:
    """Collects what torch's extension builder logs (its compiler checks warn, sometimes
    misleadingly, about a compiler the probe already vetted) into the build's log instead of
    the console, unless the build is verbose."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.records: list[str] = []
        self.logger = logging.getLogger("torch.utils.cpp_extension")

    def __enter__(self):
        if not self.verbose:
            self.handler = logging.Handler(logging.DEBUG)
            self.handler.emit = lambda rec: self.records.append(rec.getMessage())
            self.propagate, self.logger.propagate = self.logger.propagate, False
            self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        if not self.verbose:
            self.logger.removeHandler(self.handler)
            self.logger.propagate = self.propagate
        return False
