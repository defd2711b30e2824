"""The repository's own checks, run as tests so that the README's test command and CI run the
same things: lint, the compile check of the CUDA sources, the GPU script's syntax, a smoke run
of the benchmark suite and the files git must ignore.  (The demo's smoke run is
tests/test_demo.py.)"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import background_result

import anoise
from anoise._build import compiler_problem

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited with {proc.returncode}:\n"
                                  f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def test_ruff_is_clean():
    run([sys.executable, "-m", "ruff", "check", "."], timeout=300)


NVCC = os.environ.get("NVCC", "nvcc")
# nvcc runs on one core for a while: conftest starts it at collection, beside the other tests.
BACKGROUND = ({"check_cuda": (["bash", "csrc/check_cuda.sh"], None, ROOT)}
              if shutil.which(NVCC) is not None else {})


@pytest.mark.skipif(shutil.which(NVCC) is None,
                    reason=f"{NVCC} not found on PATH: the CUDA sources are not compile-checked "
                           "here (csrc/check_cuda.sh needs nvcc, no GPU)")
def test_cuda_sources_compile_for_sm80_and_sm90():
    returncode, out, err = background_result("check_cuda", *BACKGROUND["check_cuda"],
                                             timeout=1200)
    assert returncode == 0, (f"csrc/check_cuda.sh exited with {returncode}:\n{out[-6000:]}\n"
                             f"{err[-6000:]}")
    for arch in (80, 90):
        assert f"== adaptive_noise.cu sm_{arch}" in out


def test_gpu_check_script_parses():
    run(["bash", "-n", "benchmarks/gpu_check.sh"], timeout=60)


BENCH_IMPLS = ["torch-eager", "torch-compile", "reference", "triton", "cuda", "cpu"]
BENCH_MODES = ["forward", "fwd+bwd", "eval", "eval fwd+bwd"]


def test_benchmark_suite_smoke_run():
    """Every row of the benchmark suite runs on tiny shapes (timing off), so the suite cannot
    rot between measurements; rows that cannot run here are skipped with their reason."""
    out = run([sys.executable, "-m", "pytest", "benchmarks", "-v", "-rs", "-p", "no:cacheprovider",
               "--benchmark-disable", "--bench-shapes", "4x8x4x4,16x8", "--bench-dtypes",
               "float32", "--bench-e2e-batch", "2", "--bench-impls", ",".join(BENCH_IMPLS),
               "--bench-compile-probe-s", "600"],
              timeout=1800)
    outcome = {m.group(1): m.group(2)
               for m in re.finditer(r"::(test_\w+\[[^\]]+\]) (PASSED|SKIPPED|FAILED)", out)}
    must_run = ["torch-eager", "reference"] + (["cpu"] if anoise.backends()["cpu"] else [])
    # torch.compile (Inductor) needs a C++ compiler on CPU; without one its rows say why.
    if compiler_problem(os.environ.get("CXX", "g++")) is None:
        must_run.append("torch-compile")
    else:
        assert "torch.compile of the PyTorch idiom failed on cpu" in out
    for shape in ("4x8x4x4", "16x8"):
        for mode in BENCH_MODES:
            for impl in must_run:
                assert outcome.get(f"test_op[{shape}-float32-{impl}-{mode}]") == "PASSED", \
                    (shape, mode, impl, out[-3000:])
    assert outcome.get("test_resnet20_step[teacher]") == "PASSED"
    assert outcome.get("test_noise[torch.randn]") == "PASSED"


# What the README's commands, CI and the tests write inside a checkout.
OUTPUTS = [
    ".ci-venv/bin/python",
    ".venv/bin/python",
    ".torch_ext/anoise_C_cpu/anoise_C_cpu.so",
    "anoise_demo_out/results.json",
    "bench.json",
    "bench_report/RESULTS.md",
    "bench_report/speedup.png",
    "build/anoise-ext/anoise._C_cpu-0123456789abcdef/_C_cpu.cpython-311-x86_64-linux-gnu.so",
    "anoise/_C_cpu.cpython-311-x86_64-linux-gnu.so",
    "anoise/_C_cpu.sources",
    "anoise.egg-info/PKG-INFO",
    "anoise/__pycache__/x.cpython-311.pyc",
]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="not a git checkout")
def test_gitignore_covers_every_output():
    out = run(["git", "check-ignore", "--no-index", *OUTPUTS], timeout=60)
    assert sorted(out.split()) == sorted(OUTPUTS)
