"""Auto-PGD (Croce and Hein, ICML 2020) with Expectation over Transformation, and a
gradient-free Square-style random search, for stochastic and deterministic classifiers.

APGD needs no step-size tuning: it starts at ``2 * eps``, takes momentum steps (0.75) and
halves the step size at fixed checkpoints whenever the loss stopped rising, restarting from
the best point found.  Unlike the implementations that return the clean image wherever no
single pass was fooled during the run, :func:`apgd` returns, per image, the best point it
visited: the one that fooled the largest share of its gradient's noise draws, ties (among
them "fooled on no draw") broken by the highest loss.  On a deterministic model that is the
misclassified point AutoAttack returns wherever one was found, else the highest-loss point.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("Linf", "L2")


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample Difference of Logits Ratio loss (Croce and Hein 2020), untargeted:
    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in
    decreasing order.  Invariant to shifting and scaling the logits; needs >= 3 classes."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    return -(true - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-sample targeted DLR loss (Croce and Hein 2020):
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, ascended to make ``target`` win.
    Needs >= 4 classes."""
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - wanted) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


APGD_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "dlr": dlr_loss,
}


def _check(eps, norm, steps, eot_samples, restarts) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    for name, value in (("steps", steps), ("eot_samples", eot_samples), ("restarts", restarts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """``x_adv`` projected onto the ``norm`` ball of radius ``eps`` around ``x``, then onto
    ``[0, 1]``."""
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


def _random_start(x: Tensor, eps: float, norm: str) -> Tensor:
    # AutoAttack's start: a random direction scaled onto the ball's surface.
    t = torch.randn_like(x) if norm == "L2" else 2 * torch.rand_like(x) - 1
    scale = (_per_sample_norm(t) if norm == "L2"
             else t.flatten(1).abs().amax(1).view(-1, *([1] * (x.dim() - 1))))
    return project(x + eps * t / scale.clamp_min(1e-12), x, eps, norm)


def _step(grad: Tensor, norm: str) -> Tensor:
    if norm == "Linf":
        return grad.sign()
    return grad / _per_sample_norm(grad).clamp_min(1e-12)


def _loss_and_grad(model, x_adv, y, loss_fn, samples):
    """Mean loss, mean gradient and share of misclassifying passes over ``samples`` draws."""
    loss_sum = torch.zeros(x_adv.shape[0], device=x_adv.device)
    grad = torch.zeros_like(x_adv)
    fooled = torch.zeros(x_adv.shape[0], device=x_adv.device)
    for _ in range(samples):
        xr = x_adv.detach().clone().requires_grad_(True)
        with torch.enable_grad():  # also when called under torch.no_grad()
            logits = model(xr)
            loss = loss_fn(logits, y)
            (g,) = torch.autograd.grad(loss.sum(), xr)
        grad += g
        loss_sum += loss.detach()
        fooled += (logits.detach().argmax(1) != y).float()
    return loss_sum / samples, grad / samples, fooled / samples


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD checks its progress, AutoAttack's integer schedule:
    the first after ``max(int(0.22 * steps), 1)`` steps, each next interval shorter by
    ``max(int(0.03 * steps), 1)`` down to ``max(int(0.06 * steps), 1)`` (the continuous
    ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` of Croce and Hein 2020)."""
    interval = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, at = [], interval
    while at <= steps:
        marks.append(at)
        interval = max(interval - shrink, shortest)
        at += interval
    return marks


def _apgd_once(model, x, y, eps, norm, steps, loss_fn, eot, rho, momentum):
    n = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    x_adv = _random_start(x, eps, norm)
    step_size = torch.full((n,), 2.0 * eps, device=x.device)
    loss, grad, fooled = _loss_and_grad(model, x_adv, y, loss_fn, eot)
    best_x, best_loss, best_fooled = x_adv.clone(), loss.clone(), fooled.clone()
    # The point a restart returns to: the highest loss (AutoAttack's x_best), and its gradient.
    top_x, top_loss, top_grad = x_adv.clone(), loss.clone(), grad.clone()
    marks = set(checkpoints(steps))
    last_mark = 0
    increases = torch.zeros(n, device=x.device)
    top_at_last_mark = top_loss.clone()
    # True at the start, as in AutoAttack: the first check halves only on oscillation.
    halved_at_last_mark = torch.ones(n, dtype=torch.bool, device=x.device)
    x_prev = x_adv.clone()
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        z = project(x_adv + step_size.view(view) * _step(grad, norm), x, eps, norm)
        x_next = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps, norm)
        x_prev, x_adv = x_adv, x_next
        prev_loss = loss
        loss, grad, fooled = _loss_and_grad(model, x_adv, y, loss_fn, eot)
        increases += (loss > prev_loss).float()
        better = (fooled > best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best_x[better] = x_adv[better]
        best_loss = torch.where(better, loss, best_loss)
        best_fooled = torch.where(better, fooled, best_fooled)
        higher = loss > top_loss
        top_x[higher], top_grad[higher] = x_adv[higher], grad[higher]
        top_loss = torch.where(higher, loss, top_loss)
        if i + 1 in marks:
            # Halve the step where the loss rose in fewer than rho of the steps since the
            # last checkpoint, or where the previous check kept the step and nothing improved
            # (AutoAttack's two conditions; the momentum term is kept, as there).
            span = i + 1 - last_mark
            stalled = increases <= rho * span
            stalled |= ~halved_at_last_mark & (top_loss <= top_at_last_mark)
            step_size = torch.where(stalled, step_size / 2, step_size)
            x_adv[stalled], grad[stalled] = top_x[stalled], top_grad[stalled]
            halved_at_last_mark, top_at_last_mark = stalled, top_loss.clone()
            increases.zero_()
            last_mark = i + 1
    return best_x, best_fooled, best_loss


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    steps: int = 100,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "ce",
    eot_samples: int = 1,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
) -> Tensor:
    """Auto-PGD (Croce and Hein 2020) in the ``norm`` (``"Linf"`` or ``"L2"``) ball of
    radius ``eps``, inputs and outputs in ``[0, 1]``.

    ``loss``: ``"ce"``, ``"dlr"`` (:func:`dlr_loss`) or a callable returning one loss per
    sample.  Each gradient, and the loss that drives the step size, is the mean over
    ``eot_samples`` passes (noise draws).  The step size starts at ``2 * eps`` and is halved
    at the :func:`checkpoints` where the loss rose in at most ``rho`` of the steps since
    the previous one (or did not improve since a check that kept the step); the iterate then
    restarts from the highest-loss point.  Each step mixes the projected gradient step with
    the previous update (``momentum``, 1 on the first step).

    Returns per image the best point visited over all ``restarts`` (each from its own random
    start): the largest share of the gradient's draws misclassifying it, ties broken by the
    highest loss.  Never the clean image unless the attack found nothing better.
    """
    _check(eps, norm, steps, eot_samples, restarts)
    loss_fn = loss if callable(loss) else APGD_LOSSES.get(loss)
    if loss_fn is None:
        raise ValueError(f"loss must be one of {sorted(APGD_LOSSES)} or a callable, got {loss!r}")
    x = x.detach()
    best = None
    for _ in range(restarts):
        best = _keep_better(best, _apgd_once(model, x, y, float(eps), norm, steps, loss_fn,
                                             eot_samples, rho, momentum))
    return best[0].detach()


def _keep_better(best, run):
    """Per image, the better of two ``(points, fooled share, loss)`` runs."""
    if best is None:
        return run
    xb, fb, lb = best
    xr, fr, lr = run
    better = (fr > fb) | ((fr == fb) & (lr > lb))
    view = better.view(-1, *([1] * (xb.dim() - 1)))
    return torch.where(view, xr, xb), torch.where(better, fr, fb), torch.where(better, lr, lb)


def apgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    steps: int = 100,
    targets: int = 9,
    eot_samples: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
) -> Tensor:
    """APGD-T (Croce and Hein 2020): for each of the ``targets`` most likely wrong classes
    (ranked by the clean logits, averaged over ``eot_samples`` passes), one APGD run
    ascending :func:`targeted_dlr_loss` towards it; returns per image the best point over
    the runs (as :func:`apgd`).  Costs ``targets`` runs; needs >= 4 classes."""
    _check(eps, norm, steps, eot_samples, targets)
    x = x.detach()
    with torch.no_grad():
        clean = sum(model(x) for _ in range(eot_samples)) / eot_samples
    if not targets < clean.shape[1]:
        raise ValueError(f"targets must be below the number of classes ({clean.shape[1]}), "
                         f"got {targets}")
    order = clean.masked_fill(F.one_hot(y, clean.shape[1]).bool(), -math.inf).argsort(
        1, descending=True)
    best = None
    for k in range(targets):
        loss_fn = functools.partial(_towards, target=order[:, k])
        best = _keep_better(best, _apgd_once(model, x, y, float(eps), norm, steps, loss_fn,
                                             eot_samples, rho, momentum))
    return best[0].detach()


def _towards(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    return targeted_dlr_loss(logits, y, target)


@torch.no_grad()
def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "Linf",
    queries: int = 300,
    p_init: float = 0.1,
    eot_samples: int = 1,
) -> Tensor:
    """A gradient-free attack: Square-style random search (Andriushchenko et al. 2020).

    Starts from random vertical stripes of ``+-eps`` (L-inf) or a random point of the ball's
    surface (L2); each query changes one random square window (side ``sqrt(p * pixels)``, p
    shrinking from ``p_init`` on Square's schedule) to a new random value, and keeps the
    change per image where the margin loss (mean over ``eot_samples`` passes) rose.  It
    uses no gradient, so a model that only masks its gradients does not stop it: if it
    beats the gradient attacks, the gradient attacks are not working.
    """
    _check(eps, norm, queries, eot_samples, 1)
    from .attacks import margin_loss

    x = x.detach()
    n, c, h, w = x.shape if x.dim() == 4 else (x.shape[0], 1, 1, x[0].numel())
    shaped = x.reshape(n, c, h, w)

    def score(candidate: Tensor) -> Tensor:
        xs = candidate.reshape(x.shape)
        return sum(margin_loss(model(xs), y) for _ in range(eot_samples)) / eot_samples

    if norm == "Linf":
        stripes = eps * torch.randint(0, 2, (n, c, 1, w), device=x.device).float() * 2 - eps
        adv = (shaped + stripes).clamp(0, 1)
    else:
        adv = _random_start(shaped, eps, norm)
    best = score(adv)
    for q in range(queries):
        # Square's schedule: the window's share of the pixels halves at fixed query counts.
        frac = p_init / 2 ** sum(q * 10000 // max(queries, 1) > t
                                 for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        side = max(1, min(h, w, round(math.sqrt(frac * h * w))))
        top = torch.randint(0, h - side + 1, (1,)).item()
        left = torch.randint(0, w - side + 1, (1,)).item()
        candidate = adv.clone()
        window = candidate[:, :, top:top + side, left:left + side]
        if norm == "Linf":
            value = eps * (torch.randint(0, 2, (n, c, 1, 1), device=x.device).float() * 2 - 1)
            window.copy_((shaped[:, :, top:top + side, left:left + side] + value).clamp(0, 1))
        else:
            window.add_(torch.randn(n, c, 1, 1, device=x.device) * eps / math.sqrt(
                max(1.0, h * w / (side * side))))
            candidate = project(candidate, shaped, eps, norm)
        loss = score(candidate)
        improved = loss > best
        adv[improved] = candidate[improved]
        best = torch.where(improved, loss, best)
    return adv.reshape(x.shape).detach()
