"""Noise generation alone: a fused backend's Philox normals next to ``torch.randn``.

The same element count as the (32, 64, 56, 56) input; ``extra_info`` carries elements per
second.  Only backends with a ``randn`` launcher (cpu, cuda) have a row.
"""

from __future__ import annotations

import math

import pytest
import torch

from anoise.backends import launcher

from . import common

NOISE_SHAPE = (32, 64, 56, 56)


@pytest.mark.parametrize("source", ["torch.randn", "cpu", "cuda"])
def test_noise(benchmark, device, target_s, source):
    numel = math.prod(NOISE_SHAPE)
    benchmark.group = f"noise {numel:,} float32 normals"
    if source == "torch.randn":
        def call():
            return torch.randn(numel, device=device)
    else:
        reason = common.unusable_reason(source, device)
        if reason is not None:
            pytest.skip(reason)
        randn = launcher(source).randn
        seed = torch.tensor([common.SEED], dtype=torch.int64, device=device)

        def call():
            return randn(numel, seed)
    common.run_pedantic(benchmark, call, device, target_s)
    if benchmark.stats is None:
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(impl=source, mode="noise", device=device.type, numel=numel,
                                melem_per_s=numel / mean / 1e6)
