"""The Triton kernels compile for sm_90 (H100/H200) through the real compiler, with no GPU.

The interpreter that runs the other tests on the CPU accepts code the compiler rejects, so
every kernel variant the launchers use is compiled here to PTX and a cubin (ptxas), and the
result is checked: no register spills, vectorised global accesses on contiguous layouts, and
the static SASS proxy of ``python -m anoise.kernels._aot`` (instructions per element of each
hot loop, see that module): the fp32 noise injection within 40 instructions per element (so an
H200 forward is memory-bound) and no shared-memory traffic in the noise loops.
"""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import background_result

triton = pytest.importorskip("triton", reason="the triton package is not installed")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


_AOT_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
_AOT_ENV["TRITON_DEFAULT_FP_FUSION"] = "1"
# The compile takes minutes on one core: conftest starts it when this module is collected, so
# it runs beside the tests before this module's.
BACKGROUND = ({"sm90 aot": ([sys.executable, "-m", "anoise.kernels._aot", "--json"], _AOT_ENV,
                            None)} if PTXAS.exists() else {})


@pytest.fixture(scope="module")
def records():
    if not PTXAS.exists():
        pytest.skip(f"triton's ptxas is missing ({PTXAS}): cannot build cubins")
    returncode, stdout, stderr = background_result("sm90 aot", *BACKGROUND["sm90 aot"],
                                                   timeout=1800)
    assert returncode == 0, stderr[-4000:]
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def compiled(records):
    return [r for r in records if not r.get("proxy")]


@pytest.fixture(scope="module")
def proxy(records):
    return [r for r in records if r.get("proxy")]


def test_every_kernel_compiles_for_sm90(compiled):
    kernels = {r["kernel"] for r in compiled}
    assert kernels == {"stats_kernel", "combine_stats_kernel", "inject_kernel",
                       "noise_dot_kernel", "combine_g_kernel", "dx_kernel", "philox_kernel"}
    cases = {r["case"] for r in compiled}
    assert len(cases) == 10
    for r in compiled:
        assert r["local_bytes"] == 0, r  # no spills
        assert 0 < r["regs"] <= 128, r  # leaves room for several programs per SM


def test_contiguous_layouts_vectorise(compiled):
    for r in compiled:
        ops = r["vector_ops"]
        if r["case"] in ("nchw fp32 fused", "linear fp32 split"):
            if r["kernel"] in ("inject_kernel", "dx_kernel"):
                assert ops.get("st.v4", 0) >= 1 and ops.get("ld.v4", 0) >= 1, r
        if r["case"] == "nchw fp16 split":
            # 16-bit elements along the noise groups: 8-byte accesses (see _narrow), 16-byte
            # ones where no noise is drawn.
            if r["kernel"] == "inject_kernel":
                assert ops.get("st.v2", 0) >= 1 and ops.get("ld.v2", 0) >= 1, r
            if r["kernel"] == "dx_kernel":
                assert ops.get("st.v4", 0) >= 1 and ops.get("ld.v4", 0) >= 1, r
        if r["kernel"] == "stats_kernel" and "shifted" not in r["case"] and "C=10" not in r["case"]:
            assert ops.get("ld.v4", 0) + ops.get("ld.v2", 0) >= 1, r


def test_every_kernel_loop_is_found(compiled):
    for r in compiled:
        if r["kernel"] in ("stats_kernel", "noise_dot_kernel", "inject_kernel", "dx_kernel"):
            # (stats_kernel in float32: also the rescaled reduction, see _aot.Compiled.hot_loops)
            assert 1 <= len(r["loops"]) <= 3 and all(n > 10 for n in r["loops"]), r


def test_proxy_fp32_injection_within_40_instructions_per_element(proxy):
    rows = {(r["loop"], r["kernel"], r["variant"], r["dtype"]): r for r in proxy
            if r["layout"] == "nchw"}
    loops = {(loop, dtype) for loop, _, _, dtype in rows}
    assert loops == {(loop, dtype) for loop in ("statistics", "inject", "g", "dx")
                     for dtype in ("float32", "bfloat16")}
    assert {r["layout"] for r in proxy} == {"nchw", "channels_last", "7x7", "linear",
                                            "linear C=10"}
    for (loop, _, _, dtype), r in rows.items():
        assert r["elements_per_thread"] >= 8, r
        if loop != "statistics":  # (whose per-tile reductions cross warps)
            assert r["shared_memory_ops"] == 0, r  # no layout conversion through shared memory
        if loop == "inject" and dtype == "float32":
            assert r["per_element"] <= 40, r
            assert r["memory_roof"] < r["compute_roof"], r
        # Ceilings a few instructions above today's counts: a regression guard.
        limit = {"statistics": 18, "inject": 42, "g": 40, "dx": 13}[loop]
        assert r["per_element"] <= limit, r
