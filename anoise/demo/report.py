"""The demo's numbers: aggregation over training seeds, paired differences, tables.

The tables are built from a run's ``results.json`` content, so the docs can be regenerated
from it (``python -m anoise.demo.docs``).
"""

from __future__ import annotations

import math
import re

from .zoo import LINF_ATTACKS, NOISE_OFF, WORST

COLUMNS = ("clean",) + LINF_ATTACKS + ("C&W", WORST)
METRICS = ("mean", "all_draws", "majority", "ensemble")
_PER_IMAGE = dict(mean="correct_rate", all_draws="all_correct", majority="majority_correct",
                  ensemble="ensemble_correct")


def _mean_std(values: list[float]) -> dict:
    m = sum(values) / len(values)
    s = (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
         if len(values) > 1 else 0.0)
    return dict(mean=m, std=s, values=values)


def summarise(seed_results) -> dict:
    """``summary[row][column][metric] = {mean, std, values}`` over seeds (fractions)."""
    rows = seed_results[0].rows
    out = {}
    for row in rows:
        out[row] = {}
        for col in COLUMNS:
            res = [s.results[row][col] for s in seed_results]
            cell = {m: _mean_std([getattr(r, m) for r in res]) for m in METRICS}
            cell["draw_std"] = _mean_std([r.std for r in res])
            cell["stochastic"] = res[0].stochastic
            out[row][col] = cell
    return out


def contrast_specs(args) -> list[dict]:
    """The paired comparisons the demo reports: ``a - b`` per seed, on the same images."""
    w = (WORST, "mean")
    specs = [dict(label="control (fine-tuned at a=0) - teacher, worst case", alpha=None,
                  a=("teacher fine-tuned a=0 (control)",) + w, b=("teacher",) + w)]
    for alpha in args.alphas:
        s = f"student a={alpha:g}"
        specs += [
            dict(label=f"{s} - teacher, worst case", alpha=alpha, a=(s,) + w,
                 b=("teacher",) + w),
            dict(label=f"{s} noise off - control, worst case", alpha=alpha,
                 a=(s + NOISE_OFF,) + w, b=("teacher fine-tuned a=0 (control)",) + w),
            dict(label=f"{s} noise on - noise off, worst case", alpha=alpha, a=(s,) + w,
                 b=(s + NOISE_OFF,) + w),
            dict(label=f"{s} noise on - noise off, clean", alpha=alpha,
                 a=(s, "clean", "mean"), b=(s + NOISE_OFF, "clean", "mean")),
            dict(label=f"{s}: all draws - per-draw mean, worst case", alpha=alpha,
                 a=(s, WORST, "all_draws"), b=(s,) + w),
            dict(label=f"{s}: EOT-PGD - PGD", alpha=alpha, a=(s, "EOT-PGD", "mean"),
                 b=(s, "PGD", "mean")),
            dict(label=f"{s}: worst case - EOT-PGD", alpha=alpha, a=(s,) + w,
                 b=(s, "EOT-PGD", "mean")),
        ]
    main = f"student a={args.main_alpha:g}"
    specs += [
        dict(label=f"{main}, from scratch - teacher-init, worst case", alpha=None,
             a=(main + ", from scratch",) + w, b=(main,) + w),
        dict(label=f"teacher + PGD adv. fine-tune - {main}, worst case", alpha=None,
             a=("teacher + PGD adv. fine-tune",) + w, b=(main,) + w),
    ]
    return specs


def contrasts(seed_results, specs) -> list[dict]:
    """Each spec's difference per seed, its mean and std over seeds, and its sampling error.

    The sampling error is that of a paired difference on the same images (std of the
    per-image differences / sqrt(n)), root-mean-square over seeds; it does not shrink with
    more seeds, since every seed attacks the same images.  ``clear`` holds when every seed
    gives the same sign and the mean exceeds both the std over seeds and twice the sampling
    error: only then does the report state the difference as a finding.
    """
    out = []
    for spec in specs:
        diffs, ses = [], []
        for s in seed_results:
            ra, rb = (getattr(s.results[row][col], _PER_IMAGE[m]).double()
                      for row, col, m in (spec["a"], spec["b"]))
            d = ra - rb
            diffs.append(d.mean().item())
            ses.append(d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else 0.0)
        stats = _mean_std(diffs)
        se = math.sqrt(sum(e * e for e in ses) / len(ses))
        same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
        clear = same_sign and abs(stats["mean"]) > max(stats["std"], 2 * se)
        out.append(dict(spec, mean=stats["mean"], std=stats["std"], per_seed=diffs,
                        sampling_se=se, clear=clear))
    return out


def _signed(v: float) -> str:
    return f"{round(100 * v, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _cell(c: dict, plus: str) -> str:
    return f"{100 * c['mean']:.1f}{plus}{100 * c['std']:.1f}"


def table(summary: dict, columns: list[tuple[str, str, str]], markdown: bool) -> str:
    """Rows of ``summary``; ``columns`` are ``(header, column, metric)``."""
    plus = "±" if markdown else "+-"
    body = [[row] + [_cell(summary[row][col][m], plus) for _, col, m in columns]
            for row in summary]
    return _layout(["model"] + [h for h, _, _ in columns], body, markdown)


def _layout(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
    fmt = [f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]]
    return "\n".join("  ".join(f.format(v) for f, v in zip(fmt, r, strict=True))
                     for r in [header] + body)


def contrast_table(rows: list[dict], markdown: bool) -> str:
    plus = "±" if markdown else "+-"
    body = [[c["label"], f"{_signed(c['mean'])}{plus}{100 * c['std']:.1f}",
             f"{100 * c['sampling_se']:.1f}", " ".join(_signed(d) for d in c["per_seed"]),
             "yes" if c["clear"] else "no"] for c in rows]
    return _layout(["difference (points)", "mean ± std over seeds".replace("±", plus),
                    "sampling error", "per seed", "beyond spread"], body, markdown)


def cw_table(result: dict, markdown: bool) -> str:
    plus = "±" if markdown else "+-"
    body = []
    for row, c in result["cw"].items():
        acc = result["summary"][row]["C&W"]["mean"]
        med = [v for v in c["median_l2"] if v is not None]
        body.append([row, f"{100 * sum(c['found']) / len(c['found']):.1f}",
                     f"{sum(med) / len(med):.2f}" if med else "-", _cell(acc, plus)])
    return _layout(["model", "found (%)", "median L2", "accuracy on fresh draws (%)"], body,
                   markdown)


def chosen_table(result: dict, markdown: bool) -> str:
    """Share of images (%) whose worst-case input came from each attack, mean over seeds."""
    names = ("clean",) + LINF_ATTACKS
    body = []
    for row in result["rows"]:
        counts = [s["chosen"][row] for s in result["per_seed"]]
        n = sum(counts[0])
        body.append([row] + [f"{100 * sum(c[i] for c in counts) / (n * len(counts)):.0f}"
                             for i in range(len(names))])
    return _layout(["model"] + list(names), body, markdown)


def main_columns(k: int) -> list[tuple[str, str, str]]:
    return [("clean", "clean", "mean"), (f"clean, all {k} draws", "clean", "all_draws"),
            ("PGD", "PGD", "mean"), ("EOT-PGD", "EOT-PGD", "mean"),
            ("worst case", WORST, "mean"), (f"worst case, all {k} draws", WORST, "all_draws"),
            ("worst case, majority", WORST, "majority"),
            ("worst case, ensemble", WORST, "ensemble")]


def attack_columns() -> list[tuple[str, str, str]]:
    return [(c, c, "mean") for c in ("clean",) + LINF_ATTACKS + (WORST,)]


def per_image_columns(k: int) -> list[tuple[str, str, str]]:
    names = dict(mean="per-draw mean", all_draws=f"all {k} draws", majority="majority",
                 ensemble="ensemble")
    return [(f"{col}, {names[m]}", col, m) for col in ("clean", WORST) for m in METRICS]


def describe(result: dict) -> str:
    """The settings line printed above the tables."""
    s = result["settings"]
    seeds = ", ".join(str(v) for v in result["seeds"])
    return (f"{result['eval_size']} test images ({result['data']}); {len(result['seeds'])} "
            f"training seeds ({seeds}); every image classified on {s['draws']} noise draws. "
            f"L-inf eps {s['eps']:g}. PGD: {s['pgd_steps']} steps, step {2.5 / s['pgd_steps']:g}"
            f" eps, random start. EOT-PGD: the same, each gradient averaged over "
            f"{s['eot_samples']} draws. EOT-PGD margin: logit-margin loss, best of "
            f"{s['restarts']} restarts. EOT-PGD more draws: margin, {s['more_draws_steps']} "
            f"steps x {s['more_draws']} draws. APGD-CE / APGD-DLR: Auto-PGD (Croce and Hein "
            f"2020), {s['pgd_steps']} steps, each gradient averaged over {s['eot_samples']} "
            f"draws, each image's best point kept. Ensemble: PGD on the log of the mean softmax "
            f"over {s['eot_samples']} draws. Transfer: PGD (margin, {s['restarts']} restarts) "
            f"on the noise-off twin. Worst case: per image, of the clean input and every "
            f"L-inf attack's example, the one with the fewest correct of {s['select_draws']} "
            f"further draws (then the lowest mean probability of the true class), classified "
            f"again on {s['draws']} fresh draws. C&W-L2: c = {s['cw_c']:g}, "
            f"{s['cw_steps']} Adam steps.")


def checks_summary(seed_results) -> dict:
    """``{row: [{name, passed, accuracy, reference, detail, seeds} per check]}``, values per
    seed that ran the checks (the demo runs them on the first seed)."""
    out = {}
    checked = [s for s in seed_results if any(s.checks.values())]
    if not checked:
        return out
    for row in seed_results[0].rows:
        per_seed = [s.checks.get(row, []) for s in checked]
        out[row] = [dict(name=c["name"], passed=[p[i]["passed"] for p in per_seed],
                         accuracy=[p[i]["accuracy"] for p in per_seed],
                         reference=[p[i]["reference"] for p in per_seed],
                         detail=[p[i]["detail"] for p in per_seed],
                         seeds=[s.seed for s in checked])
                    for i, c in enumerate(per_seed[0])]
    return out


CHECK_HEADERS = ("gradient-free: Square / best gradient attack",
                 "large eps: APGD-CE at eps 1", "more effort: APGD-CE 2x steps and draws / "
                 "worst case")


def checks_table(result: dict, markdown: bool) -> str:
    """Each row's sanity checks (accuracy %, mean over the seeds that ran them), FAIL where
    one failed."""
    body = []
    for row, checks in result.get("checks", {}).items():
        if not checks:
            continue
        cells = []
        for c in checks:
            acc = 100 * sum(c["accuracy"]) / len(c["accuracy"])
            ref = 100 * sum(c["reference"]) / len(c["reference"])
            failed = len(c["passed"]) - sum(c["passed"])
            cell = f"{acc:.1f}" if c["name"].startswith("accuracy goes") else \
                f"{acc:.1f} / {ref:.1f}"
            cells.append(cell + (" FAIL" if failed else " ok"))
        body.append([row] + cells)
    if not body:
        return "(not run)"
    return _layout(["model"] + list(CHECK_HEADERS[:len(body[0]) - 1]), body, markdown)


def check_warnings(result: dict) -> list[str]:
    """One line per failed check and seed."""
    return [f"WARNING: {row}, seed {seed}: sanity check '{c['name']}' failed: {detail}"
            for row, checks in result.get("checks", {}).items() for c in checks
            for seed, ok, detail in zip(c["seeds"], c["passed"], c["detail"], strict=True)
            if not ok]


BLOCKS = ("main", "attacks", "per-image", "chosen", "cw", "contrasts", "contrasts-main",
          "checks", "setup", "time")


def sections(result: dict, markdown: bool) -> dict[str, str]:
    """Every part of the report, by name: :data:`BLOCKS`, the docs' generated blocks."""
    k = result["settings"]["draws"]
    summ = result["summary"]
    main_alpha = result["settings"]["main_alpha"]
    return {
        "main": table(summ, main_columns(k), markdown),
        "attacks": table(summ, attack_columns(), markdown),
        "per-image": table(summ, per_image_columns(k), markdown),
        "cw": cw_table(result, markdown),
        "chosen": chosen_table(result, markdown),
        "contrasts": contrast_table(result["contrasts"], markdown),
        "contrasts-main": contrast_table(
            [c for c in result["contrasts"] if c["alpha"] in (None, main_alpha)], markdown),
        "checks": checks_table(result, markdown),
        "setup": describe(result),
        "time": run_time(result),
    }


def run_time(result: dict) -> str:
    if "seconds" not in result:
        return "still running"
    return (f"{result['seconds'] / 60:.1f} min wall clock ({result['jobs']} process(es) x "
            f"{result['threads']} thread(s); 1-minute load average {result['load'][0]:.1f} "
            f"at the start, {result['load'][1]:.1f} at the end)")


TITLES = {
    "main": "Accuracy (%), mean ± std over training seeds",
    "attacks": "Accuracy (%) under each attack (per-draw mean), mean ± std over seeds",
    "per-image": "Per-image figures (%), mean ± std over seeds",
    "chosen": "Where the worst case came from: share of images (%) whose chosen input each attack "
              "gave (ties go to the earlier column)",
    "cw": "C&W-L2, minimal perturbations: NOT a robustness measure (fresh noise undoes them)",
    "contrasts": "Paired differences (points), same images, per seed",
    "checks": "Sanity checks of the evaluation, first seed (accuracy %; a FAIL means the "
              "attacks may be too weak there)",
}


def markdown_report(result: dict) -> str:
    parts = sections(result, markdown=True)
    out = [f"Settings: {parts['setup']}", f"Time: {parts['time']}."]
    for name in ("main", "attacks", "per-image", "chosen", "cw", "contrasts", "checks"):
        out += [f"### {TITLES[name]}", parts[name]]
    out += check_warnings(result)
    return "\n\n".join(out) + "\n"


def text_report(result: dict) -> str:
    parts = sections(result, markdown=False)
    out = [parts["setup"]]
    for name in ("main", "attacks", "per-image", "chosen", "cw", "contrasts", "checks"):
        out += [TITLES[name].replace("±", "+-") + ":", parts[name]]
    warnings = check_warnings(result)
    if warnings:
        out.append("\n".join(warnings))
    return "\n\n".join(out)


_BLOCK = re.compile(r"(<!-- BEGIN demo:([\w-]+) -->\n)(.*?)(<!-- END demo:\2 -->)", re.S)


def update_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of every ``<!-- BEGIN demo:NAME -->`` block with ``blocks[NAME]``."""
    def sub(m):
        if m.group(2) not in blocks:
            raise KeyError(f"no generated block called {m.group(2)!r} (have {sorted(blocks)})")
        return m.group(1) + blocks[m.group(2)].rstrip("\n") + "\n" + m.group(4)

    return _BLOCK.sub(sub, text)


def per_seed_json(seed_results) -> list[dict]:
    """Per-seed figures for results.json (per-image tensors are summarised, not stored)."""
    return [dict(seed=s.seed, seconds=round(s.seconds, 1), pni_alphas=s.pni_alphas,
                 chosen=s.chosen,
                 table={row: {col: dict(r.metrics(), per_draw=r.per_draw, draw_std=r.std)
                              for col, r in s.results[row].items()} for row in s.rows})
            for s in seed_results]


def cw_summary(seed_results) -> dict:
    return {row: dict(found=[s.cw[row]["found"] for s in seed_results],
                      median_l2=[s.cw[row]["median_l2"] for s in seed_results])
            for row in seed_results[0].rows}

