"""Statistics synchronised across 2 processes (gloo, CPU) equal one process on the whole batch."""

import gc
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import usable_backends
from torch import nn

import anoise
import anoise.functional as AF

WORLD = 2
BATCH = (3, 5)  # unequal per-rank batches: the noise offsets must follow the real sizes


def _model(backend):
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    return anoise.to_stochastic(teacher, 0.3, layers=(nn.Conv2d, nn.Linear),
                                learnable_alpha=True, per_channel_alpha=True, backend=backend)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(BATCH), 3, 6, 6, generator=g), torch.randn(sum(BATCH), 3, generator=g)


def _step(model, x, w):
    x = x.clone().requires_grad_()
    torch.manual_seed(123)  # every rank and the single process draw the same seeds
    out = model(x)
    (out * w).sum().backward()
    return out.detach(), x.grad


def _rank_step(rank, result_file, backend):
    model = anoise.convert_sync(_model(backend))
    ddp = nn.parallel.DistributedDataParallel(model)
    x, w = _data()
    lo = sum(BATCH[:rank])
    out, xgrad = _step(ddp, x[lo : lo + BATCH[rank]], w[lo : lo + BATCH[rank]])
    torch.save({
        "out": out, "xgrad": xgrad,
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "running_var": [m.running_var for m in anoise.noise_layers(model)],
    }, f"{result_file}.{rank}")


def _worker(rank, init_file, result_file, backend):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        _rank_step(rank, result_file, backend)
        # Free DDP's reducer while the group is alive: a reducer that outlives it can
        # deadlock gloo's teardown.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
@pytest.mark.parametrize("backend", usable_backends("cpu"))
def test_two_process_ddp_step_equals_single_process(backend):
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result")
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), result, backend), nprocs=WORLD)
        ranks = [torch.load(f"{result}.{r}") for r in range(WORLD)]

    model = _model(backend)
    x, w = _data()
    out, xgrad = _step(model, x, w)
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["xgrad"] for r in ranks]), xgrad, atol=1e-5,
                               rtol=1e-5)
    for name, p in model.named_parameters():
        # DDP averages the ranks' gradients; the single process sums over the whole batch.
        for r in ranks:
            torch.testing.assert_close(r["grads"][name] * WORLD, p.grad, atol=1e-4, rtol=1e-4,
                                       msg=name)
    for r in ranks:
        for rv, layer in zip(r["running_var"], anoise.noise_layers(model), strict=True):
            torch.testing.assert_close(rv, layer.running_var)


def _huge_data():
    """Float32 values of magnitude 1e19: their variance fits float32, their sum of squares not."""
    g = torch.Generator().manual_seed(2)
    sign = torch.randint(0, 2, (sum(BATCH), 3, 4), generator=g) * 2 - 1
    return sign * (0.5 + 0.5 * torch.rand(sum(BATCH), 3, 4, generator=g)) * 1e19


def _huge_worker(rank, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        lo = sum(BATCH[:rank])
        running_var = torch.ones(3)
        y = AF.adaptive_noise(_huge_data()[lo : lo + BATCH[rank]], 0.5, seed=7, sync_stats=True,
                              running_var=running_var, backend="reference")
        torch.save({"y": y, "running_var": running_var}, f"{result_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_process_statistics_of_huge_values_are_finite():
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result")
        mp.spawn(_huge_worker, args=(os.path.join(tmp, "init"), result), nprocs=WORLD)
        ranks = [torch.load(f"{result}.{r}") for r in range(WORLD)]
    x = _huge_data()
    running_var = torch.ones(3)
    y = AF.adaptive_noise(x, 0.5, seed=7, running_var=running_var, backend="reference")
    unbiased = torch.var(x.double(), dim=(0, 2))
    assert torch.isfinite(y).all() and torch.isfinite(running_var).all()
    torch.testing.assert_close(running_var.double(), 0.9 + 0.1 * unbiased, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y, rtol=1e-5, atol=0)
    for r in ranks:
        torch.testing.assert_close(r["running_var"], running_var, rtol=1e-5, atol=0)


def test_sync_without_process_group_is_local():
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(AF.adaptive_noise(x, 0.3, seed=1, sync_stats=True),
                               AF.adaptive_noise(x, 0.3, seed=1))
    layer = anoise.convert_sync(nn.Sequential(anoise.AdaptiveNoise(3)))[0]
    assert layer.sync_stats and "sync_stats=True" in repr(layer)
