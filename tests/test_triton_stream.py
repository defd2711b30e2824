"""The Triton kernels draw noise stream 2 (SPEC section 3): four normals per Philox call.

Element ``i`` of a call draws ``randn4x(seed, i >> 2)[i & 3]``, whatever the shape, layout,
tile or index base; the kernels lay their tiles on the stream's groups, so these tests target
the cases where groups straddle rows, channels and tiles: ``S`` not a multiple of 4 (1, 2, 3,
5, 49, ...), ``(N, C)`` inputs, channels_last and transposed strides, index bases that are not a
multiple of 4 or lie past 2**32.  CPU tensors run on Triton's interpreter (conftest).
"""

import os

import pytest
import torch
from conftest import DEVICES

from anoise import philox

pytest.importorskip("triton", reason="the triton package is not installed")
import anoise.kernels as K  # noqa: E402

DEVICES = [d for d in DEVICES if d == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"]
SEED = 2**64 - 12345


def _f32_hex(t):
    return [[f"{v & 0xFFFFFFFF:08x}" for v in row] for row in t.cpu().view(torch.int32).tolist()]


@pytest.mark.parametrize("device", DEVICES)
def test_noise_stream_matches_triton_vectors(device, philox4_vectors):
    """The kernels' stream against draws of tl.randint4x / rand4x / randn4x made by Triton."""
    for case in philox4_vectors:
        groups = torch.tensor(case["groups"], dtype=torch.int64, device=device)
        words, rand4, randn4 = K.philox_at(groups, case["seed"])
        assert words.cpu().tolist() == case["words"], case["seed"]
        assert _f32_hex(rand4) == case["rand4_f32_hex"], case["seed"]
        expected = torch.tensor(case["randn4"], dtype=torch.float64)
        torch.testing.assert_close(randn4.cpu().double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_component_0_is_the_earlier_stream(device, philox_vectors):
    for case in philox_vectors:
        groups = torch.tensor(case["offsets"], dtype=torch.int64, device=device)
        words, rand4, randn4 = K.philox_at(groups, case["seed"])
        assert words.cpu().tolist() == case["words"], case["seed"]
        assert [row[0] for row in _f32_hex(rand4)] == case["rand_f32_hex"]
        expected = torch.tensor(case["randn"], dtype=torch.float64)
        torch.testing.assert_close(randn4[:, 0].cpu().double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 2**63 + 12345, 2**64 - 1])
def test_seed_bits_above_63(device, seed):
    groups = torch.arange(0, 3000, 7, device=device)
    words, _, randn4 = K.philox_at(groups, seed)
    got = torch.stack(philox.philox_words(seed, groups.cpu()), dim=1)
    assert torch.equal(words.cpu(), got)
    torch.testing.assert_close(randn4.cpu(), philox.philox_normal4(seed, groups.cpu()),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_normals_accuracy_over_a_million_draws(device):
    """The polynomial log / sin / cos of the kernels (kernels/_noise.py), on 2**20 normals
    whose uniforms are bit-exact: within 1e-5 of the reference stream (SPEC 3), and within
    3e-6 of Box-Muller evaluated in float64 on the same uniforms (the documented bound is
    about 2e-6).  Indices past 2**40 use the counter's high word."""
    groups = torch.cat([torch.arange(1 << 17), torch.arange(2**40, 2**40 + (1 << 17))])
    _, rand4, randn4 = K.philox_at(groups.to(device), SEED)
    z = randn4.cpu().double()
    ref = philox.philox_normal4(SEED, groups).double()
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
    u = rand4.cpu().double()
    r = torch.sqrt(-2 * torch.log(torch.clamp(u[:, 0::2], min=1e-7)))
    angle = 2 * torch.pi * u[:, 1::2]
    exact = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=-1)  # [n, pair, 2]
    assert (z.view(-1, 2, 2) - exact).abs().max().item() < 3e-6


# -- every launcher, on shapes, layouts and index bases where groups straddle rows and tiles --

SHAPES = {
    "s65": (3, 7, 13, 5),
    "s49": (2, 3, 7, 7),
    "s64": (2, 4, 8, 8),
    "s1_c6": (4, 6, 1),
    "s2": (4, 5, 2),
    "s3": (3, 5, 3),
    "s5": (2, 3, 5),
    "linear_c3": (5, 3),
    "linear_c8": (6, 8),
    "c1": (7, 1),
}
LAYOUTS = {"s65": ["nchw", "channels_last"], "s49": ["nchw", "channels_last"],
           "s64": ["channels_last"], "linear_c3": ["nchw", "transposed"],
           "linear_c8": ["nchw", "transposed"]}
# (index base, kernel config): bases not a multiple of 4, and past 2**32 and 2**34.
BASES = [
    (0, {}),
    (3, dict(block=(2, 4, 16), chunks=3, elementwise_programs=2)),
    (2**32 - 6, dict(tile=256)),
    (2**34 + 1, dict(block=(2, 8, 16), chunks=2)),
]
CASES = [(name, layout, i) for name in SHAPES for layout in LAYOUTS.get(name, ["nchw"])
         for i in range(len(BASES))]


def _input(name, layout, device):
    shape = SHAPES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name + layout)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.t().contiguous().t()
    x = x.float().to(device)
    x3 = x.reshape(shape[0], shape[1], -1) if x.dim() > 2 else x.unsqueeze(-1)
    return x, x3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,layout,case", CASES)
def test_launchers_draw_the_stream(device, name, layout, case):
    base, cfg = BASES[case]
    x, x3 = _input(name, layout, device)
    N, C, S = x3.shape
    seed = torch.tensor([SEED - 2**64], device=device)
    eps = philox.noise_like(x, SEED, offset=base).view(N, C, S).double().to(device)
    xd = x3.double()
    scale = torch.linspace(0.3, 1.2, C, dtype=torch.float64, device=device)
    mu = xd.mean((0, 2))
    var = xd.var((0, 2), unbiased=False)
    sigma = torch.sqrt(var + 1e-5)
    dy = (xd * 0.5 - 1).float()
    G = (dy.double() * eps).sum((0, 2))
    with K.configure(**cfg):
        y = K.forward_scaled(x3, scale.float(), seed, index_base=base)
        yb, mean, vb = K.forward_batch(x3, scale.float(), seed, 1e-5, index_base=base)
        g = K.noise_dot(dy, seed, index_base=base)
        dx, gb = K.backward_batch(dy, x3, scale.float(), mu.float(), sigma.float(), seed,
                                  index_base=base)
    c = (1, C, 1)
    tol = dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y.double(), xd + scale.view(c) * eps, **tol)
    torch.testing.assert_close(yb.double(), xd + (scale * sigma).view(c) * eps, **tol)
    torch.testing.assert_close(mean.double(), mu, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vb.double(), var, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.double(), G, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gb.double(), G, atol=1e-4, rtol=1e-5)
    coef = (scale * G / (N * S * sigma)).view(c)
    torch.testing.assert_close(dx.double(), dy.double() + coef * (xd - mu.view(c)), **tol)
    assert y.stride() == x3.stride() and dx.stride() == dy.stride()


@pytest.mark.parametrize("device", DEVICES)
def test_noise_is_independent_of_layout_and_tiling(device):
    """The same logical element draws the same normal whatever the strides and tiles."""
    x = torch.randn(2, 6, 7, 7, device=device)
    seed = torch.tensor([11], device=device)
    scale = torch.ones(6, device=device)
    views = [x, x.contiguous(memory_format=torch.channels_last), x.permute(1, 0, 2, 3)
             .contiguous().permute(1, 0, 2, 3)]
    ys = []
    configs = [{}, dict(block=(1, 2, 16)), dict(block=(2, 8, 4), elementwise_programs=3)]
    for v, cfg in zip(views, configs, strict=True):
        for c in [{}, cfg]:
            with K.configure(**c):
                ys.append(K.forward_scaled(v.reshape(2, 6, 49), scale, seed, index_base=5)
                          .reshape(x.shape) - v)
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], atol=1e-6, rtol=0)


def test_plan_lays_noise_tiles_on_groups():
    plan = K._config.plan
    with K.configure(tile=2048, program_overhead=128):
        p = plan(torch.empty(8, 64, 56 * 56, device="meta"))
        assert (p.group_dim, p.aligned) == (2, True) and p.block_s % 4 == 0
        assert p.noise_tiles == p.tiles and p.noise_tiles_s == p.tiles_s
        p = plan(torch.empty(8, 64, 49, device="meta"))
        assert (p.group_dim, p.aligned) == (2, False) and p.block_s >= 4
        assert p.noise_tiles_s == -(-(49 + 3) // p.block_s)  # rows shifted by up to 3
        assert not plan(torch.empty(8, 64, 64, device="meta"), index_base=2).aligned
        p = plan(torch.empty(32, 1024, 1, device="meta"))
        assert (p.group_dim, p.aligned, p.block_s) == (1, True, 1) and p.block_c % 4 == 0
        assert not plan(torch.empty(32, 10, 1, device="meta")).aligned
    with pytest.raises(ValueError, match="one noise group"), K.configure(block=(4, 4, 2)):
        plan(torch.empty(8, 4, 16, device="meta"))


@pytest.mark.parametrize("device", DEVICES)
def test_index_base_is_checked(device):
    x = torch.randn(2, 3, 4, device=device)
    seed = torch.tensor([1], device=device)
    with pytest.raises(ValueError, match="index_base"):
        K.forward_scaled(x, torch.ones(3, device=device), seed, index_base=-1)
    with pytest.raises(ValueError, match="index_base"):
        K.noise_dot(x, seed, index_base=2**62)
