"""The Triton kernels compile for sm_90 (H100/H200) through the real compiler, with no GPU.

The interpreter that runs the other tests on the CPU accepts code the compiler rejects, so
every kernel variant the launchers use is compiled here to PTX and a cubin (ptxas), and the
result is checked: no register spills, and vectorised global accesses on contiguous layouts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="the triton package is not installed")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.fixture(scope="module")
def compiled():
    if not PTXAS.exists():
        pytest.skip(f"triton's ptxas is missing ({PTXAS}): cannot build cubins")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-m", "anoise.kernels._aot", "--json"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm90(compiled):
    kernels = {r["kernel"] for r in compiled}
    assert kernels == {"stats_kernel", "combine_stats_kernel", "inject_kernel",
                       "noise_dot_kernel", "combine_g_kernel", "dx_kernel", "philox_kernel"}
    cases = {r["case"] for r in compiled}
    assert len(cases) == 6
    for r in compiled:
        assert r["local_bytes"] == 0, r  # no spills
        assert 0 < r["regs"] <= 128, r  # leaves room for several programs per SM


def test_contiguous_layouts_vectorise(compiled):
    for r in compiled:
        if r["kernel"] in ("inject_kernel", "dx_kernel") and "fp64" not in r["case"]:
            ops = r["vector_ops"]
            assert ops.get("st.v4", 0) >= 1, r
            assert ops.get("ld.v4", 0) >= 1, r
        if r["kernel"] == "stats_kernel":
            assert r["vector_ops"].get("ld.v4", 0) + r["vector_ops"].get("ld.v2", 0) >= 1, r
