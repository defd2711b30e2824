"""The training recipe: a deterministic teacher, then a teacher-initialised stochastic student.

    teacher = fit(model, x, y, epochs=...)                       # ordinary training
    student = train_student(teacher, x, y, alpha=0.5, epochs=...)  # to_stochastic + fine-tune

The student is fine-tuned with cross-entropy, optionally plus distillation from the teacher
(``distill`` > 0: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, Hinton et al.).
``fit`` also does adversarial training (``adversary``), used by the PGD and PNI baselines.
Long loops show tqdm progress bars unless ``progress=False``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import calibrate, to_stochastic


def progress_bar(iterable, *, desc: str = "", enabled: bool = True, total: int | None = None,
                 leave: bool = False):
    """``tqdm(iterable)`` when ``enabled`` and tqdm is installed, else ``iterable``."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            shuffle: bool = True):
    """Index tensors covering ``range(n)`` in batches (a fresh permutation if ``shuffle``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float = 4.0) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
    adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
    adv_weight: float = 0.5,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` with Adam; returns it in eval mode.

    Loss: cross-entropy, plus ``distill`` times the distillation loss from ``teacher`` when
    ``distill > 0``.  With an ``adversary`` (``adversary(model, xb, yb) -> x_adv``, run with
    the model in eval mode), the cross-entropy is ``(1 - adv_weight) * CE(clean) +
    adv_weight * CE(adversarial)``.  Batch order comes from a generator seeded with ``seed``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if distill > 0 and teacher is None:
        raise ValueError("distill > 0 needs a teacher")
    if not 0 <= adv_weight <= 1:
        raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    steps = [(e, idx) for e in range(epochs) for idx in batches(x.shape[0], batch_size, gen)]
    bar = progress_bar(steps, desc=desc, enabled=progress)
    for _, idx in bar:
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        if adversary is not None:
            model.eval()
            xa = adversary(model, xb, yb)
            model.train()
            loss = ((1 - adv_weight) * F.cross_entropy(model(xb), yb)
                    + adv_weight * F.cross_entropy(model(xa), yb))
        else:
            model.train()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            if distill > 0:
                with torch.no_grad():
                    t_logits = teacher(xb)
                loss = loss + distill * distillation_loss(logits, t_logits, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


def train_student(
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    alpha: float,
    *,
    epochs: int,
    lr: float = 5e-4,
    distill: float = 0.0,
    layers: tuple[type, ...] = (nn.Conv2d,),
    calibration_batches: int = 8,
    noise_options: dict | None = None,
    **fit_options,
) -> nn.Module:
    """Teacher-initialised student: ``to_stochastic(teacher, alpha)``, then fine-tuned.

    After fine-tuning, the noise layers' running variances are recomputed from
    ``calibration_batches`` training batches with the final weights (:func:`anoise.calibrate`),
    so inference noise matches the weights it is applied to.  The teacher is not changed.
    """
    student = to_stochastic(teacher, alpha, layers=layers, **(noise_options or {}))
    fit(student, x, y, epochs=epochs, lr=lr, teacher=teacher, distill=distill, **fit_options)
    recalibrate(student, x, calibration_batches, fit_options.get("batch_size", 128))
    return student


def recalibrate(model: nn.Module, x: Tensor, num_batches: int, batch_size: int) -> nn.Module:
    """:func:`anoise.calibrate` on the first ``num_batches`` batches of ``x``."""
    if num_batches > 0:
        calibrate(model, (x[i:i + batch_size]
                          for i in range(0, min(x.shape[0], num_batches * batch_size),
                                         batch_size)))
    return model.eval()
