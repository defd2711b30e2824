"""One training step (forward, backward, SGD) of a ResNet-20: teacher vs stochastic student.

The student is ``anoise.to_stochastic(teacher)`` (noise after every convolution) on each
usable backend; its overhead is reported in percent of the teacher's step.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import anoise

from . import common
from .resnet import ResNet20

E2E_IMPLS = ["teacher"] + [f"student-{name}" for name in anoise.backends()]
_TEACHER_MEAN: dict[tuple, float] = {}


@pytest.mark.parametrize("e2e_impl", E2E_IMPLS)
def test_resnet20_step(benchmark, device, target_s, e2e_batch, e2e_impl):
    benchmark.group = f"e2e resnet20 train step batch={e2e_batch}"
    backend = e2e_impl.split("-", 1)[1] if e2e_impl != "teacher" else None
    if backend is not None:
        reason = common.unusable_reason(backend, device)
        if reason is not None:
            pytest.skip(reason)
    torch.manual_seed(0)
    model = ResNet20().to(device)
    if backend is not None:
        model = anoise.to_stochastic(model, alpha=common.ALPHA, backend=backend)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(e2e_batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (e2e_batch,), device=device)

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
    key = (device.type, e2e_batch)
    if backend is None:
        _TEACHER_MEAN[key] = mean
    teacher = _TEACHER_MEAN.get(key)
    benchmark.extra_info.update(
        impl=e2e_impl,
        backend=backend or "none",
        mode="train step",
        device=device.type,
        batch=e2e_batch,
        noise_layers=len(anoise.noise_layers(model)),
        images_per_s=e2e_batch / mean,
        overhead_pct=None if teacher is None else 100.0 * (mean - teacher) / teacher,
        peak_mem_bytes=common.peak_bytes(step, device),
    )
