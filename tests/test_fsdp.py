"""FSDP2 (``fully_shard``) on a student with a learnable scalar alpha: 2 gloo processes on CPU."""

import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import anoise

fsdp = pytest.importorskip("torch.distributed.fsdp")
checkpoint = pytest.importorskip("torch.distributed.checkpoint.state_dict")


def _student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return anoise.to_stochastic(teacher, 0.3, layers=(nn.Conv2d, nn.Linear),
                                learnable_alpha=True, backend="reference")


def _full(state):
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in state.items()}


def _run(rank, world, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _student()
        for layer in (model[0], model[3]):
            fsdp.fully_shard(layer)
        fsdp.fully_shard(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(10 + rank)  # each rank its own data
        for _ in range(3):
            x = torch.randn(8, 3, 6, 6, generator=g)
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        options = checkpoint.StateDictOptions(full_state_dict=True)
        state = _full(checkpoint.get_model_state_dict(model, options=options))
        alphas = torch.stack([state["0.noise.alpha"], state["3.noise.alpha"]]).flatten()
        gathered = [torch.zeros_like(alphas) for _ in range(world)]
        dist.all_gather(gathered, alphas)
        # Round trip: the full state loads into a fresh sharded student.
        fresh = _student()
        fsdp.fully_shard(fresh)
        checkpoint.set_model_state_dict(fresh, {k: v.clone() for k, v in state.items()},
                                        options=options)
        again = _full(checkpoint.get_model_state_dict(fresh, options=options))
        same = all(torch.equal(again[k], v) for k, v in state.items())
        if rank == 0:
            torch.save(dict(alphas=gathered, same=same, state=state), result_path)
        # Free the sharded modules and let every rank finish before the group goes: a rank that
        # tears gloo down while its peer still holds connections can abort ("terminate called
        # without an active exception").
        del model, fresh, optimizer
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_fsdp2_trains_a_learnable_scalar_alpha(tmp_path):
    result_path = tmp_path / "result.pt"
    mp.spawn(_run, args=(2, _free_port(), str(result_path)), nprocs=2, join=True)
    result = torch.load(result_path)
    rank0, rank1 = result["alphas"]
    assert torch.equal(rank0, rank1)  # the ranks agree
    assert (rank0 != 0.3).all()  # alpha trained
    assert result["same"]
    state = result["state"]
    assert state["0.noise.alpha"].shape == (1,)
    # The full state loads into an unsharded student, and so does one saved with alpha of
    # shape () (before a learnable scalar alpha was (1,)).
    plain = _student()
    plain.load_state_dict(state)
    assert plain[0].noise.alpha.item() == pytest.approx(state["0.noise.alpha"].item())
    old = {k: (v.reshape(()) if k.endswith("alpha") else v) for k, v in state.items()}
    plain.load_state_dict(old)
    assert plain[3].noise.alpha.shape == (1,)
    assert plain[3].noise.alpha.item() == pytest.approx(state["3.noise.alpha"].item())
