"""Turn pytest-benchmark JSON into ``RESULTS.md`` tables and a speed-up chart.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python -m benchmarks.report bench.json --out benchmarks/RESULTS.md \
        --png benchmarks/speedup.png [--copy-gbps 4300] [--note "..."]

Tables: one per shape and dtype; rows are backend x mode with the mean time, effective GB/s,
Melem/s, speed-up against the eager reference (and against torch.compile of the reference when
it ran) and memory.  ``--summary`` prints a short plain-text table instead (for a terminal).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

LABELS = {"eager": "reference (eager)", "compiled": "reference (torch.compile)"}
MODE_ORDER = {"forward": 0, "fwd+bwd": 1, "eval": 2}


@dataclass
class Row:
    group: str
    impl: str
    mode: str
    mean: float
    stddev: float
    rounds: int
    info: dict = field(default_factory=dict)
    speedup_eager: float | None = None
    speedup_compiled: float | None = None

    @property
    def label(self) -> str:
        return LABELS.get(self.impl, self.impl)


def load(*paths) -> tuple[list[Row], dict]:
    """Rows of pytest-benchmark JSON files and the metadata of the first.

    Rows and skipped rows of all files are merged, so one run can be split into several
    invocations (and the speed-ups still compare rows of the same shape across them).
    """
    data = json.loads(Path(paths[0]).read_text())
    commands = [data.get("anoise", {}).get("command", "?")]
    for path in paths[1:]:
        more = json.loads(Path(path).read_text())
        commands.append(more.get("anoise", {}).get("command", "?"))
        data.setdefault("benchmarks", []).extend(more.get("benchmarks", []))
        skipped = more.get("anoise", {}).get("skipped", [])
        data.setdefault("anoise", {}).setdefault("skipped", []).extend(skipped)
    data.setdefault("anoise", {})["commands"] = commands
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if "impl" not in info:
            continue
        st = b["stats"]
        info = dict(info, min=st.get("min", st["mean"]))
        rows.append(Row(b.get("group") or "", info["impl"], info.get("mode", ""), st["mean"],
                        st.get("stddev", 0.0), st.get("rounds", 0), info))
    add_speedups(rows)
    return rows, data


def add_speedups(rows: list[Row]) -> None:
    """Speed-up = baseline mean / row mean, within one group and mode."""
    base = {}
    for r in rows:
        if r.impl in ("eager", "compiled"):
            base[(r.group, r.mode, r.impl)] = r.mean
    for r in rows:
        e = base.get((r.group, r.mode, "eager"))
        c = base.get((r.group, r.mode, "compiled"))
        r.speedup_eager = e / r.mean if e else None
        r.speedup_compiled = c / r.mean if c else None


def e2e_overheads(rows: list[Row]) -> dict[str, float]:
    """Each student's step time over the teacher's, in percent more, per e2e group."""
    teacher = {r.group: r.mean for r in rows if r.impl == "teacher"}
    return {f"{r.group}|{r.impl}": 100.0 * (r.mean - teacher[r.group]) / teacher[r.group]
            for r in rows if r.impl.startswith("student") and r.group in teacher}


def fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{int(b)} B"


def fmt_x(v) -> str:
    return "-" if v is None else f"{v:.3g}x"


def _gbps(r: Row) -> float | None:
    moved = r.info.get("bytes_moved")
    return moved / r.mean / 1e9 if moved else None


def op_table(rows: list[Row], copy_gbps: float | None = None) -> list[str]:
    has_compiled = any(r.impl == "compiled" for r in rows)
    head = ["backend", "mode", "mean time", "min", "GB/s", "Melem/s", "vs eager"]
    if has_compiled:
        head.append("vs compile")
    if copy_gbps:
        head.append("% of copy")
    head += ["peak mem", "saved for bwd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {"eager": 0, "compiled": 1}
    for r in sorted(rows, key=lambda r: (MODE_ORDER.get(r.mode, 9), order.get(r.impl, 2),
                                         r.impl)):
        gbps = _gbps(r)
        cells = [r.label, r.mode, f"{fmt_time(r.mean)} ± {fmt_time(r.stddev)}",
                 fmt_time(r.info.get("min", r.mean)),
                 "-" if gbps is None else f"{gbps:.3g}",
                 f"{r.info['numel'] / r.mean / 1e6:.4g}", fmt_x(r.speedup_eager)]
        if has_compiled:
            cells.append(fmt_x(r.speedup_compiled))
        if copy_gbps:
            cells.append("-" if gbps is None else f"{100 * gbps / copy_gbps:.1f}%")
        cells += [fmt_bytes(r.info.get("peak_mem_bytes")), fmt_bytes(r.info.get("saved_bytes"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def e2e_table(rows: list[Row]) -> list[str]:
    over = e2e_overheads(rows)
    lines = ["| model | backend | mean step | images/s | overhead vs teacher | peak mem |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.impl != "teacher", r.impl)):
        pct = over.get(f"{r.group}|{r.impl}")
        lines.append(
            f"| {'teacher' if r.impl == 'teacher' else 'student'} | {r.info.get('backend')} | "
            f"{fmt_time(r.mean)} ± {fmt_time(r.stddev)} | {r.info['batch'] / r.mean:.4g} | "
            f"{'-' if pct is None else f'{pct:+.1f}%'} | "
            f"{fmt_bytes(r.info.get('peak_mem_bytes'))} |")
    return lines


def _groups(rows):
    """Rows by group, in the order of the run, end-to-end groups last."""
    seen = {}
    for r in sorted(rows, key=lambda r: r.mode == "train step"):
        seen.setdefault(r.group, []).append(r)
    return seen


def header(data: dict, note: str | None) -> list[str]:
    meta = data.get("anoise", {})
    env = meta.get("environment", {})
    mi = data.get("machine_info", {})
    cpu = env.get("cpu_model") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor")
    lines = ["# anoise benchmark results", ""]
    if note:
        lines += [f"> {note}", ""]
    machine = f"{cpu} ({env.get('cpu_count', '?')} cores visible, torch threads: " \
              f"{env.get('torch_threads', '?')})"
    if env.get("gpu"):
        machine = f"{env['gpu']}; host CPU {machine}"
    lines += [
        f"- Date: {data.get('datetime', '?')}",
        f"- Device benchmarked: {env.get('device', '?')}",
        f"- Machine: {machine}",
        f"- Versions: torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), "
        f"triton {env.get('triton')}, python {env.get('python', '?')}",
    ]
    if env.get("load_average") is not None:
        lines.append(f"- Load average (1, 5, 15 min) at the start: "
                     f"{meta.get('load_average_at_start')}, at the end: {env['load_average']}; "
                     f"OMP_WAIT_POLICY={env.get('omp_wait_policy')}")
    commands = meta.get("commands") or [meta.get("command", "?")]
    lines += [f"- Command: `{c}`" for c in commands]
    backends = env.get("backends") or {}
    if backends:
        parts = [f"{n}: {'usable' if ok else 'unusable (' + (why or '?') + ')'}"
                 for n, (ok, why) in backends.items()]
        lines.append("- Backends: " + "; ".join(parts))
    return lines + [""]


BYTES_NOTE = [
    "Effective GB/s counts the passes over memory an ideal fused implementation needs, in "
    "units of `numel * itemsize`: forward (batch statistics) 3 (read x for the statistics, "
    "read x again, write y); forward+backward 7 (the forward's 3, then read dy for "
    "`g_c = sum(dy * eps)`, read dy and x and write dx); eval with running statistics 2 (read "
    "x, write y). The noise is regenerated from the seed, never read. Times are the mean over "
    "rounds ± their standard deviation. `peak mem`: CUDA memory allocated during the call above "
    "what was allocated before it (GPU only). `saved for bwd`: bytes of the storages autograd "
    "keeps between forward and backward when x requires grad (measured with "
    "`torch.autograd.graph.saved_tensors_hooks`).",
    "",
]


def markdown(rows: list[Row], data: dict, note: str | None = None, png: str | None = None,
             copy_gbps: float | None = None) -> str:
    lines = header(data, note) + ["## How to read", ""] + BYTES_NOTE
    if copy_gbps:
        lines += [f"Measured device copy bandwidth (roofline): {copy_gbps:.4g} GB/s.", ""]
    if png:
        lines += [f"![speed-up over the eager reference]({png})", ""]
    for group, grows in _groups(rows).items():
        lines += [f"## {group}", ""]
        lines += e2e_table(grows) if grows[0].mode == "train step" else op_table(grows, copy_gbps)
        lines.append("")
    skipped = data.get("anoise", {}).get("skipped", [])
    if skipped:
        reasons: dict[str, list[str]] = {}
        for s in skipped:
            reasons.setdefault(s["reason"], []).append(s["name"])
        lines += ["## Rows not run", "", "| rows | reason |", "|---|---|"]
        for why, names in reasons.items():
            lines.append(f"| {len(names)} (e.g. `{names[0]}`) | {why} |")
        lines.append("")
    return "\n".join(lines)


def chart(rows: list[Row], path) -> None:
    """Bar chart of speed-up over eager: one panel per mode, bars per shape and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [r for r in rows if r.speedup_eager is not None and r.mode in MODE_ORDER]
    modes = sorted({r.mode for r in ops}, key=MODE_ORDER.get) or ["forward"]
    groups = list(_groups(ops))
    impls = sorted({r.impl for r in ops}, key=lambda i: ({"eager": 0, "compiled": 1}.get(i, 2), i))
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(8, 0.9 * len(groups) + 3),
                                                      3.2 * len(modes)), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, g in enumerate(groups):
                r = next((r for r in ops if r.group == g and r.mode == mode and r.impl == impl),
                         None)
                if r is not None:
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r.speedup_eager)
            ax.bar(xs, ys, width, label=LABELS.get(impl, impl))
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_ylabel("speed-up over eager")
        ax.set_title(mode)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g.removeprefix("op ") for g in groups], rotation=30, ha="right",
                           fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(rows: list[Row], copy_gbps: float | None = None, shape: str | None = None) -> str:
    """A short plain-text table: fused backends' forward rows (of ``shape`` if given)."""
    out = [f"{'group':<28} {'backend':<10} {'mode':<8} {'mean':>10} {'GB/s':>8} "
           f"{'%copy':>6} {'vs eager':>9} {'vs compile':>10}"]
    for r in rows:
        if r.impl in ("eager", "compiled", "teacher") or r.mode == "train step":
            continue
        if shape and shape not in r.group:
            continue
        gbps = _gbps(r)
        pct = f"{100 * gbps / copy_gbps:.1f}" if (copy_gbps and gbps) else "-"
        out.append(f"{r.group:<28} {r.impl:<10} {r.mode:<8} {fmt_time(r.mean):>10} "
                   f"{(gbps or 0):>8.1f} {pct:>6} {fmt_x(r.speedup_eager):>9} "
                   f"{fmt_x(r.speedup_compiled):>10}")
    for key, pct in e2e_overheads(rows).items():
        out.append(f"{key.replace('|', ' ')}: {pct:+.1f}% step time over the teacher")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="pytest-benchmark JSON files (--benchmark-json)")
    p.add_argument("--out", help="Markdown file to write")
    p.add_argument("--png", help="speed-up chart to write (its path is linked from --out)")
    p.add_argument("--note", help="a line shown under the title")
    p.add_argument("--copy-gbps", type=float, help="measured copy bandwidth, for %% of copy")
    p.add_argument("--summary", action="store_true", help="print a short plain-text table")
    p.add_argument("--shape", help="with --summary: only groups containing this text")
    args = p.parse_args(argv)
    rows, data = load(*args.json)
    if args.summary:
        print(summary(rows, args.copy_gbps, args.shape))
    png_link = None
    if args.png:
        chart(rows, args.png)
        if args.out:
            png_link = str(Path(args.png).resolve().relative_to(Path(args.out).resolve().parent)) \
                if Path(args.png).resolve().is_relative_to(Path(args.out).resolve().parent) \
                else args.png
    if args.out:
        Path(args.out).write_text(markdown(rows, data, args.note, png_link, args.copy_gbps))
    if not (args.out or args.summary):
        print(markdown(rows, data, args.note, None, args.copy_gbps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
