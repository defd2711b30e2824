"""The CPU goals of the `cpu` backend against what a user would run instead, in one run.

    python -m benchmarks.cpu_goals [--shape 32x64x56x56] [--threads 2] [--repeats 7]

Times, interleaved round by round (so load from other processes hits every row alike) and
reported as the minimum over rounds:

- the PyTorch idiom (`var_mean` + `randn_like` + add), eager and under `torch.compile`, forward
  and forward+backward (gradients w.r.t. x through the statistics);
- the `cpu` backend through the public API, the same two modes, plus eval with running
  statistics and a constant alpha (forward, and forward+backward w.r.t. x);
- the normal generator alone: `anoise._cpu.randn` against `torch.randn`;

and prints the ratios next to the goals and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import anoise.functional as AF
from anoise import _cpu

from .common import parse_shape

ALPHA, EPS = 0.1, 1e-5
GOALS = [  # (what, numerator row, denominator row, goal)
    ("forward vs eager idiom", "idiom eager fwd", "cpu fwd", 8.0),
    ("forward vs compiled idiom", "idiom compiled fwd", "cpu fwd", 10.0),
    ("fwd+bwd vs eager idiom", "idiom eager fwd+bwd", "cpu fwd+bwd", 4.0),
    ("randn vs torch.randn", "torch.randn", "cpu randn", 4.0),
    ("eval fwd / eval fwd+bwd", "cpu eval fwd", "cpu eval fwd+bwd", 1 / 1.25),
]


def idiom(x: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=[0] + list(range(2, x.dim())), unbiased=False, keepdim=True)
    return x + ALPHA * torch.sqrt(var + EPS) * torch.randn_like(x)


def calls(shape) -> dict[str, object]:
    x = torch.randn(shape)
    xg = x.clone().requires_grad_()
    dy = torch.randn(shape)
    C = shape[1]
    running_var = torch.rand(C) + 0.5
    compiled = torch.compile(idiom, dynamic=False)
    seed = torch.tensor([0x5EED1234], dtype=torch.int64)

    def fwd_bwd(f):
        def call():
            (dx,) = torch.autograd.grad(f(xg), xg, dy)
            return dx

        return call

    def cpu(t):
        return AF.adaptive_noise(t, ALPHA, backend="cpu")

    def cpu_eval(t):
        return AF.adaptive_noise(t, ALPHA, running_var=running_var, training=False, backend="cpu")

    return {
        "idiom eager fwd": lambda: idiom(x),
        "idiom compiled fwd": lambda: compiled(x),
        "cpu fwd": lambda: cpu(x),
        "idiom eager fwd+bwd": fwd_bwd(idiom),
        "idiom compiled fwd+bwd": fwd_bwd(compiled),
        "cpu fwd+bwd": fwd_bwd(cpu),
        "cpu eval fwd": lambda: cpu_eval(x),
        "cpu eval fwd+bwd": fwd_bwd(cpu_eval),
        "torch.randn": lambda: torch.randn(math.prod(shape)),
        "cpu randn": lambda: _cpu.randn(math.prod(shape), seed),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="32x64x56x56")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = parse_shape(args.shape)
    fns = calls(shape)
    for f in fns.values():  # warm up (and compile)
        f()
        f()
    best = dict.fromkeys(fns, math.inf)
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    load_after = os.getloadavg()
    print(f"shape {args.shape} float32, {args.threads} threads, isa {_cpu.isa()}, "
          f"min of {args.repeats} interleaved rounds")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    for name, t in best.items():
        print(f"  {name:24s} {t * 1e3:8.2f} ms")
    print("ratios:")
    for what, num, den, goal in GOALS:
        r = best[num] / best[den]
        verdict = "met" if r >= goal else "NOT met"
        print(f"  {what:28s} {r:6.2f}x  (goal >= {goal:.2f}x: {verdict})")


if __name__ == "__main__":
    main()
