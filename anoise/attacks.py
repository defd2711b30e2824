"""White-box attacks and an evaluation harness for stochastic (and deterministic) classifiers.

Every attack takes any ``nn.Module`` mapping inputs in ``[0, 1]`` to logits, and returns
adversarial inputs in ``[0, 1]``.  Gradients are taken with respect to the input only (the
model's parameters never accumulate ``.grad``), in the model's current train/eval mode.

A stochastic model draws fresh noise on every forward pass, so an attack that follows one
pass's gradient attacks one random network, not the defence.  ``eot_samples`` / :func:`eot_pgd`
average each step's gradient over several noise draws (Expectation over Transformation,
Athalye et al. 2018), the adaptive attack that a randomised defence has to withstand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import ensemble_predict

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_eps(eps: float, name: str = "eps") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or math.isnan(eps) or eps < 0:
        raise ValueError(f"{name} must be a float >= 0, got {eps!r}")


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def eot_gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    samples: int = 1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> Tensor:
    """Gradient of ``loss_fn(model(x), y)`` w.r.t. ``x``, averaged over ``samples`` passes.

    Each pass draws its own noise, in order, from the global generators, so with the same
    seed the result is the mean of ``samples`` single-pass gradients taken one after another.
    """
    _check_count(samples, "samples")
    x = x.detach()
    total = torch.zeros_like(x)
    for _ in range(samples):
        xr = x.clone().requires_grad_(True)
        loss = loss_fn(model(xr), y)
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
) -> Tensor:
    """L-infinity Projected Gradient Descent (Madry et al. 2018).

    Starts at a uniform random point of the ``eps`` ball (``random_start``), then takes
    ``steps`` signed-gradient steps of ``step_size`` (default ``2.5 * eps / steps``),
    projecting back onto the ball and onto ``[0, 1]`` after each.  With ``eot_samples > 1``
    each step's gradient is averaged over that many noise draws (EOT-PGD).
    """
    _check_eps(eps)
    _check_count(steps, "steps")
    if step_size is None:
        step_size = 2.5 * eps / steps
    _check_eps(step_size, "step_size")
    x = x.detach()
    adv = x.clone()
    if random_start:
        adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        grad = eot_gradient(model, adv, y, eot_samples)
        adv = adv + step_size * grad.sign()
        delta = (adv - x).clamp(-eps, eps)
        adv = (x + delta).clamp(0, 1).detach()
    return adv


def eot_pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, samples: int = 8,
            **kwargs) -> Tensor:
    """PGD whose every gradient is the mean over ``samples`` noise draws (see :func:`pgd`)."""
    return pgd(model, x, y, eps, eot_samples=samples, **kwargs)


def _cw_margin(logits: Tensor, y: Tensor, kappa: float) -> Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return (true - other).clamp(min=-kappa)


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
    """Accuracy of one model on one (possibly attacked) input set."""

    per_draw: list[float]
    ensemble: float
    stochastic: bool

    @property
    def mean(self) -> float:
        return sum(self.per_draw) / len(self.per_draw)

    @property
    def std(self) -> float:
        if len(self.per_draw) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.per_draw) / (len(self.per_draw) - 1))

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f}+-{100 * self.std:.1f} [{100 * self.ensemble:.1f}]"


@dataclass
class Evaluation:
    """Clean and per-attack :class:`Result` of one model."""

    results: dict[str, Result] = field(default_factory=dict)
    adversarial: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Result:
        return self.results[name]


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / x.shape[0]


@torch.no_grad()
def _ensemble_accuracy(model, x, y, samples: int, batch_size: int) -> float:
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        probs = ensemble_predict(model, x[i:i + batch_size], samples=samples)
        correct += (probs.argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / x.shape[0]


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
    draws: int = 5,
    ensemble_samples: int = 10,
    batch_size: int = 1000,
    keep_adversarial: bool = False,
    progress: Callable | None = None,
) -> Evaluation:
    """Clean and adversarial accuracy of ``model`` on ``(x, y)``, in eval mode.

    Each attack in ``attacks`` (``name -> attack(model, x, y)``) crafts its inputs once, in
    batches of ``batch_size``; the accuracy on them is then measured over ``draws`` fresh noise
    draws (mean and sample std) and with :func:`anoise.ensemble_predict` over
    ``ensemble_samples`` passes.  A model whose two passes agree bitwise is deterministic: it
    is measured once (std 0) and its ensemble accuracy is its accuracy.  ``progress`` wraps the
    attack iterable (e.g. ``functools.partial(tqdm, desc=...)``).  The model's mode is restored.
    """
    _check_count(draws, "draws")
    _check_count(ensemble_samples, "ensemble_samples")
    _check_count(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    try:
        stochastic = is_stochastic(model, x[:batch_size])
        out = Evaluation()
        items = [("clean", None)] + list(attacks.items())
        for name, attack in progress(items) if progress is not None else items:
            if attack is None:
                xa = x
            else:
                xa = torch.cat([attack(model, x[i:i + batch_size], y[i:i + batch_size])
                                for i in range(0, x.shape[0], batch_size)])
            if stochastic:
                per_draw = [_accuracy(model, xa, y, batch_size) for _ in range(draws)]
                ens = _ensemble_accuracy(model, xa, y, ensemble_samples, batch_size)
            else:
                per_draw = [_accuracy(model, xa, y, batch_size)]
                ens = per_draw[0]
            out.results[name] = Result(per_draw, ens, stochastic)
            if keep_adversarial and attack is not None:
                out.adversarial[name] = xa
        return out
    finally:
        model.train(was_training)
