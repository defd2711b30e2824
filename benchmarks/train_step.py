"""A student's training step against its teacher's, model by model, measured side by side.

    python -m benchmarks.train_step [--device cpu|cuda] [--threads N] [--quick] [--json FILE]
                                    [--models resnet20,token,wide-cnn] [--no-compile]
                                    [--rounds R] [--batch B] [--profile MODEL]
                                    [--allocator steady|default]

One step is zero_grad, forward, cross-entropy, backward and an SGD (momentum) update.  For every
model of :mod:`benchmarks.models` it times, interleaved round by round so that load from other
processes hits every variant alike:

- the teacher; its student (``anoise.to_stochastic``, the ``auto`` backend);
- for the CNNs, the teacher with its BatchNorms replaced by identities: the teacher minus it is
  what the BatchNorms cost, the student minus the teacher is what the noise layers cost;

eagerly and under ``torch.compile`` (default mode).  Ratios are taken within each round (the
variants' mean step of that round) and the median over rounds is reported, with the load
average.  glibc's heap is kept steady (``--allocator default``: as it comes; see
:func:`benchmarks.common.steady_allocator` for why).  ``--quick``: 3 rounds of 2 steps, eager
only (under a minute on a 2-core CPU; the compiles alone take minutes there).  ``--profile
MODEL`` prints the torch.profiler table of the eager student's step instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

try:
    import resource  # page faults (POSIX only)
except ImportError:
    resource = None

# As in the benchmark suite (benchmarks/conftest.py): OpenMP threads that spin while they wait
# stall every parallel region when another process holds a core.  Set before torch starts
# OpenMP; a user's value stays.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .common import steady_allocator  # noqa: E402
from .models import MODELS, Spec, batch, student_of, without_batchnorm  # noqa: E402


def make_step(model, x, y, compiled: bool):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def variants(spec: Spec, device: torch.device, compiled: bool, batch_size=None):
    """``{name: step}`` for the teacher, the student and (with BatchNorms) the teacher without."""
    torch.manual_seed(0)
    teacher = spec.build().to(device)
    x, y = batch(spec, device, batch_size)
    models = {"teacher": teacher, "student": student_of(spec, teacher)}
    if spec.has_batchnorm:
        models["no-batchnorm"] = without_batchnorm(teacher)
    return {name: make_step(m, x, y, compiled) for name, m in models.items()}


def timed(step, device: torch.device, n: int) -> tuple[float, float]:
    """Mean seconds and page faults per step over ``n`` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    faults = _faults()
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / n, (_faults() - faults) / n


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def measure(steps: dict, device, rounds: int, per_round: int, warmup: int) -> dict:
    for step in steps.values():  # warm up (and compile)
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    faults = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t, f = timed(step, device, per_round)
            times[name].append(t)
            faults[name].append(f)
    out = {"median_s": {k: statistics.median(v) for k, v in times.items()},
           "min_s": {k: min(v) for k, v in times.items()}, "rounds": times,
           "page_faults_per_step": {k: statistics.median(v) for k, v in faults.items()}}
    t, s = times["teacher"], times["student"]
    out["student_over_teacher"] = statistics.median(b / a for a, b in zip(t, s, strict=True))
    if "no-batchnorm" in times:
        nb = times["no-batchnorm"]
        bn_cost = [a - c for a, c in zip(t, nb, strict=True)]
        noise_cost = [b - a for a, b in zip(t, s, strict=True)]
        out["batchnorm_cost_s"] = bn = statistics.median(bn_cost)
        out["noise_cost_s"] = statistics.median(noise_cost)
        # None when the BatchNorms' cost is lost in the noise of the measurement.
        out["noise_over_batchnorm"] = out["noise_cost_s"] / bn if bn > 0 else None
    return out


def profile(spec: Spec, device: torch.device, steps: int = 5, rows: int = 25) -> str:
    """torch.profiler's table (self CPU time) of the eager student's step, and the share of
    the step spent in the anoise ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = variants(spec, device, compiled=False)["student"]
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    anoise_self = sum(e.self_cpu_time_total for e in avg
                      if "anoise" in e.key or e.key.startswith("_Eager"))
    table = avg.table(sort_by="self_cpu_time_total", row_limit=rows)
    share = 100 * anoise_self / total
    return (f"{table}\n{spec.name}: {steps} student steps, self CPU total {total / 1e3:.1f} "
            f"ms, in anoise events (kernels, seeds, autograd nodes) {anoise_self / 1e3:.1f} "
            f"ms ({share:.1f}%)")


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.2f} ms"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--quick", action="store_true",
                   help="3 rounds of 2 steps, eager only (under a minute on 2 CPU cores)")
    p.add_argument("--json", help="write the measurements to this file")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size of every model (default: each model's own, 16 or 32)")
    p.add_argument("--profile", metavar="MODEL", help="print the eager student's profile")
    p.add_argument("--allocator", choices=("steady", "default"), default="steady",
                   help="steady (default): glibc keeps its heap, so no model pays page faults "
                        "for another's (see steady_allocator); default: glibc as it comes")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    allocator = "steady" if args.allocator == "steady" and steady_allocator() else "default"
    if args.profile:
        if args.profile not in MODELS:
            p.error(f"--profile: unknown model {args.profile!r}; choose from {list(MODELS)}")
        print(profile(MODELS[args.profile], device))
        return 0
    rounds = args.rounds or (3 if args.quick else 7)
    per_round = 2 if args.quick else 3
    start = time.perf_counter()
    load_before = os.getloadavg()
    results = []
    for name in names:
        modes = ["eager"]
        if not (args.no_compile or args.quick):
            modes.append("compiled")
        for mode in modes:
            steps = variants(MODELS[name], device, compiled=mode == "compiled",
                             batch_size=args.batch)
            r = measure(steps, device, rounds, per_round, warmup=2)
            r.update(model=name, mode=mode,
                     batch=args.batch or MODELS[name].input_shape[0])
            results.append(r)
            report_row(r)
    load_after = os.getloadavg()
    meta = dict(
        device=str(device), threads=torch.get_num_threads() if device.type == "cpu" else None,
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        cpu=platform.processor() or platform.machine(), torch=torch.__version__,
        cpu_isa=_cpu_isa(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), rounds=rounds,
        allocator=allocator,
        steps_per_round=per_round,
        load_before=load_before[0], load_after=load_after[0],
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=time.perf_counter() - start,
    )
    print(f"{meta['date']}, {device}, {meta['threads'] or meta['gpu']} threads/GPU, torch "
          f"{torch.__version__}, cpu isa {meta['cpu_isa']}; median of {rounds} interleaved "
          f"rounds of {per_round} steps, {allocator} allocator; load average "
          f"{load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}; {meta['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


def report_row(r: dict) -> None:
    med = r["median_s"]
    parts = [f"{r['model']:<9} {r['mode']:<8}"]
    parts += [f"{k} {fmt_ms(v)}" for k, v in med.items()]
    parts.append(f"student/teacher {r['student_over_teacher']:.3f}x")
    faults = r["page_faults_per_step"]
    if any(faults.values()):
        parts.append("page faults/step " + "/".join(f"{v:.0f}" for v in faults.values()))
    if r.get("noise_over_batchnorm") is not None:
        parts.append(f"noise {r['noise_cost_s'] * 1e3:.1f} ms vs BatchNorm "
                     f"{r['batchnorm_cost_s'] * 1e3:.1f} ms: {r['noise_over_batchnorm']:.2f}x")
    print(" | ".join(parts), flush=True)


def _cpu_isa() -> str | None:
    try:
        from anoise import _cpu
    except ImportError:
        return None
    return _cpu.isa()


if __name__ == "__main__":
    sys.exit(main())
