"""benchmarks/report.py on a tiny synthetic pytest-benchmark JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
_spec = importlib.util.spec_from_file_location("anoise_bench_report", _PATH)
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report  # dataclasses look their module up
_spec.loader.exec_module(report)

GROUP = "op 4x8x16x16 float32"
NUMEL = 4 * 8 * 16 * 16


def _op(impl, mode, mean, saved=0):
    passes = {"forward": 3, "fwd+bwd": 7, "eval": 2}[mode]
    return {
        "group": GROUP,
        "name": f"test_op[{impl}-{mode}]",
        "stats": {"mean": mean, "min": mean * 0.9, "stddev": mean / 10, "rounds": 5},
        "extra_info": {"impl": impl, "mode": mode, "numel": NUMEL, "itemsize": 4,
                       "bytes_moved": passes * NUMEL * 4, "saved_bytes": saved,
                       "peak_mem_bytes": None},
    }


def _e2e(impl, mean):
    return {
        "group": "e2e resnet20 train step batch=8",
        "name": f"test_resnet20_step[{impl}]",
        "stats": {"mean": mean, "stddev": 0.0, "rounds": 3},
        "extra_info": {"impl": impl, "mode": "train step", "batch": 8,
                       "backend": "none" if impl == "teacher" else impl.split("-")[1]},
    }


@pytest.fixture
def bench_json(tmp_path):
    data = {
        "datetime": "2026-01-01T00:00:00",
        "machine_info": {"processor": "x86_64"},
        "benchmarks": [
            _op("eager", "forward", 2.0, saved=2 * NUMEL * 4),
            _op("compiled", "forward", 0.5),
            _op("triton", "forward", 0.1, saved=NUMEL * 4),
            _op("eager", "eval", 1.0),
            _op("triton", "eval", 0.25),
            _e2e("teacher", 1.0),
            _e2e("student-triton", 1.25),
        ],
        "anoise": {"environment": {"device": "cpu", "cpu_model": "Test CPU", "torch": "9.9"},
                   "command": "pytest benchmarks",
                   "skipped": [{"name": "test_op[cuda-forward]", "reason": "no GPU"}]},
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    return path


def _row(rows, impl, mode):
    return next(r for r in rows if r.impl == impl and r.mode == mode)


def test_speedups_against_both_baselines(bench_json):
    rows, _ = report.load(bench_json)
    assert _row(rows, "triton", "forward").speedup_eager == pytest.approx(20.0)
    assert _row(rows, "triton", "forward").speedup_compiled == pytest.approx(5.0)
    assert _row(rows, "triton", "eval").speedup_eager == pytest.approx(4.0)
    # no compiled eval row: no speed-up against it
    assert _row(rows, "triton", "eval").speedup_compiled is None
    assert report.e2e_overheads(rows) == {
        "e2e resnet20 train step batch=8|student-triton": pytest.approx(25.0)}


def test_markdown_rows(bench_json):
    rows, data = report.load(bench_json)
    md = report.markdown(rows, data, note="synthetic", copy_gbps=1.0)
    lines = md.splitlines()
    assert f"## {GROUP}" in lines
    fwd = next(ln for ln in lines if ln.startswith("| triton | forward |"))
    cells = [c.strip() for c in fwd.strip("|").split("|")]
    # mean, min, GB/s = 3 * numel * 4 B / 0.1 s, Melem/s, vs eager, vs compile, % of copy
    gbps = 3 * NUMEL * 4 / 0.1 / 1e9
    assert cells[2] == "100 ms ± 10 ms"
    assert cells[3] == "90 ms"
    assert float(cells[4]) == pytest.approx(gbps, rel=1e-2)
    assert float(cells[5]) == pytest.approx(NUMEL / 0.1 / 1e6, rel=1e-3)
    assert cells[6:9] == ["20x", "5x", f"{100 * gbps:.1f}%"]
    assert cells[-1] == "32 KiB"  # saved for backward
    assert any(ln.startswith("| student | triton |") and "+25.0%" in ln for ln in lines)
    assert "| 1 (e.g. `test_op[cuda-forward]`) | no GPU |" in lines
    assert "- Machine: Test CPU (? cores visible, torch threads: ?)" in lines
    # op tables come before the end-to-end table
    assert md.index(GROUP) < md.index("e2e resnet20")


def test_summary_lists_fused_rows_only(bench_json):
    rows, _ = report.load(bench_json)
    text = report.summary(rows, copy_gbps=1.0)
    body = text.splitlines()[1:]
    assert [ln.split()[3] for ln in body[:2]] == ["triton", "triton"]
    assert not any("eager" in ln or "compiled" in ln for ln in body)
    assert body[-1].endswith("+25.0% step time over the teacher")


def test_cli_writes_markdown_and_chart(bench_json, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "RESULTS.md", tmp_path / "speedup.png"
    assert report.main([str(bench_json), "--out", str(out), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![speed-up over the eager reference](speedup.png)" in out.read_text()


def test_files_are_merged(bench_json, tmp_path):
    second = tmp_path / "compiled.json"
    second.write_text(json.dumps({
        "benchmarks": [_op("compiled", "eval", 0.5)],
        "anoise": {"command": "pytest benchmarks -k compiled",
                   "skipped": [{"name": "x", "reason": "slow"}]},
    }))
    rows, data = report.load(bench_json, second)
    assert _row(rows, "triton", "eval").speedup_compiled == pytest.approx(2.0)
    assert data["anoise"]["commands"] == ["pytest benchmarks", "pytest benchmarks -k compiled"]
    assert [s["reason"] for s in data["anoise"]["skipped"]] == ["no GPU", "slow"]
