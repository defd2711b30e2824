"""More than 2**32 elements through the fused CPU backend: 64-bit noise indices end to end
(element i draws component i & 3 of group i >> 2, so group counters pass 2**30 here)."""

import pytest
import torch
from conftest import NO_COMPILER

import anoise.functional as AF
from anoise.philox import philox_normal

NUMEL = 2**32 + 3 * 2**20  # past 2**32, so the counter's high word is exercised


@pytest.mark.slow
@pytest.mark.skipif(NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}")
def test_noise_past_2_pow_31_and_2_pow_32_on_the_cpu_backend():
    C, S = 3, 2**20
    N = NUMEL // (C * S)
    # A stride-0 input costs no memory; the float16 output is 8 GiB.
    x = torch.zeros((), dtype=torch.float16).expand(N, C, S)
    running_var = torch.tensor([0.25, 1.0, 4.0])
    seed = 2**40 + 12345
    y = AF.adaptive_noise(x, 1.0, running_var=running_var, training=False, seed=seed,
                          backend="cpu")
    assert y.shape == x.shape and y.is_contiguous()
    # Every component of the groups on either side of 2**32 (four elements a group).
    idx = torch.tensor([0, 2**31 - 1, 2**31, 2**31 + 7, *range(2**32 - 4, 2**32 + 4), 2**32 + 11,
                        y.numel() - 1])
    channel = (idx // S) % C
    scale = torch.sqrt(running_var.double() + 1e-5)[channel]
    expected = (scale * philox_normal(seed, idx).double()).to(torch.float16)
    actual = y.view(-1)[idx]
    del y
    torch.testing.assert_close(actual, expected, atol=1e-3, rtol=2e-3)
