"""The `cpu` backend's normal generator per instruction-set build, against another build.

    python -m benchmarks.cpu_generator [--n 1000000] [--rounds 5] [--repeats 10]
                                       [--other PYTHON] [--kernels]

Times `anoise._cpu.randn(n, seed)` under each vectorised build (`_cpu.set_isa`) on one thread
(thread CPU time) and on two (wall time, as the second thread's CPU time is not the caller's),
and with `--kernels` the `forward_batch` / `backward_batch` launchers at three shapes (one
thread). Each measurement runs in a fresh worker process; with `--other` (a Python whose
`anoise` is another build, e.g. the main checkout's virtual environment) the workers of the two
builds alternate round by round, so that load from other processes hits both alike. Reported:
the minimum over rounds (each the minimum of `--repeats` calls), in G normals/s and cycles per
normal at the nominal 2.6 GHz (a ratio between builds is what to read), and the speedup of this
build over the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial

GHZ = 2.6
SHAPES = [(32, 16, 32, 32), (32, 64, 8, 8), (32, 64, 56, 56)]


def worker(n: int, repeats: int, kernels: bool) -> dict:
    import torch

    from anoise import _cpu

    seed = torch.tensor([12345], dtype=torch.int64)
    out = {"ext": getattr(_cpu, "_ext", _cpu).__file__, "randn": {}, "kernels": {}}

    def best(f, clock):
        f()
        times = []
        for _ in range(repeats):
            t0 = clock()
            f()
            times.append(clock() - t0)
        return min(times)

    for isa in _cpu.isa_list():
        _cpu.set_isa(isa)
        for threads, clock in ((1, time.thread_time), (2, time.perf_counter)):
            torch.set_num_threads(threads)
            out["randn"][f"{isa} {threads}t"] = best(partial(_cpu.randn, n, seed), clock)
    if kernels:
        torch.set_num_threads(1)
        _cpu.set_isa(_cpu.isa_list()[-1])
        gen = torch.Generator().manual_seed(0)
        for shape in SHAPES:
            x3 = (shape[0], shape[1], shape[2] * shape[3])  # the launchers take (N, C, S)
            x = torch.randn(x3, generator=gen)
            dy = torch.randn(x3, generator=gen)
            alpha = torch.full((shape[1],), 0.1)
            _, mean, var = _cpu.forward_batch(x, alpha, seed, 1e-5)
            sigma = torch.sqrt(var + 1e-5)
            name = "x".join(map(str, shape))
            out["kernels"][f"forward_batch {name}"] = best(
                partial(_cpu.forward_batch, x, alpha, seed, 1e-5), time.thread_time)
            out["kernels"][f"backward_batch {name}"] = best(
                partial(_cpu.backward_batch, dy, x, alpha, mean, sigma, seed), time.thread_time)
    return out


def run_worker(python: str, args) -> dict:
    cmd = [python, os.path.abspath(__file__), "--worker", "--n", str(args.n),
           "--repeats", str(args.repeats)] + (["--kernels"] if args.kernels else [])
    # From /tmp, so that `import anoise` finds the interpreter's installed anoise, not a checkout
    # in the working directory.
    res = subprocess.run(cmd, cwd="/tmp", capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def merge(acc: dict | None, new: dict) -> dict:
    if acc is None:
        return new
    for part in ("randn", "kernels"):
        for k, v in new[part].items():
            acc[part][k] = min(acc[part].get(k, v), v)
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="normals per randn call")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--other", help="a Python whose anoise is the build to compare against")
    p.add_argument("--kernels", action="store_true", help="also time forward/backward_batch")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.n, args.repeats, args.kernels)))
        return
    this = other = None
    for _ in range(args.rounds):
        this = merge(this, run_worker(sys.executable, args))
        if args.other:
            other = merge(other, run_worker(args.other, args))
    print(f"load average {os.getloadavg()[0]:.2f}; n = {args.n:,}; min of {args.rounds} rounds "
          f"x {args.repeats} calls; this build: {this['ext']}")
    if other:
        print(f"other build: {other['ext']}")
    print(f"\n{'randn':<16}{'G normals/s':>14}{'cycles/normal':>15}", end="")
    print(f"{'other G/s':>11}{'other cyc':>11}{'speedup':>9}" if other else "")
    for k, t in this["randn"].items():
        line = f"{k:<16}{args.n / t / 1e9:>14.3f}{t * GHZ * 1e9 / args.n:>15.2f}"
        if other and k in other["randn"]:
            o = other["randn"][k]
            line += f"{args.n / o / 1e9:>11.3f}{o * GHZ * 1e9 / args.n:>11.2f}{o / t:>8.2f}x"
        print(line)
    if this["kernels"]:
        print(f"\n{'one thread, ms':<32}{'this':>9}", end="")
        print(f"{'other':>9}{'speedup':>9}" if other else "")
        for k, t in this["kernels"].items():
            line = f"{k:<32}{t * 1e3:>9.3f}"
            if other and k in other["kernels"]:
                o = other["kernels"][k]
                line += f"{o * 1e3:>9.3f}{o / t:>8.2f}x"
            print(line)


if __name__ == "__main__":
    main()
