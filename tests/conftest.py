"""Shared test setup.

Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter; it must be
switched on before any kernel is defined, so it is set here, before anoise is imported.
"""

import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (atol, rtol) per dtype, against the reference run in float64 on the same seed (SPEC 6).
# The noise itself is float32 and matches across backends to ~1e-7 (SPEC 3 allows 1e-5: log,
# cos and sqrt differ by a few ULP between libraries), so float64 is held to float32's bound.
TOLERANCES = {
    torch.float64: (1e-5, 1e-5),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}

def compiler_missing() -> str | None:
    """Why C++ cannot be compiled here (None when it can).  The fused C++ backends and
    torch.compile's CPU code need a compiler: on a machine without one their tests skip with
    this reason (where there is one, a failed build fails them)."""
    from anoise._build import compiler_problem

    return compiler_problem(os.environ.get("CXX", "c++"))


NO_COMPILER = compiler_missing()


def usable_backends(device: str) -> list[str]:
    """The backends that run on ``device`` tensors here (reference included)."""
    from anoise.backends import BACKEND_NAMES, resolve

    names = []
    for name in BACKEND_NAMES:
        try:
            resolve(name, torch.device(device))
        except ValueError:
            continue
        names.append(name)
    return names


DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def philox_vectors():
    """Draws of the earlier stream (``tl.randn(seed, j)``): Philox words and component 0."""
    return json.loads((DATA / "philox_vectors.json").read_text())["cases"]


@pytest.fixture(scope="session")
def philox4_vectors():
    """Draws of stream 2 made by Triton itself (``tl.randint4x / rand4x / randn4x``)."""
    return json.loads((DATA / "philox4_vectors.json").read_text())["cases"]


def assert_close_to_reference(actual, expected, dtype):
    """Compare with a float64 reference, tolerances relative to the output scale."""
    atol, rtol = TOLERANCES[dtype]
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True
    )


# -- slow subprocesses started at collection, run on another core while the other tests run --

_BACKGROUND: dict[str, tuple] = {}


def start_in_background(name: str, cmd: list[str], env: dict | None = None,
                        cwd=None) -> None:
    """Start ``cmd`` once, its output kept in temporary files (see :func:`background_result`)."""
    if name in _BACKGROUND:
        return
    import subprocess
    import tempfile

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
    _BACKGROUND[name] = (proc, out, err)


def background_result(name: str, cmd: list[str], env: dict | None = None, cwd=None, *,
                      timeout: float):
    """``(returncode, stdout, stderr)`` of ``cmd``, started by now if it was not already."""
    start_in_background(name, cmd, env, cwd)
    proc, out, err = _BACKGROUND[name]
    proc.wait(timeout=timeout)
    out.seek(0)
    err.seek(0)
    return proc.returncode, out.read().decode(), err.read().decode()


def pytest_collection_finish(session):
    """A test module that needs a slow single-process subprocess (a compile of minutes) names
    it in ``BACKGROUND = {name: (cmd, env, cwd)}``; it starts as soon as that module is
    collected, so on a machine with a second core it overlaps the tests that run before the
    module's own."""
    modules = {id(item.module): item.module for item in session.items
               if getattr(item, "module", None) is not None}
    for module in modules.values():
        for name, (cmd, env, cwd) in getattr(module, "BACKGROUND", {}).items():
            start_in_background(name, cmd, env, cwd)


def pytest_sessionfinish(session):
    for proc, out, err in _BACKGROUND.values():
        if proc.poll() is None:  # the tests that needed it did not run (-x, -k, ...)
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    _BACKGROUND.clear()
