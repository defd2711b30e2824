"""One training step (forward, backward, SGD) of each model of benchmarks/models.py: teacher vs
stochastic student.

The student is ``anoise.to_stochastic(teacher)`` (noise after every convolution of the CNNs,
after every ``nn.Linear`` of the token model) on each usable backend; its overhead is reported
in percent of the teacher's step.  ``python -m benchmarks.train_step`` measures the same steps
interleaved, with the BatchNorms' cost beside the noise layers'.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import anoise

from . import common
from .models import MODELS, batch, student_of

E2E_IMPLS = ["teacher"] + [f"student-{name}" for name in anoise.backends()]
_TEACHER_MEAN: dict[tuple, float] = {}


def _batch_size(model: str, e2e_batch: int) -> int:
    """--bench-e2e-batch for ResNet-20 and the token model; half of it for the wide CNN."""
    return max(1, e2e_batch // 2) if model == "wide-cnn" else e2e_batch


@pytest.mark.parametrize("e2e_impl", E2E_IMPLS)
def test_resnet20_step(benchmark, device, target_s, e2e_batch, e2e_impl):
    _train_step(benchmark, device, target_s, e2e_batch, "resnet20", e2e_impl)


@pytest.mark.parametrize("e2e_impl", E2E_IMPLS)
@pytest.mark.parametrize("e2e_model", [m for m in MODELS if m != "resnet20"])
def test_model_step(benchmark, device, target_s, e2e_batch, e2e_model, e2e_impl):
    _train_step(benchmark, device, target_s, e2e_batch, e2e_model, e2e_impl)


def _train_step(benchmark, device, target_s, e2e_batch, e2e_model, e2e_impl):
    size = _batch_size(e2e_model, e2e_batch)
    benchmark.group = f"e2e {e2e_model} train step batch={size}"
    backend = e2e_impl.split("-", 1)[1] if e2e_impl != "teacher" else None
    if backend is not None:
        reason = common.unusable_reason(backend, device)
        if reason is not None:
            pytest.skip(reason)
    spec = MODELS[e2e_model]
    torch.manual_seed(0)
    model = spec.build().to(device)
    if backend is not None:
        model = student_of(spec, model, backend=backend, alpha=common.ALPHA)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = batch(spec, device, size)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    common.run_pedantic(benchmark, step, device, target_s)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run, nothing was timed
        return

    mean = benchmark.stats.stats.mean
    key = (device.type, e2e_model, size)
    if backend is None:
        _TEACHER_MEAN[key] = mean
    teacher = _TEACHER_MEAN.get(key)
    benchmark.extra_info.update(
        impl=e2e_impl,
        backend=backend or "none",
        mode="train step",
        device=device.type,
        model=e2e_model,
        batch=size,
        noise_layers=len(anoise.noise_layers(model)),
        images_per_s=size / mean,
        overhead_pct=None if teacher is None else 100.0 * (mean - teacher) / teacher,
        peak_mem_bytes=common.peak_bytes(step, device),
    )
