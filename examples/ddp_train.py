"""DDP training of a stochastic student whose noise statistics span every rank.

    torchrun --nproc_per_node=2 examples/ddp_train.py          # CPU, gloo
    torchrun --nproc_per_node=8 examples/ddp_train.py --cuda   # one GPU per rank, nccl
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import anoise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="one CUDA device per rank (nccl)")
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    args = parser.parse_args()
    dist.init_process_group("nccl" if args.cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if args.cuda else "cpu")

    torch.manual_seed(0)  # the same teacher, and the same noise seeds, on every rank
    teacher = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(16, 10))
    student = anoise.convert_sync(anoise.to_stochastic(teacher, alpha=0.2)).to(device)
    model = nn.parallel.DistributedDataParallel(student)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    data = torch.Generator().manual_seed(1 + rank)  # each rank its own shard of the data
    for step in range(args.steps):
        x = torch.randn(32, 3, 16, 16, generator=data).to(device)
        y = torch.randint(0, 10, (32,), generator=data).to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 5 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    if rank == 0:
        rv = student[0].noise.running_var
        print(f"running_var of the first noise layer (global batch): {rv[:4].tolist()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
