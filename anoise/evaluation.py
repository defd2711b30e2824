"""Adversarial robustness of a classifier that may be stochastic, measured so that it is hard
to over-rate: :func:`evaluate` runs an adaptive attack suite and the literature's sanity
checks, and returns a :class:`RobustnessReport` (per attack, per image, the worst case).

Works on any ``nn.Module`` mapping inputs in ``[0, 1]`` to logits: anoise students,
PNI / RSE-style models, dropout kept on at inference, deterministic models.  See
``docs/evaluation.md`` for what each figure means and which one to report.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import attacks as A
from .apgd import NORMS, apgd, square

WORST = "worst case"


@dataclass
class SanityCheck:
    """One check of the evaluation itself: ``passed`` is False when the attacks are likely
    too weak (the robustness would be over-rated); ``accuracy`` is the check attack's
    per-draw mean and ``reference`` the figure it is compared with."""

    name: str
    passed: bool
    accuracy: float
    reference: float
    detail: str

    def to_dict(self) -> dict:
        return dict(name=self.name, passed=self.passed, accuracy=self.accuracy,
                    reference=self.reference, detail=self.detail)


@dataclass
class RobustnessReport:
    """What :func:`evaluate` measured.

    ``results[name]``: an :class:`anoise.attacks.Result` for ``"clean"``, each attack and
    ``"worst case"`` (per-draw accuracies, and per image: share of correct draws, correct on
    all draws, majority vote, ensemble = mean softmax over the draws).  ``winner[i]``: the
    input (``"clean"`` or an attack) chosen as image ``i``'s worst case.  ``adversarial``:
    each attack's examples and the worst-case inputs (with ``keep_adversarial=True``).
    ``checks``: the sanity checks and ``check_results`` their attacks' results.
    """

    norm: str
    eps: float
    stochastic: bool
    draws: int
    results: dict[str, A.Result]
    worst_of: tuple[str, ...]
    winner: list[str]
    checks: list[SanityCheck] = field(default_factory=list)
    check_results: dict[str, A.Result] = field(default_factory=dict)
    adversarial: dict[str, Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def worst(self) -> A.Result:
        """The per-image worst case: the figure to report."""
        return self.results[WORST]

    @property
    def warnings(self) -> list[str]:
        """One line per failed sanity check."""
        return [f"WARNING: sanity check '{c.name}' failed: {c.detail}" for c in self.checks
                if not c.passed]

    def wins(self) -> dict[str, int]:
        """Number of images whose worst case each input gave."""
        return {name: self.winner.count(name) for name in self.worst_of}

    def table(self) -> str:
        """The report as text: per-input figures, the worst case, the checks, the warnings."""
        k = self.draws if self.stochastic else 1
        wins = self.wins()
        header = ["input", "per-draw mean", "std over draws", f"all {k} draws", "majority",
                  "ensemble", "worst case from"]
        body = []
        for name, r in list(self.results.items()) + [
                (f"{n} (check)", r) for n, r in self.check_results.items()]:
            body.append([name, _pct(r.mean), _pct(r.std), _pct(r.all_draws), _pct(r.majority),
                         _pct(r.ensemble), str(wins[name]) if name in wins else ""])
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        lines = [f"{self.norm} eps {self.eps:g}, {len(self.winner)} images, "
                 + (f"stochastic model: every input classified on {k} noise draws"
                    if self.stochastic else "deterministic model"),
                 "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                           for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
        lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                            for i, (v, w) in enumerate(zip(row, widths, strict=True)))
                  for row in body]
        w = self.worst
        lines.append(f"Report: worst-case accuracy {_pct(w.mean)}% per draw"
                     + (f" ({_pct(w.all_draws)}% correct on all {k} draws)"
                        if self.stochastic else "") + ".")
        for c in self.checks:
            lines.append(f"check {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
        lines += self.warnings
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> dict:
        """Every figure as plain numbers (accuracies as fractions in [0, 1])."""
        def result(r: A.Result) -> dict:
            return dict(r.metrics(), per_draw=r.per_draw, std=r.std)

        return dict(norm=self.norm, eps=self.eps, stochastic=self.stochastic,
                    draws=self.draws, settings=self.settings,
                    results={n: result(r) for n, r in self.results.items()},
                    worst_of=list(self.worst_of), wins=self.wins(), winner=self.winner,
                    checks=[c.to_dict() for c in self.checks],
                    check_results={n: result(r) for n, r in self.check_results.items()},
                    warnings=self.warnings)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def default_attacks(
    eps: float,
    *,
    norm: str = "Linf",
    steps: int = 20,
    eot_samples: int = 10,
    restarts: int = 1,
    num_classes: int = 10,
    noise_off: nn.Module | None = None,
) -> dict[str, A.Attack]:
    """The adaptive suite :func:`evaluate` runs by default, ``name -> attack(model, x, y)``.

    L-inf: PGD on one draw per gradient (the naive attack), EOT-PGD (cross-entropy and
    margin loss), APGD-CE and APGD-DLR with EOT (:func:`anoise.apgd.apgd`), PGD on the
    ensemble (:class:`anoise.attacks.MeanSoftmax`), and with ``noise_off`` (the model with
    its noise removed, e.g. :func:`anoise.baselines.without_noise`) APGD-DLR crafted on it
    (transfer).  L2: the APGD attacks, APGD-CE on the ensemble and the transfer attack.
    Pass ``eot_samples=1`` for a deterministic model.  APGD-DLR needs >= 3 classes.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    ap = functools.partial(apgd, eps=eps, norm=norm, steps=steps, restarts=restarts)
    suite: dict[str, A.Attack] = {}
    if norm == "Linf":
        pgd = functools.partial(A.pgd, eps=eps, steps=steps)
        suite["PGD"] = pgd
        if eot_samples > 1:
            suite["EOT-PGD"] = functools.partial(pgd, eot_samples=eot_samples)
        suite["EOT-PGD margin"] = functools.partial(pgd, eot_samples=eot_samples,
                                                    loss="margin", restarts=max(restarts, 1))
    suite["APGD-CE"] = functools.partial(ap, eot_samples=eot_samples)
    if num_classes >= 3:
        suite["APGD-DLR"] = functools.partial(ap, eot_samples=eot_samples, loss="dlr")
    if eot_samples > 1:
        if norm == "Linf":
            suite["ensemble"] = functools.partial(A.ensemble_pgd, eps=eps, steps=steps,
                                                  samples=eot_samples)
        else:
            def ensemble(model, x, y):
                return ap(A.MeanSoftmax(model, eot_samples), x, y,
                          loss=lambda logp, t: -logp.gather(1, t[:, None]).squeeze(1))
            suite["ensemble"] = ensemble
    if noise_off is not None:
        suite["transfer"] = A.transfer(
            noise_off, functools.partial(ap, loss="dlr" if num_classes >= 3 else "ce"))
    return suite


def _budget_error(name: str, x: Tensor, adv: Tensor, eps: float, norm: str) -> str | None:
    if adv.shape != x.shape:
        return f"attack {name!r} returned shape {tuple(adv.shape)}, expected {tuple(x.shape)}"
    if adv.min() < 0 or adv.max() > 1:
        return f"attack {name!r} left the [0, 1] box"
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    if size.max() > eps * (1 + 1e-4) + 1e-6:
        return (f"attack {name!r} exceeds the {norm} budget {eps:g} "
                f"(largest perturbation {size.max().item():.4g})")
    return None


def _paired_se(a: A.Result, b: A.Result) -> float:
    d = a.correct_rate.double() - b.correct_rate.double()
    return d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else 0.0


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    attacks: dict[str, A.Attack] | None = None,
    steps: int = 20,
    eot_samples: int = 10,
    restarts: int = 1,
    noise_off: nn.Module | None = None,
    draws: int = 10,
    select_draws: int | None = None,
    worst_of: tuple[str, ...] | None = None,
    checks: bool = True,
    square_queries: int = 300,
    large_eps: float | None = None,
    large_eps_accuracy: float = 0.05,
    effort_factor: int = 2,
    keep_adversarial: bool = False,
    batch_size: int = 1000,
    seed: int | None = None,
    progress: Callable | None = None,
) -> RobustnessReport:
    """Robust accuracy of ``model`` on ``(x, y)`` (inputs in ``[0, 1]``) within the ``norm``
    (``"Linf"`` or ``"L2"``) ball of radius ``eps``, in eval mode (the mode is restored).

    The attacks are ``attacks`` (``name -> attack(model, x, y)``, each returning inputs
    inside the budget) or :func:`default_attacks` with ``steps``, ``eot_samples`` (noise
    draws per gradient; 1 on a deterministic model), ``restarts`` and ``noise_off``.  Each
    attack's inputs are classified on ``draws`` fresh noise draws (once if the model is
    deterministic).  The worst case takes, per image, of the clean input and the inputs of
    ``worst_of`` (default: every attack), the one classified correctly on the fewest of
    ``select_draws`` (default ``3 * draws``) *separate* draws, and scores it on ``draws``
    fresh ones, so choosing among noisy estimates does not bias the figure.

    ``checks``: also run the sanity checks, each a :class:`SanityCheck`; a failure is a
    warning in :meth:`RobustnessReport.table`:

    * gradient-free: :func:`anoise.apgd.square` (``square_queries`` queries) must not beat
      the best gradient attack by more than twice the paired sampling error;
    * large eps: APGD-CE at ``large_eps`` (default: the whole box, 1 for L-inf and
      ``sqrt(dim)`` for L2) must bring the accuracy to ``large_eps_accuracy`` or below;
    * more effort: APGD-CE with ``effort_factor`` times the steps and EOT draws must not
      beat the worst case by more than twice the paired sampling error.

    ``seed`` seeds torch's generators first (reproducible noise and random starts).
    ``progress`` wraps the attack iterable (e.g. ``functools.partial(tqdm, desc=...)``).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[:1] != y.shape:
        raise ValueError("x and y must be tensors with one label per input, got shapes "
                         f"{getattr(x, 'shape', None)} and {getattr(y, 'shape', None)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must be in [0, 1] (attacks clamp to that box)")
    for name, value in (("effort_factor", effort_factor), ("square_queries", square_queries)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    select_draws = 3 * draws if select_draws is None else select_draws
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        stochastic = A.is_stochastic(model, x[:batch_size])
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        eot = eot_samples if stochastic else 1
        if attacks is None:
            attacks = default_attacks(eps, norm=norm, steps=steps, eot_samples=eot,
                                      restarts=restarts, num_classes=num_classes,
                                      noise_off=noise_off)
        if worst_of is None:
            worst_of = tuple(attacks)
        unknown = [n for n in worst_of if n not in attacks]
        if unknown or WORST in attacks or "clean" in attacks:
            raise ValueError(f"worst_of must name attacks of {tuple(attacks)} (and no attack "
                             f"may be called 'clean' or {WORST!r}), got {worst_of!r}")
        ev = A.evaluate(model, x, y, attacks, draws=draws, batch_size=batch_size,
                        worst_case=("clean",) + tuple(worst_of), worst_name=WORST,
                        select_draws=select_draws, keep_adversarial=True, progress=progress)
        for name in worst_of:
            problem = _budget_error(name, x, ev.adversarial[name], eps, norm)
            if problem:
                raise ValueError(problem + "; leave it out of worst_of or fix it")
        names = ("clean",) + tuple(worst_of)
        winner = [names[i] for i in ev.choice.tolist()]
        report = RobustnessReport(
            norm=norm, eps=float(eps), stochastic=stochastic, draws=draws,
            results=ev.results, worst_of=names, winner=winner,
            settings=dict(steps=steps, eot_samples=eot, restarts=restarts,
                          select_draws=select_draws, attacks=list(attacks),
                          square_queries=square_queries, effort_factor=effort_factor))
        if keep_adversarial:
            report.adversarial = dict(ev.adversarial)
            stacked = torch.stack([x] + [ev.adversarial[n] for n in worst_of])
            report.adversarial[WORST] = stacked[ev.choice.to(x.device),
                                                torch.arange(x.shape[0], device=x.device)]
        if checks:
            _run_checks(report, model, x, y, eps, norm, steps, eot, draws, batch_size,
                        square_queries, large_eps, large_eps_accuracy, effort_factor,
                        gradient=[n for n in worst_of])
        return report
    finally:
        model.train(was_training)


def _run_checks(report, model, x, y, eps, norm, steps, eot, draws, batch_size,
                square_queries, large_eps, large_eps_accuracy, effort_factor, gradient):
    k = draws if report.stochastic else 1

    def score(adv: Tensor) -> A.Result:
        return A.Result.from_draws(A.draw_logits(model, adv, k, batch_size), y,
                                   report.stochastic)

    def batched(attack) -> Tensor:
        return torch.cat([attack(model, x[i:i + batch_size], y[i:i + batch_size])
                          for i in range(0, x.shape[0], batch_size)])

    results = report.check_results
    worst = report.worst
    # 1. A gradient-free attack must not beat the gradient attacks (masked gradients).
    results["Square"] = score(batched(functools.partial(
        square, eps=eps, norm=norm, queries=square_queries, eot_samples=min(eot, 4))))
    if gradient:
        best_name = min(gradient, key=lambda n: report.results[n].mean)
        best = report.results[best_name]
        se = _paired_se(results["Square"], best)
        gap = best.mean - results["Square"].mean
        report.checks.append(SanityCheck(
            "gradient-free attack does not beat the gradient attacks", gap <= 2 * se,
            results["Square"].mean, best.mean,
            f"Square {_pct(results['Square'].mean)}% vs best gradient attack ({best_name}) "
            f"{_pct(best.mean)}% (2 x sampling error {_pct(2 * se)})"))
    # 2. An unbounded attacker must win: accuracy -> ~0 as eps grows.
    if large_eps is None:
        large_eps = 1.0 if norm == "Linf" else math.sqrt(x[0].numel())
    big = f"APGD-CE eps {large_eps:g}"
    results[big] = score(batched(functools.partial(apgd, eps=large_eps, norm=norm,
                                                   steps=steps, eot_samples=eot)))
    report.checks.append(SanityCheck(
        "accuracy goes to ~0 at a large eps", results[big].mean <= large_eps_accuracy,
        results[big].mean, large_eps_accuracy,
        f"{big}: {_pct(results[big].mean)}% (should be <= {_pct(large_eps_accuracy)}%)"))
    # 3. More steps and draws must not find much more than the suite did (convergence).
    more_eot = eot * effort_factor if report.stochastic else 1
    more = f"APGD-CE {steps * effort_factor} steps x {more_eot} draws"
    results[more] = score(batched(functools.partial(
        apgd, eps=eps, norm=norm, steps=steps * effort_factor, eot_samples=more_eot)))
    se = _paired_se(results[more], worst)
    gap = worst.mean - results[more].mean
    report.checks.append(SanityCheck(
        "more steps / draws do not lower the accuracy", gap <= 2 * se, results[more].mean,
        worst.mean, f"{more}: {_pct(results[more].mean)}% vs worst case {_pct(worst.mean)}% "
        f"(2 x sampling error {_pct(2 * se)})"))
