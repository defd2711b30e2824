"""Forward, forward+backward, eval (running statistics) and eval forward+backward of every
usable backend.

Each row sits in the benchmark group of its shape and dtype, next to the PyTorch idiom a user
would write instead (eager and under torch.compile) and anoise's reference.  ``extra_info``
carries the effective GB/s (bytes defined in ``common``), elements per second and the memory
of the call.
"""

from __future__ import annotations

import pytest
import torch

from . import common


@pytest.mark.parametrize("mode", common.MODES)
def test_op(benchmark, request, device, target_s, shape, dtype_name, mode, impl):
    benchmark.group = f"op {common.shape_label(shape)} {dtype_name}"
    reason = common.unusable_reason(impl, device)
    if reason is None and impl == "torch-compile":
        reason = request.getfixturevalue("compile_unusable")
    if reason is not None:
        pytest.skip(reason)
    dtype = common.DTYPES[dtype_name]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype)
    call = common.make_call(impl, mode, x)
    common.run_pedantic(benchmark, call, device, target_s)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run, nothing was timed
        return

    numel, itemsize = x.numel(), x.element_size()
    mean = benchmark.stats.stats.mean
    moved = common.bytes_moved(mode, numel, itemsize)
    benchmark.extra_info.update(
        impl=impl,
        backend=common.backend_of(impl),
        mode=mode,
        shape=list(shape),
        dtype=dtype_name,
        device=device.type,
        numel=numel,
        itemsize=itemsize,
        bytes_moved=moved,
        gbps=moved / mean / 1e9,
        melem_per_s=numel / mean / 1e6,
        peak_mem_bytes=common.peak_bytes(call, device),
        saved_bytes=_saved_bytes(impl, mode, x),
        input_bytes=numel * itemsize,
    )


_SAVED: dict[tuple, int] = {}


def _saved_bytes(impl, mode, x):
    """What the forward keeps for backward (x requiring grad); forward rows share it."""
    kind = "eval" if mode == "eval" else "forward"
    key = (impl, kind, tuple(x.shape), x.dtype, x.device.type)
    if key not in _SAVED:
        _SAVED[key] = common.saved_bytes(common.forward_of(mode, impl, x))
    return _SAVED[key]
