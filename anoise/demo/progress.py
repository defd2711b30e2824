"""Progress of a demo run: one bar with the time left, and what a run costs.

A run is a list of tasks (per training seed: the training, then one attack task per model,
and the decision-boundary slices once).  Their costs differ a lot, so progress is counted in
estimated work, not in tasks: :func:`training_cost` and :func:`attack_cost` count the
forward+backward passes over one image that a task makes, from the run's settings.  The time
left is the elapsed time scaled by the work still to do.  The counts below match measured
CPU times of the default settings (training 13 s, attacks 154 s; a noisy model's attack suite
about 6.5 times a deterministic model's, as measured).
"""

from __future__ import annotations

import sys
import time

# A training pass costs more than an attack pass per image (small batches of 128, optimiser
# step): in the default run, training took 13 s of CPU and the attacks 154 s.
TRAIN_PASS_COST = 1.3
# A forward pass (classifying an image on one noise draw) is about a third of fwd+bwd.
FORWARD_COST = 1 / 3
# The decision-boundary slices (grid x grid forward passes per panel, about six panels with
# the ensemble one counting ``boundary_samples`` times) and the figures.
SLICE_PANELS = 6


def training_cost(args, n_train: int) -> float:
    """Image passes of one seed's training on ``n_train`` images: teacher, control, students,
    from-scratch student, PNI and adversarial fine-tuning (each PGD step of a training example
    is a pass), RSE."""
    distilled = 1 + FORWARD_COST if args.distill else 1  # the teacher's forward per batch
    epochs = (args.teacher_epochs + args.finetune_epochs * (1 + len(args.alphas)) * distilled
              + args.scratch_epochs + args.teacher_epochs  # from scratch, RSE
              + 2 * args.adv_epochs * (args.adv_steps + 2))  # PNI, teacher + PGD-AT
    return TRAIN_PASS_COST * epochs * n_train


def attack_cost(args, stochastic: bool) -> float:
    """Image passes of the attack suite on one model (``anoise.demo.zoo.make_suite``), and of
    classifying every example on the draws (deterministic models: once)."""
    eot = args.eot_samples if stochastic else 1
    more = args.more_draws if stochastic else 1
    attacks = (1 + args.pgd_steps * (1 + eot + eot * args.restarts + eot + args.restarts)
               + args.more_draws_steps * more + args.cw_steps)
    draws = (9 * args.draws + 8 * args.select_draws) if stochastic else 17
    return (attacks + FORWARD_COST * draws) * args.eval_size


def slices_cost(args) -> float:
    return FORWARD_COST * args.grid ** 2 * (SLICE_PANELS + args.boundary_samples)


def noisy_row(name: str) -> bool:
    """Whether a row of the tables is a noisy model (for the estimate only: the run itself
    asks the model).  The teacher rows and the noise-off twins are deterministic."""
    return not (name.startswith("teacher") or name.endswith("noise off"))


def run_cost(args, rows: list[str], n_train: int) -> float:
    """The estimated work of a whole run with these settings, table rows and training set."""
    attacks = sum(attack_cost(args, noisy_row(row)) for row in rows)
    per_seed = training_cost(args, n_train) + attacks
    return args.seeds * per_seed + (0 if args.no_plots else slices_cost(args))


class Progress:
    """The share of a run done and the time left, on ``stream`` (stderr).

    On a terminal with tqdm installed: one bar, redrawn in place, with the time left.
    Elsewhere (a log file, CI): one line per finished task, ``[elapsed] 35% done, about
    2.1 min left: <task>``.  ``enabled=False`` prints nothing.
    """

    def __init__(self, total: float, *, enabled: bool = True, stream=None,
                 bar: bool | None = None, start: float | None = None):
        self.total = float(total)
        self.done = 0.0
        self.enabled = enabled and self.total > 0
        self.stream = sys.stderr if stream is None else stream
        self.start = time.time() if start is None else start  # the messages' time origin
        self._counting_from = time.time()  # the time left is estimated from here on
        self._bar = None
        if not self.enabled:
            return
        if bar is None:
            bar = self.stream.isatty()
        if bar:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            # Work is counted in thousands of image passes; tqdm's rate and time left follow
            # the work done, which is what the estimate needs.
            self._bar = tqdm(total=round(self.total / 1000, 1), file=self.stream,
                             dynamic_ncols=True, unit="k passes",
                             bar_format="{l_bar}{bar}| {elapsed} elapsed, {remaining} left "
                             "{postfix}")

    def say(self, msg: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        line = f"[{time.time() - self.start:6.1f}s] {msg}"
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def advance(self, work: float, what: str) -> None:
        """``work`` more is done; ``what`` names the task that finished."""
        self.done = min(self.total, self.done + work)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(what, refresh=False)
            self._bar.update(round(self.done / 1000, 1) - self._bar.n)
            return
        self.say(f"{self.share():.0%} done, {self.left_text()}: {what}")

    def share(self) -> float:
        return self.done / self.total if self.total else 1.0

    def seconds_left(self) -> float | None:
        if self.done <= 0:
            return None
        elapsed = time.time() - self._counting_from
        return elapsed * (self.total - self.done) / self.done

    def left_text(self) -> str:
        left = self.seconds_left()
        if left is None:
            return "time left not known yet"
        return f"about {left / 60:.1f} min left" if left >= 60 else f"about {left:.0f} s left"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
