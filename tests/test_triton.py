"""The Triton backend against the reference (run in float64 on the same seed).

On a machine without a GPU the kernels run on CPU tensors through Triton's interpreter
(conftest sets TRITON_INTERPRET=1).  ``SPLIT`` forces tiny tiles and several programs per
channel, so the split reduction and its merge run even on tiny tensors.
"""

import os

import pytest
import torch
from conftest import DEVICES, assert_close_to_reference

import anoise.functional as AF
from anoise import philox
from anoise.reference import batch_stats

pytest.importorskip("triton", reason="the triton package is not installed")
import anoise.kernels as K  # noqa: E402

# Triton runs CPU tensors only in interpreter mode, a process-wide switch that conftest turns on
# only when there is no GPU; with a GPU the kernels are compiled and run on CUDA tensors.
DEVICES = [d for d in DEVICES if d == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# name -> kernel config overrides: the fused single-pass path (one tile per channel block on
# the CPU) and the split reduction with its merge (and elementwise programs that take every
# other tile).  Small, but not tiny: the interpreter costs
# about 20 ms per program.
CONFIGS = {"fused": {}, "split": dict(block=(2, 4, 32), chunks=3, elementwise_programs=2)}
# Also: several tiles per fused program, with the heuristic tile shapes of a small tile budget.
CONFIGS_ALL = {**CONFIGS, "tiled": dict(tile=128)}
SEED = 987654321


def _make(layout, device, dtype, gen_seed=0):
    """An input of a given layout; its values have a non-zero mean and varying scales."""
    g = torch.Generator().manual_seed(gen_seed)
    if layout == "nchw":
        x = torch.randn(3, 7, 13, 5, generator=g, dtype=torch.float64)
    elif layout == "linear":
        x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    elif layout == "1x1":
        x = torch.randn(2, 64, 1, 1, generator=g, dtype=torch.float64)
    elif layout == "channels_last":
        x = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64)
    elif layout == "transposed":
        x = torch.randn(6, 9, generator=g, dtype=torch.float64)
    else:
        raise ValueError(layout)
    C = x.shape[1]
    scale = torch.linspace(0.5, 3.0, C, dtype=torch.float64).view((1, C) + (1,) * (x.dim() - 2))
    x = (x * scale + 2.0).to(device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    elif layout == "transposed":
        x = x.t().contiguous().t()  # (N, C) with the batch dim contiguous
        assert x.stride() == (1, x.shape[0])
    return x


LAYOUTS = ["nchw", "linear", "1x1", "channels_last", "transposed"]


def _alpha(C, device, dtype=torch.float32):
    a = torch.linspace(0.1, 0.9, C, dtype=torch.float64)
    return a.to(device, dtype)


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tol(dtype):
    """The noise is float32 on every backend and log/cos differ by a few ulps between libraries
    (SPEC section 3), so a float64 output is held to float32's tolerance against the reference;
    test_float64_math_with_the_kernels_noise checks float64 to 1e-10 with the same noise."""
    return torch.float32 if dtype == torch.float64 else dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CONFIGS_ALL)
def test_forward_and_backward_match_reference(device, dtype, layout, cfg):
    x = _make(layout, device, dtype)
    C = x.shape[1]
    alpha = _alpha(C, device, _stat_dtype(dtype)).requires_grad_()
    xt = x.detach().requires_grad_()
    with K.configure(**CONFIGS_ALL[cfg]):
        y = AF.adaptive_noise(xt, alpha, seed=SEED, backend="triton")
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        y.backward(dy)
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()

    xr = x.detach().double().requires_grad_()
    ar = alpha.detach().double().requires_grad_()
    yr = AF.adaptive_noise(xr, ar, seed=SEED, backend="reference")
    yr.backward(dy.double())
    assert_close_to_reference(y, yr, _tol(dtype))
    assert_close_to_reference(xt.grad, xr.grad, _tol(dtype))
    assert_close_to_reference(alpha.grad, ar.grad, _tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_float64_math_with_the_kernels_noise(device, layout, cfg):
    """SPEC section 2 in float64, with eps drawn by the kernels' own stream (philox_at)."""
    x = _make(layout, device, torch.float64)
    N, C = x.shape[:2]
    shape = (1, C, 1, 1)
    alpha = _alpha(C, device, torch.float64).requires_grad_()
    xt = x.clone().requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dy = dy.to(device)
    with K.configure(**CONFIGS[cfg]):
        y = AF.adaptive_noise(xt, alpha, seed=SEED, backend="triton")
        y.backward(dy)
        eps = K.philox_at(torch.arange(-(-x.numel() // 4), device=device), SEED)[2]
    eps = eps.double().view(-1)[: x.numel()].view(x.shape)
    mu = x.mean((0, 2, 3), keepdim=True)
    sigma = torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    a = alpha.detach().view(shape)
    torch.testing.assert_close(y, x + a * sigma * eps, atol=1e-10, rtol=1e-10)
    G = (dy * eps).sum((0, 2, 3), keepdim=True)
    M = x.numel() // C
    torch.testing.assert_close(xt.grad, dy + a * (x - mu) / (M * sigma) * G, atol=1e-10,
                               rtol=1e-10)
    torch.testing.assert_close(alpha.grad, (sigma * G).flatten(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_statistics_match_reference(device, dtype, cfg):
    x = _make("channels_last", device, dtype) * 10 + 1000  # large mean: no E[x^2]-E[x]^2
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    alpha = _alpha(x.shape[1], device, _stat_dtype(dtype))
    seed = torch.tensor([SEED], device=device)
    with K.configure(**CONFIGS[cfg]):
        _, mean, var = K.forward_batch(x3, alpha, seed, 1e-5)
    assert mean.dtype == var.dtype == _stat_dtype(dtype)
    mr, vr = batch_stats(x.double())
    torch.testing.assert_close(mean.double(), mr.to(device), atol=0, rtol=1e-6)
    torch.testing.assert_close(var.double(), vr.to(device), atol=0, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stats_grad", [True, False])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_stats_grad_false_and_scalar_alpha(device, stats_grad, cfg):
    x = _make("nchw", device, torch.float32)
    alpha = torch.tensor(0.4, device=device, requires_grad=True)
    xt = x.clone().requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(device)
    with K.configure(**CONFIGS[cfg]):
        y = AF.adaptive_noise(xt, alpha, seed=SEED, stats_grad=stats_grad, backend="triton")
        y.backward(dy)
    xr = x.double().requires_grad_()
    ar = alpha.detach().double().requires_grad_()
    yr = AF.adaptive_noise(xr, ar, seed=SEED, stats_grad=stats_grad, backend="reference")
    yr.backward(dy.double())
    assert_close_to_reference(y, yr, torch.float32)
    assert_close_to_reference(xt.grad, xr.grad, torch.float32)
    assert_close_to_reference(alpha.grad, ar.grad, torch.float32)
    if not stats_grad:
        assert torch.equal(xt.grad, dy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_eval_running_stats_and_running_var_update(device, dtype, cfg):
    x = _make("nchw", device, dtype)
    C = x.shape[1]
    rv, nbt = torch.ones(C, device=device), torch.tensor(0, device=device)
    rv_ref, nbt_ref = rv.clone(), nbt.clone()
    with K.configure(**CONFIGS[cfg]):
        for step in range(3):
            xs = x * (step + 1)
            AF.adaptive_noise(xs, 0.2, running_var=rv, num_batches_tracked=nbt, momentum=None,
                              backend="triton")
            AF.adaptive_noise(xs.double(), 0.2, running_var=rv_ref, num_batches_tracked=nbt_ref,
                              momentum=None, backend="reference")
        torch.testing.assert_close(rv, rv_ref, atol=1e-5, rtol=1e-5)
        assert nbt.item() == nbt_ref.item() == 3

        alpha = _alpha(C, device, _stat_dtype(dtype)).requires_grad_()
        xt = x.detach().requires_grad_()
        y = AF.adaptive_noise(xt, alpha, running_var=rv, training=False, seed=SEED,
                              backend="triton")
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)
        y.backward(dy)
    xr = x.detach().double().requires_grad_()
    ar = alpha.detach().double().requires_grad_()
    yr = AF.adaptive_noise(xr, ar, running_var=rv, training=False, seed=SEED,
                           backend="reference")
    yr.backward(dy.double())
    assert_close_to_reference(y, yr, _tol(dtype))
    assert torch.equal(xt.grad, dy)  # sigma from running statistics is a constant
    assert_close_to_reference(alpha.grad, ar.grad, _tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_split_matches_fused_and_is_deterministic(device):
    x = torch.randn(6, 5, 37, device=device) * 3 + 1
    x3 = x
    alpha = _alpha(5, device)
    seed = torch.tensor([SEED], device=device)
    y_f, m_f, v_f = K.forward_batch(x3, alpha, seed, 1e-5)
    dy = torch.randn_like(x)
    with K.configure(block=(2, 4, 16), chunks=3):
        assert K._config.plan(x3).chunks == 3
        y1, m1, v1 = K.forward_batch(x3, alpha, seed, 1e-5)
        y2, m2, v2 = K.forward_batch(x3, alpha, seed, 1e-5)
        g1 = K.noise_dot(dy, seed)
        g2 = K.noise_dot(dy, seed)
        dx1, gb1 = K.backward_batch(dy, x3, alpha, m1, torch.sqrt(v1 + 1e-5), seed)
        dx2, gb2 = K.backward_batch(dy, x3, alpha, m1, torch.sqrt(v1 + 1e-5), seed)
    for a, b in [(y1, y2), (m1, m2), (v1, v2), (g1, g2), (dx1, dx2), (gb1, gb2)]:
        assert torch.equal(a, b)
    torch.testing.assert_close(y1, y_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m1, m_f, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(v1, v_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1, gb1)
    g_ref = (dy.double() * philox.noise_like(x, SEED).to(device).double()).sum((0, 2))
    torch.testing.assert_close(g1.double(), g_ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_64bit_noise_indices(device, layout):
    # The elements straddle index 2**32: the kernels' int64 index path must carry the high word.
    base = 2**32 - 500
    x = _make(layout, device, torch.float32)
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    N, C, S = x3.shape
    seed = torch.tensor([SEED], device=device)
    scale = _alpha(C, device)
    eps = philox.philox_normal(SEED, base + torch.arange(N * C * S)).view(N, C, S).to(device)
    mu = x3.mean((0, 2))
    sigma = torch.sqrt(x3.var((0, 2), unbiased=False) + 1e-5)
    for cfg in [dict(block=(1, 2, 16)), dict(block=(2, 4, 32), chunks=2), {}]:
        with K.configure(**cfg):
            y = K.forward_scaled(x3, scale, seed, index_base=base)
            g = K.noise_dot(x3, seed, index_base=base)
            yb, mean, var = K.forward_batch(x3, scale, seed, 1e-5, index_base=base)
            dx, gb = K.backward_batch(x3, x3, scale, mu, sigma, seed, index_base=base)
        torch.testing.assert_close(y, x3 + scale.view(1, C, 1) * eps, atol=1e-5, rtol=1e-5)
        G = (x3 * eps).sum((0, 2))
        torch.testing.assert_close(g, G, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(gb, G, atol=1e-4, rtol=1e-5)
        expected = x3 + (scale * sigma).view(1, C, 1) * eps
        torch.testing.assert_close(yb, expected, atol=1e-5, rtol=1e-5)
        coef = (scale * G / (N * S * sigma)).view(1, C, 1)
        torch.testing.assert_close(dx, x3 + coef * (x3 - mu.view(1, C, 1)), atol=1e-5,
                                   rtol=1e-5)
    with K.configure(force_int64=True):
        assert K._config.plan(x3).int64
        assert torch.equal(K.forward_scaled(x3, scale, seed), K.forward_scaled(x3, scale, seed))
    torch.testing.assert_close(K.forward_scaled(x3, scale, seed),
                               x3 + scale.view(1, C, 1) * philox.noise_like(x3, SEED).to(device),
                               atol=1e-5, rtol=1e-5)


def test_plan_layouts_and_index_width():
    tile = 2048
    with K.configure(tile=tile, program_overhead=128):
        # Contiguous NCHW, 56x56 maps: a contiguous run along S that divides 3136 (no padding).
        nchw = torch.empty(8, 64, 56 * 56, device="meta")
        p = K._config.plan(nchw)
        assert p.block_s >= 32 and 3136 % p.block_s == 0 and not p.int64
        assert p.block_n * p.block_c * p.block_s <= tile
        cl = torch.empty(8, 56, 56, 64, device="meta").permute(0, 3, 1, 2).reshape(8, 64, -1)
        assert cl.stride(1) == 1
        assert K._config.plan(cl).block_c >= 32  # channels_last: runs along C
        lin_t = torch.empty(64, 1024, device="meta").t().unsqueeze(-1)  # (1024, 64, 1)
        p = K._config.plan(lin_t)
        assert p.block_n >= 32 and p.block_s == 1  # transposed: runs along N
        lin = torch.empty(4096, 1024, 1, device="meta")
        p = K._config.plan(lin)
        assert 32 <= p.block_c < 1024 and p.channel_blocks > 1  # many channel blocks
        huge = torch.empty(2**20, 2**4, 2**8, device="meta")
        p = K._config.plan(huge)
        assert p.int64
        # Reduction programs never carry more than 2**24 elements per channel (exact counts).
        assert p.tiles_per_program * p.block_n * p.block_s <= 2**24
        assert p.chunks * p.tiles_per_program >= p.tiles
    with K.configure(block=(2, 4, 8)):
        assert K._config.plan(nchw)[:3] == (2, 4, 8)
    with pytest.raises(ValueError, match="power of two"), K.configure(tile=1000):
        K._config.plan(nchw)
    with pytest.raises(ValueError, match="powers of two"), K.configure(block=(3, 1, 1)):
        K._config.plan(nchw)
    with pytest.raises(TypeError, match="unknown kernel config"), K.configure(tiles=3):
        pass


def test_plan_on_a_gpu_spreads_reductions(monkeypatch):
    """The GPU heuristics, planned on fake CUDA tensors (no GPU needed): enough reduction
    programs to fill 132 SMs when channels are few, one fused pass when they are many."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setitem(K._config._SM_COUNT, 0, 132)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with FakeTensorMode():
        few_channels = torch.empty(256, 64, 56 * 56, device="cuda")
        many_channels = torch.empty(16, 2048, 7 * 7, device="cuda")
        one_channel_huge = torch.empty(2, 1, 2**31, device="cuda")
    p = K._config.plan(few_channels)
    assert p.channel_blocks * p.chunks >= 2 * 132
    assert p.tiles_per_program >= K.config.min_tiles_per_program
    assert p.chunks * p.tiles_per_program >= p.tiles
    p = K._config.plan(many_channels)
    assert p.chunks == 1 and p.channel_blocks >= 132
    p = K._config.plan(one_channel_huge)
    assert p.int64 and p.chunks > 1
    assert p.tiles_per_program * p.block_n * p.block_s <= 2**24


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_zero_variance_channel_and_zero_alpha_channel(device, dtype):
    x = _make("nchw", device, dtype)
    x[:, 2] = 1.5
    x[0, 4, 0, 0] = -0.0
    alpha = _alpha(x.shape[1], device, _stat_dtype(dtype))
    alpha[4] = 0.0
    alpha = alpha.requires_grad_()
    xt = x.clone().requires_grad_()
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    for cfg in CONFIGS.values():
        xt.grad = alpha.grad = None
        with K.configure(**cfg):
            y = AF.adaptive_noise(xt, alpha, seed=SEED, backend="triton")
            y.backward(dy)
        assert torch.isfinite(y).all() and torch.isfinite(xt.grad).all()
        assert torch.isfinite(alpha.grad).all()
        noise = (y[:, 2] - x[:, 2]).double()
        # sigma = sqrt(eps): tiny noise, then rounded to the dtype (1.5 has ulp 2**-10 in fp16).
        bound = alpha[2].item() * 1e-5**0.5 * 6 + (1e-3 if dtype == torch.float16 else 0.0)
        assert noise.abs().max() < bound
        assert torch.equal(y[:, 4].view(torch.uint8), x[:, 4].view(torch.uint8)), "alpha=0: y is x"
        assert torch.equal(xt.grad[:, 4], dy[:, 4])


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_to_its_channel_only(device):
    x = _make("nchw", device, torch.float32)
    x[1, 3, 2, 2] = float("nan")
    for cfg in CONFIGS.values():
        with K.configure(**cfg):
            y = AF.adaptive_noise(x, 0.5, seed=SEED, backend="triton")
        assert torch.isnan(y[:, 3]).all()
        assert torch.isfinite(y[:, [0, 1, 2, 4, 5, 6]]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_non_dense_inputs(device):
    seed = torch.tensor([SEED], device=device)
    empty = torch.empty(0, 3, 4, device=device)
    y, mean, var = K.forward_batch(empty, torch.ones(3, device=device), seed, 1e-5)
    assert y.shape == empty.shape and torch.isnan(mean).all() and torch.isnan(var).all()
    assert torch.equal(K.noise_dot(empty, seed), torch.zeros(3, device=device))
    sliced = torch.randn(4, 10, 6, device=device)[:, ::2, 1:]  # neither dense nor contiguous
    y = AF.adaptive_noise(sliced, 0.3, seed=SEED, backend="triton")
    yr = AF.adaptive_noise(sliced.double(), 0.3, seed=SEED, backend="reference")
    assert_close_to_reference(y, yr, torch.float32)
    # The gradient of y.sum() reaches backward as an expanded (stride-0) tensor.
    xt = sliced.clone().requires_grad_()
    AF.adaptive_noise(xt, 0.3, seed=SEED, backend="triton").sum().backward()
    xr = sliced.double().requires_grad_()
    AF.adaptive_noise(xr, 0.3, seed=SEED, backend="reference").sum().backward()
    assert_close_to_reference(xt.grad, xr.grad, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_no_intermediate_of_the_input_size(device):
    """The launchers allocate their outputs and O(C * chunks) scratch, never a noise tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Allocations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # The interpreter views and copies kernel arguments to run them: not allocations.
            if func.overloadpacket in (torch.ops.aten.set_, torch.ops.aten.copy_):
                return out
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.sizes.append(t.numel())
            return out

    x = torch.randn(4, 8, 32, device=device)
    seed = torch.tensor([SEED], device=device)
    alpha = _alpha(8, device)
    for cfg in CONFIGS.values():
        with K.configure(**cfg):
            with Allocations() as rec:
                y, mean, var = K.forward_batch(x, alpha, seed, 1e-5)
            assert sum(n >= x.numel() for n in rec.sizes) == 1  # y
            with Allocations() as rec:
                K.backward_batch(x, x, alpha, mean, torch.sqrt(var + 1e-5), seed)
                K.noise_dot(x, seed)
                K.forward_scaled(x, alpha, seed)
            assert sum(n >= x.numel() for n in rec.sizes) == 2  # dx, y


@pytest.mark.parametrize("device", DEVICES)
def test_memory_contract_saved_tensors(device):
    x = torch.randn(4, 3, 6, 6, device=device, requires_grad=True)
    alpha = torch.full((3,), 0.3, device=device, requires_grad=True)

    def saved_sizes(**kwargs):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = AF.adaptive_noise(x, alpha, seed=SEED, backend="triton", **kwargs)
        y.sum().backward()
        return [n for n in sizes if n >= x.numel()]

    assert len(saved_sizes()) <= 1
    assert saved_sizes(stats_grad=False) == []
    rv = torch.ones(3, device=device)
    assert saved_sizes(running_var=rv, training=False) == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stats_grad", [True, False])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_gradcheck_float64(device, stats_grad, cfg):
    # Full Jacobians on a tiny input; fast mode (random projections) where the split needs more.
    shape = (3, 4, 5) if cfg == "split" else (2, 3, 3)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=stats_grad)
    alpha = (torch.rand(shape[1], dtype=torch.float64, device=device) + 0.1).requires_grad_()

    def f(x, alpha):
        return AF.adaptive_noise(x, alpha, seed=42, stats_grad=stats_grad, backend="triton")

    with K.configure(**CONFIGS[cfg]):
        assert torch.autograd.gradcheck(f, (x, alpha), fast_mode=cfg == "split")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_running_stats_in_eval(device):
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    alpha = torch.rand((), dtype=torch.float64, device=device, requires_grad=True)
    rv = torch.rand(3, device=device) + 0.5

    def f(x, alpha):
        return AF.adaptive_noise(x, alpha, running_var=rv, training=False, seed=7,
                                 backend="triton")

    assert torch.autograd.gradcheck(f, (x, alpha), fast_mode=True)
