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


def _op(impl, mode, mean, saved=0, group=GROUP):
    passes = {"forward": 3, "fwd+bwd": 7, "eval": 2, "eval fwd+bwd": 4}[mode]
    return {
        "group": group,
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
            _op("torch-eager", "forward", 2.0, saved=2 * NUMEL * 4),
            _op("torch-compile", "forward", 0.5),
            _op("reference", "forward", 40.0),
            _op("triton", "forward", 0.1, saved=NUMEL * 4),
            _op("torch-eager", "eval", 1.0),
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


def test_speedups_against_the_pytorch_idiom(bench_json):
    rows, _ = report.load(bench_json)
    assert _row(rows, "triton", "forward").vs_torch == pytest.approx(20.0)
    assert _row(rows, "triton", "forward").vs_compile == pytest.approx(5.0)
    assert _row(rows, "triton", "eval").vs_torch == pytest.approx(4.0)
    # no compiled eval row: no speed-up against it
    assert _row(rows, "triton", "eval").vs_compile is None
    # the reference is timed, not a baseline: nothing is compared with it
    assert _row(rows, "reference", "forward").vs_torch == pytest.approx(0.05)
    assert report.e2e_overheads(rows) == {
        "e2e resnet20 train step batch=8|student-triton": pytest.approx(25.0)}


def test_markdown_rows(bench_json):
    rows, data = report.load(bench_json)
    md = report.markdown(rows, data, note="synthetic", copy_gbps=1.0)
    lines = md.splitlines()
    assert f"## {GROUP}" in lines
    assert any(ln.startswith("| reference (bit-exact stream, pure PyTorch) | forward |")
               for ln in lines)
    assert any(ln.startswith("| PyTorch idiom, torch.compile | forward |") for ln in lines)
    fwd = next(ln for ln in lines if ln.startswith("| triton | forward |"))
    cells = [c.strip() for c in fwd.strip("|").split("|")]
    # mean, min, GB/s = 3 * numel * 4 B / 0.1 s, Melem/s, vs torch eager, vs torch.compile,
    # % of copy
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
    assert not any(name in ln for ln in body for name in ("torch-", "reference"))
    assert body[-1].endswith("+25.0% step time over the teacher")


def test_cli_writes_markdown_and_chart(bench_json, tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "RESULTS.md", tmp_path / "speedup.png"
    assert report.main([str(bench_json), "--out", str(out), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = out.read_text()
    assert "![speed-up over the PyTorch idiom, eager](speedup.png)" in text
    assert text.startswith("# anoise benchmark results\n\n" + report.BEGIN)
    assert text.rstrip().endswith(report.END)


def test_default_output_is_outside_tracked_files(bench_json, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert report.main([str(bench_json)]) == 0
    assert (tmp_path / "bench_report" / "RESULTS.md").exists()
    assert (tmp_path / "bench_report" / "speedup.png").exists()
    assert report.DEFAULT_OUT.parts[0] == "bench_report"  # git ignores it: test_repo_checks


HAND_WRITTEN = """# anoise benchmark results

How these numbers were made, by hand.

{begin}
old tables
{end}

## sm_90 proxy: Triton kernels

Written by hand: instructions per element.

## sm_90 proxy: CUDA kernels

Also by hand.
"""


def test_update_keeps_hand_written_sections(bench_json, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text(HAND_WRITTEN.format(begin=report.BEGIN, end=report.END))
    assert report.main([str(bench_json), "--update", str(md), "--no-png"]) == 0
    text = md.read_text()
    assert "old tables" not in text
    assert f"## {GROUP}" in text
    for kept in ("How these numbers were made, by hand.", "## sm_90 proxy: Triton kernels",
                 "Written by hand: instructions per element.", "## sm_90 proxy: CUDA kernels",
                 "Also by hand."):
        assert text.count(kept) == 1, kept
    # hand-written text stays where it was, around the block
    assert text.index("by hand.") < text.index(report.BEGIN) < text.index(GROUP)
    assert text.index(report.END) < text.index("## sm_90 proxy: Triton kernels")
    # a second update changes nothing but the block
    again = report.main([str(bench_json), "--update", str(md), "--no-png"])
    assert again == 0 and md.read_text() == text


def test_out_refuses_to_overwrite_hand_written_sections(bench_json, tmp_path):
    md = tmp_path / "RESULTS.md"
    original = HAND_WRITTEN.format(begin=report.BEGIN, end=report.END)
    md.write_text(original)
    with pytest.raises(SystemExit, match="--update"):
        report.main([str(bench_json), "--out", str(md), "--no-png"])
    assert md.read_text() == original


def test_update_needs_the_markers(bench_json, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# results\n\nno markers here\n")
    with pytest.raises(SystemExit, match="no generated block"):
        report.main([str(bench_json), "--update", str(md), "--no-png"])
    assert md.read_text() == "# results\n\nno markers here\n"


def test_headline_and_goals(tmp_path):
    group = report.HEADLINE_GROUP
    data = {"benchmarks": [
        _op("torch-eager", "forward", 0.050, group=group),
        _op("torch-compile", "forward", 0.135, group=group),
        _op("cpu", "forward", 0.010, group=group),
        _op("torch-eager", "fwd+bwd", 0.055, group=group),
        _op("cpu", "fwd+bwd", 0.025, group=group),
        _op("cpu", "eval", 0.010, group=group),
        _op("cpu", "eval fwd+bwd", 0.012, group=group),
    ], "anoise": {}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    rows, _ = report.load(path)
    lines = report.headline(rows)
    assert lines[0] == f"## Headline: {group.removeprefix('op ')}"
    assert "| cpu | forward | 10 ms | 5x | 13.5x |" in lines
    goals = {ln.split(" | ")[0].lstrip("| "): ln.rstrip(" |").rsplit(" | ", 1)[1]
             for ln in lines if ln.startswith("| `cpu`")}
    assert goals == {
        "`cpu` forward >= 8x the eager idiom": "no",  # 5x
        "`cpu` forward >= 10x the idiom under torch.compile": "yes",  # 13.5x
        "`cpu` forward+backward >= 4x the eager idiom": "no",  # 2.2x
        "`cpu` eval forward+backward <= 1.25x `cpu` eval forward": "yes",  # 1.2x
    }


def test_files_are_merged(bench_json, tmp_path):
    second = tmp_path / "compiled.json"
    second.write_text(json.dumps({
        "benchmarks": [_op("torch-compile", "eval", 0.5)],
        "anoise": {"command": "pytest benchmarks -k compiled",
                   "skipped": [{"name": "x", "reason": "slow"}]},
    }))
    rows, data = report.load(bench_json, second)
    assert _row(rows, "triton", "eval").vs_compile == pytest.approx(2.0)
    assert data["anoise"]["commands"] == ["pytest benchmarks", "pytest benchmarks -k compiled"]
    assert [s["reason"] for s in data["anoise"]["skipped"]] == ["no GPU", "slow"]
