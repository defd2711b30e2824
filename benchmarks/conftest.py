"""Options and fixtures of the benchmark suite (``pytest benchmarks/ --benchmark-only``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

# OpenMP threads that spin while they wait stall every parallel region when another process
# holds a core (a shared CI machine): a ResNet-20 step took 30x longer with 2 threads.  It must be
# set before the OpenMP runtime starts, hence before torch is imported; a user's value stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from . import common  # noqa: E402

_PROBE = """
import torch
from benchmarks.common import compiled_idiom
x = torch.randn(4, 8, 4, 4, device={device!r})
compiled_idiom("batch")(x, 0.1, 1e-5)
"""


def pytest_addoption(parser):
    g = parser.getgroup("anoise benchmarks")
    g.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"),
                help="device to benchmark on (auto: cuda when present)")
    g.addoption("--bench-shapes", default="",
                help="comma-separated shapes like 32x64x56x56 (default: the standard set, "
                     f"plus {common.shape_label(common.ROOFLINE_SHAPE)} on cuda)")
    g.addoption("--bench-dtypes", default="",
                help="comma-separated dtypes (default: float32,bfloat16; float16 too on cuda)")
    g.addoption("--bench-impls", default="",
                help="comma-separated rows to run: torch-eager and torch-compile (the PyTorch "
                     "idiom), reference, and fused backend names (default: all)")
    g.addoption("--bench-target-s", type=float, default=None,
                help="seconds of timing per row (default 1.0 on cpu, 0.3 on cuda)")
    g.addoption("--bench-threads", type=int, default=2,
                help="torch.set_num_threads for cpu runs (0: leave as is)")
    g.addoption("--bench-compile-probe-s", type=float, default=None,
                help="torch-compile rows run only if torch.compile of the idiom finishes on a "
                     "tiny input within this many seconds (default 180 on cpu, 240 on cuda)")
    g.addoption("--bench-deadline-s", type=float, default=None,
                help="rows that would start later than this many seconds into the run are "
                     "skipped (so a time-boxed run still writes its JSON)")
    g.addoption("--bench-e2e-batch", type=int, default=None,
                help="batch of the end-to-end training step (default 32 on cpu, 128 on cuda)")


def _device(config) -> torch.device:
    name = config.getoption("--bench-device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _csv(config, opt):
    return [s.strip() for s in config.getoption(opt).split(",") if s.strip()]


def bench_shapes(config):
    shapes = [common.parse_shape(s) for s in _csv(config, "--bench-shapes")]
    if shapes:
        return shapes
    extra = [common.ROOFLINE_SHAPE] if _device(config).type == "cuda" else []
    return common.SHAPES + extra


def bench_dtypes(config):
    names = _csv(config, "--bench-dtypes")
    if not names:
        names = ["float32", "bfloat16"] + (["float16"] if _device(config).type == "cuda" else [])
    return names


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "shape" in metafunc.fixturenames:
        shapes = bench_shapes(config)
        metafunc.parametrize("shape", shapes, ids=[common.shape_label(s) for s in shapes])
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", bench_dtypes(config))
    if "impl" in metafunc.fixturenames:
        known = common.impl_names()
        impls = _csv(config, "--bench-impls") or known
        unknown = [i for i in impls if i not in known]
        if unknown:
            raise pytest.UsageError(f"--bench-impls: unknown {unknown}; rows are {known} "
                                    "(the PyTorch idiom is torch-eager / torch-compile)")
        metafunc.parametrize("impl", impls)


@pytest.fixture(scope="session")
def device(pytestconfig):
    dev = _device(pytestconfig)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device=cuda but torch.cuda.is_available() is False")
    threads = pytestconfig.getoption("--bench-threads")
    if dev.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    return dev


@pytest.fixture(scope="session")
def target_s(pytestconfig, device):
    t = pytestconfig.getoption("--bench-target-s")
    return t if t is not None else (1.0 if device.type == "cpu" else 0.3)


@pytest.fixture(scope="session")
def e2e_batch(pytestconfig, device):
    b = pytestconfig.getoption("--bench-e2e-batch")
    return b if b is not None else (32 if device.type == "cpu" else 128)


@pytest.fixture(scope="session")
def compile_unusable(pytestconfig, device):
    """Why the torch-compile rows are left out on this device (None when they run).

    torch.compile needs a working C++ compiler on CPU (and Triton on CUDA), and its first
    compile takes a while; a probe in a child process, under a deadline, decides before any
    row waits on it.
    """
    limit = pytestconfig.getoption("--bench-compile-probe-s")
    if limit is None:
        limit = 180.0 if device.type == "cpu" else 240.0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if device.type == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE.format(device=device.type)],
                              env=env, cwd=root, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return (f"torch.compile of the PyTorch idiom did not finish compiling a 4x8x4x4 "
                f"float32 forward within {limit:.0f} s on {device.type} (every shape, dtype and "
                "mode is a recompile, so these rows are impractical here)")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        return f"torch.compile of the PyTorch idiom failed on {device.type}: {tail[0]}"
    pytestconfig._anoise_compile_probe_s = time.perf_counter() - t0
    return None


# -- what goes into the JSON beside the timings ------------------------------------------------


def environment_info(device: torch.device) -> dict:
    """Machine and versions, for the report's header."""
    import platform
    from importlib import metadata

    import anoise

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {
        "device": device.type,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": version("triton"),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "backends": {n: (b.available, b.reason) for n, b in anoise.backends().items()},
    }


def pytest_configure(config):
    # Every row is timed with glibc's heap kept steady: with its defaults, which row pays the
    # page faults of a trimmed and regrown heap depends on what ran before it.
    config._anoise_allocator = "steady" if common.steady_allocator() else "default"
    config._anoise_skips = []
    config._anoise_load_at_start = [round(v, 2) for v in os.getloadavg()]
    config._anoise_t0 = time.monotonic()


@pytest.fixture(autouse=True)
def _deadline(pytestconfig):
    limit = pytestconfig.getoption("--bench-deadline-s")
    if limit is not None and time.monotonic() - pytestconfig._anoise_t0 > limit:
        pytest.skip(f"the run's time budget (--bench-deadline-s {limit:g}) was spent")


def pytest_runtest_logreport(report):
    if report.skipped and "benchmarks" in report.nodeid:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        _CONFIG["config"]._anoise_skips.append({"name": report.nodeid.split("::")[-1],
                                                "reason": reason})


_CONFIG: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _CONFIG["config"] = session.config


def pytest_benchmark_update_json(config, benchmarks, output_json):
    device = _device(config)
    output_json["anoise"] = {
        "environment": environment_info(device),
        "command": " ".join(["pytest", *config.invocation_params.args]),
        "skipped": config._anoise_skips,
        "compile_probe_s": getattr(config, "_anoise_compile_probe_s", None),
        "load_average_at_start": config._anoise_load_at_start,
        "allocator": config._anoise_allocator,
        "bytes_passes": common.PASSES,
    }
