"""One training seed of the demo: every model, the attack suite on each, per-image results.

:func:`train_models` (one seed) and :func:`attack_row` (one model) each seed the generators
themselves, so their results depend only on their arguments, not on which process ran them
or what ran before: ``python -m anoise.demo --jobs N`` gives the same tables for every N.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from .. import attacks as A
from .. import evaluation
from ..apgd import apgd
from ..baselines import pni_alphas, to_pni, to_rse, without_noise
from ..convert import to_stochastic
from ..training import fit, progress_bar, recalibrate, train_student
from .model import SmallCNN

# The L-inf attacks, in table order; the worst case is taken per image over these and the
# clean input (an attacker may leave an image unchanged), see anoise.attacks.evaluate.
LINF_ATTACKS = ("FGSM", "PGD", "EOT-PGD", "EOT-PGD margin", "EOT-PGD more draws",
                "APGD-CE", "APGD-DLR", "ensemble", "transfer")
WORST = evaluation.WORST
NOISE_OFF = ", noise off"


@dataclass
class SeedResult:
    """What one training seed produced (everything the report needs)."""

    seed: int
    rows: list[str]
    results: dict[str, dict[str, A.Result]]
    chosen: dict[str, list[int]]  # per row: images whose worst case came from each input
    cw: dict[str, dict]
    pni_alphas: list[float]
    seconds: float
    slices: list = field(default_factory=list)  # boundary panels (first seed only)
    slice_label: int = -1
    checks: dict[str, list[dict]] = field(default_factory=dict)  # per row: SanityCheck dicts


def row_names(args) -> list[str]:
    """Every row of the tables, in order (the noise-off twin right after its model)."""
    names = ["teacher", "teacher fine-tuned a=0 (control)"]
    for alpha in args.alphas:
        names += [f"student a={alpha:g}", f"student a={alpha:g}{NOISE_OFF}"]
    scratch = f"student a={args.main_alpha:g}, from scratch"
    rse = f"RSE ({args.rse_input_std:g}/{args.rse_inner_std:g})"
    names += [scratch, scratch + NOISE_OFF, "PNI-W (adv. trained)", "PNI-W" + NOISE_OFF,
              rse, "RSE" + NOISE_OFF, "teacher + PGD adv. fine-tune"]
    return names


def make_suite(args, model, source, stochastic: bool) -> dict[str, A.Attack]:
    """The attacks run on ``model``: ``source`` is its noise-off twin (transfer attacks).

    On a deterministic model every noise draw is the same, so the EOT attacks use one draw
    per gradient there (the same attack, without the wasted passes).
    """
    eot = args.eot_samples if stochastic else 1
    more_draws = args.more_draws if stochastic else 1
    pgd = functools.partial(A.pgd, eps=args.eps, steps=args.pgd_steps)
    return {
        "FGSM": functools.partial(A.fgsm, eps=args.eps),
        "PGD": pgd,
        "EOT-PGD": functools.partial(pgd, eot_samples=eot),
        "EOT-PGD margin": functools.partial(pgd, eot_samples=eot, loss="margin",
                                            restarts=args.restarts),
        "EOT-PGD more draws": functools.partial(A.pgd, eps=args.eps,
                                                steps=args.more_draws_steps,
                                                eot_samples=more_draws, loss="margin"),
        "APGD-CE": functools.partial(apgd, eps=args.eps, steps=args.pgd_steps,
                                     eot_samples=eot),
        "APGD-DLR": functools.partial(apgd, eps=args.eps, steps=args.pgd_steps,
                                      eot_samples=eot, loss="dlr"),
        "ensemble": functools.partial(A.ensemble_pgd, eps=args.eps, steps=args.pgd_steps,
                                      samples=eot),
        "transfer": A.transfer(source, functools.partial(pgd, loss="margin",
                                                         restarts=args.restarts)),
        "C&W": functools.partial(A.cw_l2, c=args.cw_c, lr=args.cw_lr, steps=args.cw_steps,
                                 max_norm=args.cw_max_norm),
    }


def _log(args, seed: int, t0: float, msg: str) -> None:
    if not args.quiet:
        print(f"[seed {seed} {time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def train_models(args, data, seed: int, t0: float, bars: bool) -> list[tuple[str, object]]:
    """``(row name, model)`` for every row of :func:`row_names`, trained with ``seed``
    (the noise-off twins are copies: :func:`anoise.baselines.without_noise`)."""
    xtr, ytr = data["xtr"], data["ytr"]
    device = xtr.device

    def stage(name: str, offset: int) -> dict:
        _log(args, seed, t0, f"train {name}")
        torch.manual_seed(seed * 1000 + offset)
        return dict(batch_size=args.batch_size, progress=bars, seed=seed * 1000 + offset,
                    desc=f"seed {seed} {name}")

    def new_model():
        return SmallCNN(image_size=xtr.shape[-1]).to(device)

    # stage() seeds the generators: call it before building the model it trains.
    opts = stage("teacher", 1)
    teacher = fit(new_model(), xtr, ytr, epochs=args.teacher_epochs, lr=args.lr, **opts)
    recipe = dict(epochs=args.finetune_epochs, lr=args.finetune_lr, distill=args.distill)
    # The control: the students' fine-tuning recipe with the noise at zero.
    opts = stage("control a=0", 9)
    control = train_student(teacher, xtr, ytr, 0.0, **recipe, **opts)
    models = [teacher, control]
    for i, alpha in enumerate(args.alphas):
        opts = stage(f"student a={alpha:g}", 10 + i)
        student = train_student(teacher, xtr, ytr, alpha, **recipe, **opts)
        models += [student, without_noise(student)]
    opts = stage("student from scratch", 2)
    scratch = fit(to_stochastic(new_model(), args.main_alpha), xtr, ytr,
                  epochs=args.scratch_epochs, lr=args.lr, **opts)
    recalibrate(scratch, xtr, 8, args.batch_size)
    train_pgd = functools.partial(A.pgd, eps=args.eps, steps=args.adv_steps)
    opts = stage("PNI-W (adv)", 3)
    pni = fit(to_pni(teacher, args.pni_alpha), xtr, ytr, epochs=args.adv_epochs,
              lr=args.finetune_lr, adversary=train_pgd, **opts)
    opts = stage("RSE", 4)
    rse = fit(to_rse(new_model(), args.rse_input_std, args.rse_inner_std), xtr, ytr,
              epochs=args.teacher_epochs, lr=args.lr, **opts)
    opts = stage("teacher + PGD-AT", 5)
    adv = fit(copy.deepcopy(teacher), xtr, ytr, epochs=args.adv_epochs, lr=args.finetune_lr,
              adversary=train_pgd, **opts)
    for m in (scratch, pni, rse):
        models += [m, without_noise(m)]
    models.append(adv)
    return list(zip(row_names(args), models, strict=True))


# What a saved model file must agree on with the command line for its test images to be the
# ones the models were evaluated on (and not trained on).
DATA_SETTINGS = ("dataset", "seed", "test_fraction", "train_size")


def models_path(directory: str, seed: int) -> str:
    return os.path.join(directory, f"seed{seed}.pt")


def save_models(directory: str, seed: int, models: list, args) -> str:
    """Save one seed's trained models (whole modules) to ``DIR/seed{seed}.pt``; load one with
    ``torch.load(path, weights_only=False)["models"][row name]``."""
    os.makedirs(directory, exist_ok=True)
    path = models_path(directory, seed)
    torch.save(dict(models=dict(models), rows=[n for n, _ in models], seed=seed,
                    settings={k: getattr(args, k) for k in DATA_SETTINGS}), path)
    return path


def load_models(directory: str, seed: int, args) -> list[tuple[str, object]]:
    """The ``(row name, model)`` list :func:`save_models` saved for ``seed``, on
    ``args.device``; raises ``SystemExit`` if the file is missing, its rows are not this
    run's rows, or its data settings differ from this run's (other test images)."""
    path = models_path(directory, seed)
    if not os.path.exists(path):
        raise SystemExit(f"--eval-only: no saved models for seed {seed} ({path}); save them "
                         f"with python -m anoise.demo --save-models {directory}")
    saved = torch.load(path, weights_only=False, map_location=args.device)
    if saved["rows"] != row_names(args):
        raise SystemExit(f"--eval-only: {path} holds the rows {saved['rows']}, this run "
                         f"expects {row_names(args)} (pass the --alphas / --main-alpha / RSE "
                         "options it was trained with)")
    differ = {k: v for k, v in saved["settings"].items() if getattr(args, k) != v}
    if differ:
        raise SystemExit(f"--eval-only: {path} was trained with {differ}; pass the same "
                         "options so that the test images are the same")
    return [(name, saved["models"][name]) for name in saved["rows"]]


def transfer_source(name: str, models: dict):
    """The model a row's transfer attack is crafted on: its noise-off twin, else itself."""
    return models.get(name + NOISE_OFF, models[name])


def attack_row(args, data, seed: int, index: int, name: str, model, source) -> dict:
    """The attack suite on one model (:func:`anoise.evaluation.evaluate`): per-attack
    :class:`anoise.attacks.Result`, the worst case, which attack each image's worst case came
    from, the sanity checks, and C&W's perturbation sizes."""
    t0 = time.time()
    _log(args, seed, t0, f"attack {name}")
    xe, ye = data["xe"], data["ye"]
    torch.manual_seed(seed * 1000 + 100 + index)
    stochastic = A.is_stochastic(model.eval(), xe[:64])
    suite = make_suite(args, model, source, stochastic)
    bar = functools.partial(progress_bar, desc=f"seed {seed} attack {name}", enabled=args.bars)
    rep = evaluation.evaluate(
        model, xe, ye, args.eps, attacks=suite, worst_of=LINF_ATTACKS, draws=args.draws,
        select_draws=args.select_draws, steps=args.pgd_steps, eot_samples=args.eot_samples,
        checks=run_checks(args, seed), square_queries=square_queries(args),
        keep_adversarial=True, progress=bar)
    norms = (rep.adversarial["C&W"] - xe).flatten(1).norm(dim=1)
    found = norms[norms > 1e-3]  # the tanh round trip alone moves x by ~1e-5
    _log(args, seed, t0, f"attacked {name}")
    chosen = rep.wins()
    return dict(results=rep.results,
                chosen=[chosen[n] for n in ("clean",) + LINF_ATTACKS],
                checks=[c.to_dict() for c in rep.checks],
                cw=dict(found=found.numel() / norms.numel(),
                        median_l2=found.median().item() if found.numel() else None),
                seconds=time.time() - t0)


def run_checks(args, seed: int) -> bool:
    """Whether this seed's rows get the sanity checks: the first seed's only (they cost about
    as much again as the suite on a stochastic model), unless ``--no-checks``."""
    return not getattr(args, "no_checks", False) and seed == args.seed


def square_queries(args) -> int:
    """Queries of the gradient-free sanity check: 10 per PGD step (it costs a forward pass
    per query and draw, a fraction of a gradient step)."""
    return 10 * args.pgd_steps


def assemble(seed: int, models: list, rows: dict, train_seconds: float) -> SeedResult:
    """A :class:`SeedResult` from the trained models and each row's :func:`attack_row`."""
    names = [n for n, _ in models]
    return SeedResult(
        seed=seed, rows=names, results={n: rows[n]["results"] for n in names},
        chosen={n: rows[n]["chosen"] for n in names}, cw={n: rows[n]["cw"] for n in names},
        checks={n: rows[n]["checks"] for n in names},
        pni_alphas=pni_alphas(dict(models)["PNI-W (adv. trained)"]),
        seconds=train_seconds + sum(rows[n]["seconds"] for n in names))


def trained_models(args, data, seed: int, t0: float, bars: bool) -> list[tuple[str, object]]:
    """This seed's models: loaded from ``--eval-only DIR``, else trained (and saved to
    ``args.save_models`` when set)."""
    if getattr(args, "eval_only", None):
        return load_models(args.eval_only, seed, args)
    models = train_models(args, data, seed, t0, bars)
    if getattr(args, "save_models", None):
        save_models(args.save_models, seed, models, args)
    return models


def run_seed(args, data, seed: int, slices: bool = False) -> SeedResult:
    """Train (or load) every model with ``seed``, attack each with the suite, in this
    process.

    ``data``: ``{"xtr", "ytr", "xe", "ye"}`` tensors.  ``slices``: also compute the
    decision-boundary panels (from this seed's models).
    """
    t0 = time.time()
    torch.set_num_threads(args.threads)
    models = trained_models(args, data, seed, t0, args.bars)
    train_seconds = time.time() - t0
    by_name = dict(models)
    rows = {name: attack_row(args, data, seed, i, name, model, transfer_source(name, by_name))
            for i, (name, model) in enumerate(models)}
    out = assemble(seed, models, rows, train_seconds)
    if slices:
        out.slices, out.slice_label = boundary_panels(args, by_name, data["xe"], data["ye"],
                                                      seed)
    return out


def boundary_panels(args, models: dict, xe, ye, seed: int):
    """Predicted classes on a 2-D slice through one test image, for the figure's panels."""
    from . import plots

    teacher = models["teacher"]
    with torch.no_grad():
        ok = teacher(xe).argmax(1) == ye
    idx = int(ok.nonzero()[0]) if ok.any() else 0
    x0, y0 = xe[idx], ye[idx]
    d1, d2 = plots.slice_directions(teacher, x0, y0, seed)
    r, g = args.boundary_radius, args.grid
    main = f"student a={args.main_alpha:g}"
    torch.manual_seed(seed * 1000 + 201)
    panels = [
        ("teacher", plots.slice_labels(teacher, x0, d1, d2, r, g)),
        ("control (fine-tuned, a=0)",
         plots.slice_labels(models["teacher fine-tuned a=0 (control)"], x0, d1, d2, r, g)),
        (f"{main}, noise off", plots.slice_labels(models[main + NOISE_OFF], x0, d1, d2, r, g)),
        (f"{main}, one draw", plots.slice_labels(models[main], x0, d1, d2, r, g)),
        (f"{main}, ensemble of {args.boundary_samples}",
         plots.slice_labels(models[main], x0, d1, d2, r, g, samples=args.boundary_samples)),
    ]
    top = max(args.alphas)
    if top != args.main_alpha:
        panels.append((f"student a={top:g}, one draw",
                       plots.slice_labels(models[f"student a={top:g}"], x0, d1, d2, r, g)))
    return panels, int(y0)
