"""Compile the kernels for a GPU architecture without a GPU (``python -m anoise.kernels._aot``).

The launchers are run on CPU tensors with every kernel launch intercepted: each launch is
specialised exactly as Triton would at run time (argument types, 16-byte alignment and
divisibility, constexprs) and compiled to PTX and a cubin for the target (default sm_90, the
H100/H200), instead of being run.  This checks that the kernels lower through the real compiler
(the interpreter accepts things the compiler rejects) and shows whether global loads and stores
vectorise.  Must run without ``TRITON_INTERPRET=1``.

It also prints a static proxy for GPU speed (``--proxy``, the default): the SASS instructions
per element of each hot loop.  Method: disassemble the cubin (``cuobjdump -sass``), find each
innermost loop (a branch back to an earlier address; every instruction from its target to the
branch, NOPs excluded, is one iteration), and divide its instruction count by the elements a
thread handles per iteration (tile elements / threads per program).  A program that is not a
loop (none here) would be counted whole.  The implied roof is the H200's issue rate, 132 SMs x 4
schedulers x 32 lanes x ~1.98 GHz = ~33.5e12 thread-instructions/s, divided by the instructions
per element, set against the memory roof (the bytes per element the loop moves, at ~4.3 TB/s).
It is a static count, not a GPU measurement: it ignores latency, dual issue, pipe throughput
(wide multiplies and MUFU run below one instruction per lane per clock) and memory stalls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import _kernels, _launch

KERNELS = ("stats_kernel", "combine_stats_kernel", "inject_kernel", "noise_dot_kernel",
           "combine_g_kernel", "dx_kernel", "philox_kernel")


# H200 (sm_90): SMs x schedulers per SM x lanes x clock, and HBM3e copy bandwidth.
ISSUE_RATE = 132 * 4 * 32 * 1.98e9  # thread-instructions/s
MEMORY_BANDWIDTH = 4.3e12  # bytes/s


@dataclass
class Compiled:
    kernel: str
    ptx: str
    n_regs: int
    local_bytes: int  # per-thread local memory: register spills
    sass: str = ""
    constexprs: dict | None = None
    num_warps: int = 4

    def loops(self) -> list[int]:
        """Instruction counts of the innermost loops' bodies, in address order."""
        return [len(body) for body in self.loop_bodies()]

    def loop_bodies(self) -> list[list[str]]:
        """The innermost loops' instructions, in address order."""
        code = []
        for line in self.sass.splitlines():
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
            if m and m.group(2) != "NOP":
                code.append((int(m.group(1), 16), m.group(2)))
        spans = []
        for addr, text in code:
            # A loop's back edge is conditional; an unconditional jump back only reorders code
            # (as around the rescaled reduction of stats_kernel with triton 3.9).
            m = re.search(r"^@!?U?P\w+\s+BRA(?:\.\w+)*\s+0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) < addr:
                spans.append((int(m.group(1), 16), addr))
        inner = [a for a in spans if not any(a[0] <= b[0] and b[1] <= a[1] and a != b
                                             for b in spans)]
        return [[text for addr, text in code if lo <= addr <= hi] for lo, hi in sorted(inner)]

    def elements_per_thread(self) -> float:
        k = self.constexprs or {}
        return k.get("BN", 1) * k.get("BC", 1) * k.get("BS", 1) / (32 * self.num_warps)

    def hot_loops(self) -> list[tuple[str, list[str]]]:
        """``(name, instructions of one iteration)`` of this kernel's hot loops."""
        k = self.constexprs or {}
        # float32 statistics carry a second reduction loop, run only for channels whose M2
        # overflows (kernels/_kernels.py): not a hot loop, left out of the proxy.
        stats = ["statistics"] + (["rescaled statistics"] if k.get("ACC") == "fp32" else [])
        names = {
            "stats_kernel": stats + ["inject"] if k.get("FUSED") else stats,
            "inject_kernel": ["inject"],
            "noise_dot_kernel": ["g", "dx"] if k.get("MODE") == 2 else ["g"],
            "dx_kernel": ["dx"],
        }.get(self.kernel)
        if names is None:
            return []
        loops = self.loop_bodies()
        if len(loops) != len(names):
            raise RuntimeError(f"{self.kernel}: expected loops {names}, found {len(loops)} in the "
                               "SASS")
        return [(name, body) for name, body in zip(names, loops, strict=True)
                if name != "rescaled statistics"]

    def vector_ops(self) -> dict[str, int]:
        """Counts of global load/store instructions by vector width (1, 2, 4)."""
        counts: dict[str, int] = {}
        for op, width in re.findall(r"(ld|st)\.global(?:\.\w+)*?(?:\.v(\d))?\.[bfsu]\d+", self.ptx):
            key = f"{op}.v{width or 1}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), *flags, f.name], capture_output=True, text=True,
                              check=True).stdout


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread) from ``cuobjdump -res-usage``."""
    text = _cuobjdump(cubin, "-res-usage")
    regs = re.search(r"REG:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(local.group(1)) if local else -1


class _Interceptor:
    def __init__(self, name, fn, target, out):
        self.name, self.fn, self.target, self.out = name, fn, target, out
        self.backend = make_backend(target)
        self.binder = create_function_from_signature(fn.signature, fn.params, self.backend)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            bound, spec, options = self.binder(*args, **kwargs)
            options, signature, constexprs, attrs = self.fn._pack_args(
                self.backend, kwargs, bound, spec, options
            )
            src = ASTSource(self.fn, signature, constexprs, attrs)
            k = triton.compile(src, target=self.target, options=options.__dict__)
            regs, local = _resource_usage(k.asm["cubin"])
            consts = {name: kwargs[name] for name in ("BN", "BC", "BS", "FUSED", "MODE")
                      if name in kwargs}
            if "ACC" in kwargs:
                consts["ACC"] = str(kwargs["ACC"])
            self.out.append(Compiled(self.name, k.asm["ptx"], regs, local,
                                     _cuobjdump(k.asm["cubin"], "-sass"), consts,
                                     options.num_warps))

        return launch


@contextlib.contextmanager
def intercept(arch: int = 90):
    """Within this context the launchers compile their kernels for ``sm_<arch>`` instead of
    running them; the yielded list collects one :class:`Compiled` per launch."""
    target = GPUTarget("cuda", arch, 32)
    out: list[Compiled] = []
    saved = {name: getattr(_kernels, name) for name in KERNELS}
    try:
        for name, fn in saved.items():
            setattr(_launch.K, name, _Interceptor(name, fn, target, out))
        yield out
    finally:
        for name, fn in saved.items():
            setattr(_launch.K, name, fn)


def _case(shape, dtype, layout="nchw"):
    x = torch.empty(shape, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x3 = x.reshape(shape[0], shape[1], -1) if x.dim() > 2 else x.unsqueeze(-1)
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    return x3, torch.ones(shape[1], dtype=sd)


def _fwd_bwd(shape, dtype, layout="nchw", index_base=0, **cfg):
    from ._config import configure

    seed = torch.zeros(1, dtype=torch.int64)

    def run():
        x3, c = _case(shape, dtype, layout)
        with configure(**cfg):
            _launch.forward_batch(x3, c, seed, 1e-5, index_base=index_base)
            _launch.forward_scaled(x3, c, seed, index_base=index_base)
            _launch.backward_batch(x3, x3, c, c, c, seed, index_base=index_base)
            _launch.noise_dot(x3, seed, index_base=index_base)
    return run


def representative_launches():
    """Launches covering the kernels' variants: layouts, dtypes, fused and split reductions,
    32- and 64-bit indices, rows that do and do not start on a noise group.  Yields
    ``(label, callable)``."""
    fwd_bwd = _fwd_bwd
    yield "nchw fp16 split", fwd_bwd((64, 64, 32, 32), torch.float16, chunks=8)
    yield "nchw fp32 fused", fwd_bwd((64, 64, 32, 32), torch.float32, chunks=1)
    yield "channels_last bf16 split", fwd_bwd((64, 64, 16, 16), torch.bfloat16, "channels_last",
                                              chunks=8)
    yield "linear fp32 split", fwd_bwd((4096, 1024), torch.float32, chunks=4)
    yield "nchw fp64 int64 split", fwd_bwd((64, 16, 16, 16), torch.float64, chunks=2,
                                           force_int64=True)
    # Rows that do not start on a group: S = 49, an odd index base, C % 4 != 0 with S == 1.
    yield "nchw 7x7 fp32 shifted fused", fwd_bwd((64, 64, 7, 7), torch.float32, chunks=1)
    yield "channels_last 7x7 bf16 shifted", fwd_bwd((64, 64, 7, 7), torch.bfloat16,
                                                    "channels_last", chunks=4)
    yield "nchw fp32 odd base int64", fwd_bwd((16, 8, 16, 16), torch.float32, index_base=2**32 + 1,
                                              chunks=2)
    yield "linear C=10 fp32 per-element", fwd_bwd((4096, 10), torch.float32, chunks=4)
    yield "raw stream", lambda: _launch.philox_at(torch.arange(4096), 2**64 - 1)


# The proxy's tensors, planned as on a GPU: the CPU benchmarks' shape in NCHW (rows start on
# noise groups), and for comparison the other layouts: channels_last, 7x7 maps (rows shifted
# onto groups), (N, C) inputs with C a multiple of 4 and not (per-element groups).
PROXY_SHAPE = (32, 64, 56, 56)
PROXY_OTHERS = (("channels_last", (32, 64, 56, 56), "channels_last"),
                ("7x7", (256, 512, 7, 7), "nchw"), ("linear", (4096, 1024), "nchw"),
                ("linear C=10", (65536, 10), "nchw"))
# Bytes a loop moves per element, in units of the element size.
_LOOP_PASSES = {"statistics": 1, "inject": 2, "g": 1, "dx": 3}


def proxy_launches(others: bool = True):
    """``(dtype, layout, label, callable)``: fused and split launches of the proxy shape (and,
    with ``others``, split launches of the other layouts in float32)."""
    for dtype in (torch.float32, torch.bfloat16):
        for label, chunks in (("fused", 1), ("split", 8)):
            yield dtype, "nchw", label, _fwd_bwd(PROXY_SHAPE, dtype, chunks=chunks)
    if others:
        for name, shape, layout in PROXY_OTHERS:
            yield torch.float32, name, "split", _fwd_bwd(shape, torch.float32, layout, chunks=4)


def _variant(c: Compiled, label: str) -> str:
    k = c.constexprs or {}
    if c.kernel == "stats_kernel":
        return "fused, then inject" if k.get("FUSED") else "split"
    if c.kernel == "noise_dot_kernel":
        return {0: "split", 1: "fused", 2: "fused, then dx"}[k.get("MODE")]
    return "one pass" if label == "fused" else label


def proxy(arch: int = 90, others: bool = True) -> list[dict]:
    """One record per hot loop: instructions per iteration and per element, implied roofs."""
    rows, seen = [], set()
    for dtype, layout, label, run in proxy_launches(others):
        with intercept(arch) as compiled:
            run()
        for c in compiled:
            key = (dtype, layout, c.kernel, tuple(sorted((c.constexprs or {}).items())))
            if key in seen:
                continue
            seen.add(key)
            for loop, body in c.hot_loops():
                instrs = len(body)
                per_elem = instrs / c.elements_per_thread()
                shared = sum(bool(re.match(r"(@\S+ )?(STS|LDS|LDSM|BAR)\b", i)) for i in body)
                nbytes = _LOOP_PASSES[loop] * torch.empty((), dtype=dtype).element_size()
                rows.append(dict(
                    loop=loop, kernel=c.kernel, variant=_variant(c, label), layout=layout,
                    dtype=str(dtype).split(".")[-1], instructions=instrs,
                    elements_per_thread=c.elements_per_thread(), per_element=round(per_elem, 2),
                    regs=c.n_regs, local_bytes=c.local_bytes, vector_ops=c.vector_ops(),
                    shared_memory_ops=shared, compute_roof=ISSUE_RATE / per_elem,
                    memory_roof=MEMORY_BANDWIDTH / nbytes, bytes_per_element=nbytes,
                ))
    return rows


def proxy_table(rows) -> str:
    """The proxy as a markdown table (elements/s in G)."""
    out = ["| loop | kernel (variant) | layout | dtype | SASS instr/element | compute roof | "
           "memory roof (B/elem) | bound |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = "memory" if r["memory_roof"] <= r["compute_roof"] else "issue"
        out.append(f"| {r['loop']} | {r['kernel']} ({r['variant']}) | {r['layout']} | "
                   f"{r['dtype']} | {r['per_element']:.1f} ({r['instructions']}/"
                   f"{r['elements_per_thread']:g}) | {r['compute_roof'] / 1e9:.0f} G/s | "
                   f"{r['memory_roof'] / 1e9:.0f} G/s ({r['bytes_per_element']}) | {bound} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--json", action="store_true", help="one JSON record per kernel")
    parser.add_argument("--no-proxy", action="store_true", help="skip the SASS proxy")
    args = parser.parse_args(argv)
    _launch_planner_gpu_defaults()
    for label, run in representative_launches():
        with intercept(args.arch) as compiled:
            run()
        for c in compiled:
            if args.json:
                print(json.dumps(dict(case=label, kernel=c.kernel, regs=c.n_regs,
                                      local_bytes=c.local_bytes, vector_ops=c.vector_ops(),
                                      loops=c.loops())))
            else:
                print(f"{label:28s} {c.kernel:22s} regs={c.n_regs:3d} local={c.local_bytes} "
                      f"{c.vector_ops()}")
    if args.no_proxy:
        return
    rows = proxy(args.arch)
    if args.json:
        for r in rows:
            print(json.dumps(dict(proxy=True, **r)))
    else:
        print(f"\nsm_{args.arch} proxy, {PROXY_SHAPE} unless the layout says otherwise, planned "
              "as on a GPU (a static SASS count, not a GPU measurement):\n")
        print(proxy_table(rows))


def _launch_planner_gpu_defaults():
    """Plan as on a GPU (tile 2048, per-program overhead 128), though the tensors are on the
    CPU."""
    from ._config import config

    if config.tile is None:
        config.tile = 2048
    if config.program_overhead is None:
        config.program_overhead = 128


if __name__ == "__main__":
    main()
