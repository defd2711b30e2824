"""White-box attacks and an evaluation harness for stochastic (and deterministic) classifiers.

Every attack takes any ``nn.Module`` mapping inputs in ``[0, 1]`` to logits, and returns
adversarial inputs in ``[0, 1]``.  Gradients are taken with respect to the input only (the
model's parameters never accumulate ``.grad``), in the model's current train/eval mode.

A stochastic model draws fresh noise on every forward pass, so an attack that follows one
pass's gradient attacks one random network, not the defence.  The adaptive attacks a
randomised defence has to withstand (Athalye et al. 2018; Tramer et al. 2020) are here:
``eot_samples`` / :func:`eot_pgd` average each step's gradient over several noise draws
(Expectation over Transformation); ``loss="margin"`` ascends the logit margin instead of the
cross-entropy; ``restarts`` keeps each image's best of several random starts;
:func:`ensemble_pgd` attacks the mean softmax over draws itself; :func:`transfer` crafts the
examples on another model (e.g. the defence with its noise off).  :func:`evaluate` classifies
each attack's examples on several fresh draws, keeps per-image figures (all draws, majority
vote, ensemble) and can take, per image, the strongest of several attacks (the worst case).

For a complete evaluation (an adaptive suite with APGD, the worst case, sanity checks and a
report) use :func:`anoise.evaluation.evaluate`; APGD itself is :func:`anoise.apgd.apgd`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_eps(eps: float, name: str = "eps") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or math.isnan(eps) or eps < 0:
        raise ValueError(f"{name} must be a float >= 0, got {eps!r}")


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (the loss PGD ascends by default)."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample logit margin ``max_{j != y} z_j - z_y`` (Carlini and Wagner's, unclamped).

    Positive exactly where the sample is misclassified.  Unlike cross-entropy it does not
    saturate once the true class's probability is small, and it ignores the softmax's scale.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return other - true


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": cross_entropy_loss, "margin": margin_loss}


def _loss_fn(loss) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]


def eot_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    samples: int = 1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | str = "ce",
) -> Tensor:
    """Gradient of the batch mean of ``loss_fn(model(x), y)`` w.r.t. ``x``, averaged over
    ``samples`` passes.

    ``loss_fn``: ``"ce"``, ``"margin"`` (see :data:`LOSSES`) or a callable returning a scalar
    or one loss per sample.  Each pass draws its own noise, in order, from the global
    generators, so with the same seed the result is the mean of ``samples`` single-pass
    gradients taken one after another.
    """
    _check_count(samples, "samples")
    fn = _loss_fn(loss_fn)
    x = x.detach()
    total = torch.zeros_like(x)
    for _ in range(samples):
        xr = x.clone().requires_grad_(True)
        loss = fn(model(xr), y).mean()
        (grad,) = torch.autograd.grad(loss, xr)
        total += grad
    return total / samples


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, eot_samples: int = 1) -> Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): ``x + eps * sign(grad)``."""
    _check_eps(eps)
    grad = eot_gradient(model, x, y, eot_samples)
    return (x.detach() + eps * grad.sign()).clamp(0, 1).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    eot_samples: int = 1,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "ce",
    restarts: int = 1,
) -> Tensor:
    """L-infinity Projected Gradient Descent (Madry et al. 2018).

    Starts at a uniform random point of the ``eps`` ball (``random_start``), then takes
    ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``) ascending
    ``loss`` (``"ce"``, ``"margin"`` or a callable, see :func:`eot_gradient`), projecting back
    onto the ball and onto ``[0, 1]`` after each.  With ``eot_samples > 1`` each step's
    gradient is averaged over that many noise draws (EOT-PGD).

    ``restarts > 1`` runs the attack from that many random starts and keeps, per image, the
    run whose result has the largest :func:`margin_loss` averaged over ``eot_samples`` fresh
    passes: on a deterministic model, a misclassified result wherever any run found one.
    """
    _check_eps(eps)
    _check_count(steps, "steps")
    _check_count(restarts, "restarts")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (the runs would be identical)")
    if step_size is None:
        step_size = 2.5 * eps / steps
    _check_eps(step_size, "step_size")
    _loss_fn(loss)
    x = x.detach()
    best, best_margin = None, None
    for _ in range(restarts):
        adv = x.clone()
        if random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            grad = eot_gradient(model, adv, y, eot_samples, loss)
            adv = adv + step_size * grad.sign()
            delta = (adv - x).clamp(-eps, eps)
            adv = (x + delta).clamp(0, 1).detach()
        if restarts == 1:
            return adv
        margin = mean_margin(model, adv, y, eot_samples)
        if best is None:
            best, best_margin = adv, margin
        else:
            better = margin > best_margin
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), adv, best)
            best_margin = torch.maximum(margin, best_margin)
    return best


@torch.no_grad()
def mean_margin(model: nn.Module, x: Tensor, y: Tensor, samples: int = 1) -> Tensor:
    """Per-sample :func:`margin_loss` averaged over ``samples`` passes (noise draws)."""
    _check_count(samples, "samples")
    return sum(margin_loss(model(x), y) for _ in range(samples)) / samples


def eot_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, samples: int = 8,
            **kwargs) -> Tensor:
    """PGD whose every gradient is the mean over ``samples`` noise draws (see :func:`pgd`)."""
    return pgd(model, x, y, eps, eot_samples=samples, **kwargs)


class MeanSoftmax(nn.Module):
    """The ensemble of ``samples`` stochastic passes of ``model`` as one differentiable model.

    ``forward`` returns ``log(mean_k softmax(model(x)))``: log-probabilities whose argmax is
    :func:`anoise.ensemble_predict`'s prediction.  Cross-entropy on them is the negative log of
    the ensemble's probability of the true class, so PGD on this module attacks the ensemble
    itself (gradients flow through every pass), not one draw or the mean loss.
    """

    def __init__(self, model: nn.Module, samples: int = 10):
        super().__init__()
        _check_count(samples, "samples")
        self.model = model
        self.samples = samples

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([F.log_softmax(self.model(x), dim=-1) for _ in range(self.samples)])
        return torch.logsumexp(logp, dim=0) - math.log(self.samples)


def ensemble_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, samples: int = 10,
                 **kwargs) -> Tensor:
    """PGD on ``MeanSoftmax(model, samples)``: the attack on the ensemble itself."""
    return pgd(MeanSoftmax(model, samples), x, y, eps, **kwargs)


def transfer(source: nn.Module, attack: Attack) -> Attack:
    """``attack`` crafted on ``source`` and applied to whichever model is evaluated.

    E.g. ``transfer(without_noise(student), partial(pgd, eps=0.1))``: white-box PGD on the
    student's deterministic twin, whose gradients no noise blurs.
    """
    def transferred(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return attack(source, x, y)

    return transferred


def _cw_margin(logits: Tensor, y: Tensor, kappa: float) -> Tensor:
    return (-margin_loss(logits, y)).clamp(min=-kappa)


def cw_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 50,
    lr: float = 0.01,
    search_steps: int = 1,
    max_norm: float | None = None,
) -> Tensor:
    """Carlini-Wagner L2 attack (untargeted), in the tanh parametrisation of ``[0, 1]``.

    Minimises ``||delta||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`` with Adam for
    ``steps`` steps.  With ``search_steps > 1``, ``c`` is binary-searched per sample (doubled
    on failure, bisected on success) as in the original attack.  Returns, per sample, the
    smallest-L2 input seen that was misclassified, or ``x`` itself where none was found;
    with ``max_norm``, only perturbations of L2 norm <= ``max_norm`` count as found.
    """
    _check_eps(c, "c")
    _check_eps(kappa, "kappa")
    _check_count(steps, "steps")
    _check_count(search_steps, "search_steps")
    if max_norm is not None:
        _check_eps(max_norm, "max_norm")
    limit = math.inf if max_norm is None else float(max_norm) ** 2
    x = x.detach()
    n = x.shape[0]
    flat = (n, -1)
    best_adv = x.clone()
    best_l2 = torch.full((n,), math.inf, device=x.device)
    const = torch.full((n,), float(c), device=x.device)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), math.inf, device=x.device)
    # atanh(+-1) is infinite: pull the box edges in so pixels at 0 or 1 stay reachable.
    w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    for _ in range(search_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(steps):
            adv = (torch.tanh(w) + 1) / 2
            logits = model(adv)
            l2 = (adv - x).reshape(flat).pow(2).sum(1)
            loss = (l2 + const * _cw_margin(logits, y, kappa)).sum()
            (w.grad,) = torch.autograd.grad(loss, w)
            opt.step()
            with torch.no_grad():
                wrong = (logits.argmax(1) != y) & (l2 <= limit)
                better = wrong & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_adv[better] = adv[better].detach()
                found |= wrong
        upper = torch.where(found, torch.minimum(upper, const), upper)
        lower = torch.where(found, lower, torch.maximum(lower, const))
        const = torch.where(upper.isfinite(), (lower + upper) / 2, const * 10)
    return best_adv.clamp(0, 1)


@dataclass
class Result:
    """Accuracy of one model on one (possibly attacked) input set, per draw and per image.

    ``per_draw``: accuracy on each noise draw (one entry for a deterministic model).  Per
    image ``i``: ``correct_rate[i]`` the share of draws classifying it correctly;
    ``all_correct[i]`` correct on every draw; ``majority_correct[i]`` the true class got more
    of the draws' votes than any other class (a tie is wrong); ``ensemble_correct[i]`` the
    mean softmax over the draws (:func:`anoise.ensemble_predict`) picks the true class;
    ``true_prob[i]`` that mean softmax's probability of the true class.
    """

    per_draw: list[float]
    correct_rate: Tensor
    all_correct: Tensor
    majority_correct: Tensor
    ensemble_correct: Tensor
    true_prob: Tensor
    stochastic: bool

    @classmethod
    def from_draws(cls, logits: Tensor, y: Tensor, stochastic: bool = True) -> Result:
        """From the logits ``(draws, n, classes)`` of ``draws`` passes on ``n`` images."""
        if logits.dim() != 3 or logits.shape[1] != y.shape[0]:
            raise ValueError(f"logits must be (draws, n, classes) with n = {y.shape[0]}, got "
                             f"{tuple(logits.shape)}")
        pred = logits.argmax(2)
        correct = pred == y
        votes = F.one_hot(pred, logits.shape[2]).sum(0)
        true_votes = votes.gather(1, y[:, None]).squeeze(1)
        other_votes = votes.scatter(1, y[:, None], -1).amax(1)
        probs = logits.softmax(2).mean(0)
        return cls(per_draw=correct.float().mean(1).tolist(),
                   correct_rate=correct.float().mean(0).cpu(),
                   all_correct=correct.all(0).cpu(),
                   majority_correct=(true_votes > other_votes).cpu(),
                   ensemble_correct=(probs.argmax(1) == y).cpu(),
                   true_prob=probs.gather(1, y[:, None]).squeeze(1).float().cpu(),
                   stochastic=stochastic)

    @property
    def mean(self) -> float:
        """Mean accuracy over draws (= mean over images of ``correct_rate``)."""
        return self.correct_rate.double().mean().item()

    @property
    def std(self) -> float:
        """Sample std of the per-draw accuracies (0 with fewer than two draws)."""
        if len(self.per_draw) < 2:
            return 0.0
        m = sum(self.per_draw) / len(self.per_draw)
        return math.sqrt(sum((a - m) ** 2 for a in self.per_draw) / (len(self.per_draw) - 1))

    @property
    def all_draws(self) -> float:
        """Share of images classified correctly on every draw."""
        return self.all_correct.double().mean().item()

    @property
    def majority(self) -> float:
        """Accuracy of the majority vote over the draws."""
        return self.majority_correct.double().mean().item()

    @property
    def ensemble(self) -> float:
        """Accuracy of the mean softmax over the draws."""
        return self.ensemble_correct.double().mean().item()

    def metrics(self) -> dict[str, float]:
        return dict(mean=self.mean, all_draws=self.all_draws, majority=self.majority,
                    ensemble=self.ensemble)

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f}+-{100 * self.std:.1f} [{100 * self.ensemble:.1f}]"


def select_worst(results: list[Result]) -> Tensor:
    """Per image, the index of the result an attacker would submit: the lowest
    ``correct_rate``, ties broken by the lowest ``true_prob`` (then the first).

    The rates are estimates from a few draws, so the chosen inputs must be classified again
    on fresh draws (:func:`evaluate` does): the minimum of the estimates themselves would be
    biased towards the attacker, the more so the more attacks there are.
    """
    if not results:
        raise ValueError("select_worst needs at least one result")
    rate = torch.stack([r.correct_rate.double() for r in results])
    prob = torch.stack([r.true_prob.double() for r in results])
    if rate.shape[1:] != results[0].correct_rate.shape:
        raise ValueError("select_worst: results are on different numbers of images")
    # true_prob is in [0, 1] and rates differ by at least 1/draws > 1e-3: lexicographic.
    return (rate + 1e-3 * prob).argmin(0)


@dataclass
class Evaluation:
    """Clean and per-attack :class:`Result` of one model.

    With a worst case (see :func:`evaluate`), ``choice[i]`` is the index into
    ``worst_of`` of the input chosen for image ``i``.
    """

    results: dict[str, Result] = field(default_factory=dict)
    adversarial: dict[str, Tensor] = field(default_factory=dict)
    worst_of: tuple[str, ...] = ()
    choice: Tensor | None = None

    def __getitem__(self, name: str) -> Result:
        return self.results[name]


@torch.no_grad()
def draw_logits(model: nn.Module, x: Tensor, draws: int, batch_size: int = 1000) -> Tensor:
    """Logits ``(draws, n, classes)`` of ``draws`` passes over ``x`` in batches.

    Draw ``k`` is one pass over every batch, so with noise from running statistics (the
    modules' eval default) each image gets independent noise on every draw.
    """
    _check_count(draws, "draws")
    _check_count(batch_size, "batch_size")
    return torch.stack([torch.cat([model(x[i:i + batch_size])
                                   for i in range(0, x.shape[0], batch_size)])
                        for _ in range(draws)])


@torch.no_grad()
def is_stochastic(model: nn.Module, x: Tensor) -> bool:
    """Whether two forward passes of ``model`` on ``x`` differ (noise is on)."""
    return not torch.equal(model(x), model(x))


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: dict[str, Attack],
    *,
    draws: int = 10,
    batch_size: int = 1000,
    worst_case: tuple[str, ...] | None = None,
    worst_name: str = "worst case",
    select_draws: int | None = None,
    keep_adversarial: bool = False,
    progress: Callable | None = None,
) -> Evaluation:
    """Clean and adversarial accuracy of ``model`` on ``(x, y)``, in eval mode.

    Each attack in ``attacks`` (``name -> attack(model, x, y)``) crafts its inputs once, in
    batches of ``batch_size``; they are then classified on ``draws`` fresh noise draws, which
    give every figure of :class:`Result` (per-draw accuracies, all-draws, majority vote, and
    the ensemble: the mean softmax over the same draws, i.e. ``ensemble_predict`` with
    ``samples=draws``).  A model whose two passes agree bitwise is deterministic: it is
    classified once.

    ``worst_case``: names (``"clean"`` and attack names) to take the per-image worst case
    over.  Each of these inputs is classified on ``select_draws`` (default ``draws``) further
    draws, per image the input of :func:`select_worst` on those is chosen, and the chosen
    inputs are classified on ``draws`` fresh draws, stored as ``results[worst_name]``.  The
    selection is noisy where candidates are close (its result can then land above the best
    single attack's): more ``select_draws`` make it sharper.
    ``progress`` wraps the attack iterable (e.g. ``functools.partial(tqdm, desc=...)``).
    The model's mode is restored.
    """
    _check_count(draws, "draws")
    _check_count(batch_size, "batch_size")
    select_draws = draws if select_draws is None else select_draws
    _check_count(select_draws, "select_draws")
    names = ("clean",) + tuple(attacks)
    if worst_case is not None:
        unknown = [n for n in worst_case if n not in names]
        if unknown or not worst_case:
            raise ValueError(f"worst_case must name some of {names}, got {worst_case!r}")
        if worst_name in names:
            raise ValueError(f"worst_name {worst_name!r} is already a result name")
    was_training = model.training
    model.eval()
    try:
        stochastic = is_stochastic(model, x[:batch_size])
        k = draws if stochastic else 1
        out = Evaluation()
        inputs, selection = {}, {}
        items = [("clean", None)] + list(attacks.items())
        for name, attack in progress(items) if progress is not None else items:
            if attack is None:
                xa = x
            else:
                xa = torch.cat([attack(model, x[i:i + batch_size], y[i:i + batch_size])
                                for i in range(0, x.shape[0], batch_size)])
            out.results[name] = Result.from_draws(draw_logits(model, xa, k, batch_size), y,
                                                  stochastic)
            if worst_case is not None and name in worst_case:
                inputs[name] = xa
                selection[name] = (Result.from_draws(draw_logits(model, xa, select_draws,
                                                                 batch_size), y)
                                   if stochastic else out.results[name])
            if keep_adversarial and attack is not None:
                out.adversarial[name] = xa
        if worst_case is not None:
            out.worst_of = tuple(worst_case)
            out.choice = select_worst([selection[n] for n in worst_case])
            stacked = torch.stack([inputs[n] for n in worst_case])
            chosen = stacked[out.choice.to(x.device), torch.arange(x.shape[0], device=x.device)]
            out.results[worst_name] = Result.from_draws(
                draw_logits(model, chosen, k, batch_size), y, stochastic)
        return out
    finally:
        model.train(was_training)
