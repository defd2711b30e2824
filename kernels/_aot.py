"""Compile the kernels for a GPU architecture without a GPU (``python -m anoise.kernels._aot``).

The launchers are run on CPU tensors with every kernel launch intercepted: each launch is
specialised exactly as Triton would at run time (argument types, 16-byte alignment and
divisibility, constexprs) and compiled to PTX and a cubin for the target (default sm_90, the
H100/H200), instead of being run.  This checks that the kernels lower through the real compiler
(the interpreter accepts things the compiler rejects) and shows whether global loads and stores
vectorise.  Must run without ``TRITON_INTERPRET=1``.
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


@dataclass
class Compiled:
    kernel: str
    ptx: str
    n_regs: int
    local_bytes: int  # per-thread local memory: register spills

    def vector_ops(self) -> dict[str, int]:
        """Counts of global load/store instructions by vector width (1, 2, 4)."""
        counts: dict[str, int] = {}
        for op, width in re.findall(r"(ld|st)\.global(?:\.\w+)*?(?:\.v(\d))?\.[bfsu]\d+", self.ptx):
            key = f"{op}.v{width or 1}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, local-memory bytes per thread) from ``cuobjdump -res-usage``."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
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
            self.out.append(Compiled(self.name, k.asm["ptx"], regs, local))

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


def representative_launches():
    """Launches covering the kernels' variants: layouts, dtypes, fused and split reductions,
    32- and 64-bit indices.  Yields ``(label, callable)``."""
    from ._config import configure

    seed = torch.zeros(1, dtype=torch.int64)

    def case(shape, dtype, layout="nchw"):
        x = torch.empty(shape, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        x3 = x.reshape(shape[0], shape[1], -1) if x.dim() > 2 else x.unsqueeze(-1)
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        c = torch.ones(shape[1], dtype=sd)
        return x3, c

    def fwd_bwd(shape, dtype, layout="nchw", **cfg):
        def run():
            x3, c = case(shape, dtype, layout)
            with configure(**cfg):
                _launch.forward_batch(x3, c, seed, 1e-5)
                _launch.forward_scaled(x3, c, seed)
                _launch.backward_batch(x3, x3, c, c, c, seed)
                _launch.noise_dot(x3, seed)
        return run

    yield "nchw fp16 split", fwd_bwd((64, 64, 32, 32), torch.float16, chunks=8)
    yield "nchw fp32 fused", fwd_bwd((64, 64, 32, 32), torch.float32, chunks=1)
    yield "channels_last bf16 split", fwd_bwd((64, 64, 16, 16), torch.bfloat16, "channels_last",
                                              chunks=8)
    yield "linear fp32 split", fwd_bwd((4096, 1024), torch.float32, chunks=4)
    yield "nchw fp64 int64 split", fwd_bwd((8, 16, 8, 8), torch.float64, chunks=2,
                                           force_int64=True)
    yield "raw stream", lambda: _launch.philox_at(torch.arange(4096), 2**64 - 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--json", action="store_true", help="one JSON record per kernel")
    args = parser.parse_args(argv)
    _launch_planner_gpu_defaults()
    for label, run in representative_launches():
        with intercept(args.arch) as compiled:
            run()
        for c in compiled:
            if args.json:
                print(json.dumps(dict(case=label, kernel=c.kernel, regs=c.n_regs,
                                      local_bytes=c.local_bytes, vector_ops=c.vector_ops())))
            else:
                print(f"{label:28s} {c.kernel:22s} regs={c.n_regs:3d} local={c.local_bytes} "
                      f"{c.vector_ops()}")


def _launch_planner_gpu_defaults():
    """Plan as on a GPU (tile 2048), though the tensors are on the CPU."""
    from ._config import config

    if config.tile is None:
        config.tile = 2048


if __name__ == "__main__":
    main()
