"""The ``cuda`` backend's launchers: every layout and straddling path of its kernels, bad input,
and agreement with the other backends.

Each launcher test runs twice: on a GPU (``cuda``), and on the CPU with the same kernel source
compiled as host code and its threads emulated (``emulated``, tests/cuda/emulate.h: needs nvcc's
headers and g++, no GPU).  The emulation runs the kernels' real index arithmetic, reductions and
barriers; only rounding (contraction, rsqrt) differs from a device.  tests/test_cpu_backend.py
runs the launcher API shared with the cpu backend on CUDA devices, and tests/test_cuda_host.py
checks the noise code itself against Triton's vectors and its error bound.
"""

import sys
from pathlib import Path

import pytest
import torch
from conftest import TOLERANCES, assert_close_to_reference

import anoise.functional as AF
from anoise import reference as ref
from anoise.philox import noise_like, philox_normal

sys.path.insert(0, str(Path(__file__).parent / "cuda"))
import emulate  # noqa: E402
from launchers import Emulated  # noqa: E402

SEED = 987654321
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def ext():
    from anoise import _cuda

    return _cuda


@pytest.fixture(scope="module")
def emulated_lib(tmp_path_factory):
    if emulate.cuda_include() is None:
        pytest.skip("the emulation needs nvcc's CUDA headers and g++")
    return Emulated(emulate.build(tmp_path_factory.mktemp("cuda_emulated")))


@pytest.fixture(params=["emulated", "cuda"])
def impl(request):
    """(launchers, device)."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return ext(), "cuda"
    return request.getfixturevalue("emulated_lib"), "cpu"


def seed_t(seed=SEED, device="cuda"):
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed], dtype=torch.int64,
                        device=device)


def make(shape, layout, dtype=torch.float32, gen=0, device="cuda"):
    g = torch.Generator().manual_seed(gen)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)
    x = x * torch.linspace(0.5, 2.0, C, dtype=torch.float64).view(view) + 0.3
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.t().contiguous().t()
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., ::2]
    return x


def view3(t):
    return t.reshape(t.shape[0], t.shape[1], -1)


# S a multiple of 4 or not, (N, C), every layout path of the kernels.
CASES = [
    ((4, 8, 8, 8), "contiguous"),
    ((3, 7, 13, 5), "contiguous"),
    ((3, 7, 13, 5), "channels_last"),
    ((4, 8, 8, 8), "channels_last"),
    ((2, 5, 7, 7), "channels_last"),
    ((9, 6), "contiguous"),
    ((9, 6), "transposed"),
    ((8, 3), "transposed"),
    ((4, 5, 6, 8), "strided"),
    ((2, 3, 2, 3, 5), "contiguous"),
    ((5, 1, 3, 3), "channels_last"),
]


def test_draw_at_matches_triton_vectors(impl, philox4_vectors):
    m, dev = impl
    for case in philox4_vectors:
        groups = torch.tensor(case["groups"], dtype=torch.int64, device=dev)
        words, rand4, randn4 = m.draw_at(groups, seed_t(case["seed"], dev))
        assert words.shape == (len(case["groups"]), 4)
        assert words.cpu().tolist() == case["words"]
        bits_ = rand4.cpu().view(torch.int32).tolist()
        expected_bits = [[int(h, 16) - (1 << 32) * (int(h, 16) >> 31) for h in row]
                         for row in case["rand4_f32_hex"]]
        assert bits_ == expected_bits
        torch.testing.assert_close(randn4.cpu().double(),
                                   torch.tensor(case["randn4"], dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("start, count, step", [(0, 1001, 1), (3, 999, 1), (2**32 - 5, 77, 1),
                                                (2**40 + 2, 33, 1), (1, 50, 7), (5, 9, 2**33)])
def test_randn_range_is_the_stream(impl, start, count, step):
    m, dev = impl
    got = m.randn_range(start, count, step, seed_t(device=dev)).cpu()
    idx = start + step * torch.arange(count, dtype=torch.int64)
    torch.testing.assert_close(got, philox_normal(SEED, idx), atol=1e-5, rtol=1e-5)


def test_randn_statistics(impl):
    m, dev = impl
    e = m.randn(1 << 20, seed_t(device=dev)).double()
    assert abs(e.mean().item()) < 5e-3 and abs(e.std().item() - 1) < 5e-3
    torch.testing.assert_close(e[:4096].cpu(), philox_normal(SEED, torch.arange(4096)).double(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape, layout", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("base", [0, 3, 2**32 + 1])
def test_launchers_match_reference(impl, shape, layout, dtype, base):
    """forward_batch, noise_dot and backward_batch at an index base, in every layout."""
    m, dev = impl
    x = make(shape, layout, dtype, device=dev)
    C = shape[1]
    st = ref.stat_dtype(dtype)
    alpha = torch.linspace(0.1, 0.7, C, dtype=st, device=dev)
    dy = make(shape, "contiguous", dtype, gen=1, device=dev)
    s = seed_t(device=dev)
    y, mean, var = m.forward_batch(view3(x), alpha, s, 1e-5, index_base=base)
    noise = noise_like(x, SEED, offset=base).double()
    xd = x.double()
    dims = [0] + list(range(2, x.dim()))
    bshape = (1, C) + (1,) * (x.dim() - 2)
    mean_r = xd.mean(dims)
    var_r = ((xd - mean_r.view(bshape)) ** 2).mean(dims)
    sigma = torch.sqrt(var_r + 1e-5)
    y_r = xd + (alpha.double() * sigma).view(bshape) * noise
    tol = torch.float32 if dtype == torch.float64 else dtype
    assert_close_to_reference(y.reshape(shape), y_r, tol)
    assert_close_to_reference(mean, mean_r, torch.float32)
    assert_close_to_reference(var, var_r, torch.float32)
    g = m.noise_dot(view3(dy), s, index_base=base)
    g_r = (dy.double() * noise).sum(dims)
    assert_close_to_reference(g, g_r, torch.float32)
    dx, gb = m.backward_batch(view3(dy), view3(x), alpha, mean, sigma.to(st), s, index_base=base)
    coef = alpha.double() * g_r / (x.numel() / C * sigma)
    dx_r = dy.double() + coef.view(bshape) * (xd - mean_r.view(bshape))
    assert_close_to_reference(dx.reshape(shape), dx_r, tol)
    assert torch.equal(gb, g)


@pytest.mark.parametrize("x_layout, dy_layout", [("contiguous", "channels_last"),
                                                 ("channels_last", "contiguous"),
                                                 ("contiguous", "strided")])
def test_backward_reads_dy_in_its_own_layout(impl, x_layout, dy_layout):
    m, dev = impl
    shape = (4, 6, 5, 8)
    x, dy = make(shape, x_layout, device=dev), make(shape, dy_layout, gen=3, device=dev)
    alpha = torch.full((6,), 0.4, device=dev)
    s = seed_t(device=dev)
    _, mean, var = m.forward_batch(view3(x), alpha, s, 1e-5)
    sigma = torch.sqrt(var + 1e-5)
    dx, g = m.backward_batch(view3(dy), view3(x), alpha, mean, sigma, s)
    dx_c, g_c = m.backward_batch(view3(dy.contiguous()), view3(x.contiguous()), alpha, mean,
                                 sigma, s)
    torch.testing.assert_close(g, g_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx.reshape(shape), dx_c.reshape(shape), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape, layout", [((80, 2, 64, 64), "contiguous"),
                                           ((32, 4, 32, 32), "channels_last")])
def test_many_chunks_statistics(impl, shape, layout):
    """More than 32 chunks per channel: every lane of the merging warp takes several, in
    order, then the tree."""
    m, dev = impl
    C = shape[1]
    x = make(shape, layout, device=dev) * 50 + 1000  # a large mean: cancellation-prone
    _, mean, var = m.forward_batch(view3(x), torch.zeros(C, device=dev), seed_t(device=dev),
                                   1e-5)
    v, mu = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), mu, atol=0, rtol=1e-6)
    torch.testing.assert_close(var.double(), v, atol=0, rtol=1e-5)
    dy = make(shape, layout, gen=2, device=dev)
    g = m.noise_dot(view3(dy), seed_t(device=dev))
    g_r = (dy.double() * noise_like(dy, SEED).double()).sum((0, 2, 3))
    assert_close_to_reference(g, g_r, torch.float32)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_results_are_deterministic(impl, layout):
    m, dev = impl
    shape = (33, 20) if layout == "transposed" else (16, 20, 9, 9)
    x, dy = make(shape, layout, device=dev), make(shape, layout, gen=5, device=dev)
    alpha = torch.full((20,), 0.3, device=dev)
    s = seed_t(device=dev)
    runs = []
    for _ in range(2):
        y, mean, var = m.forward_batch(view3(x), alpha, s, 1e-5)
        dx, g = m.backward_batch(view3(dy), view3(x), alpha, mean, torch.sqrt(var + 1e-5), s)
        runs.append((y, mean, var, dx, g))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def bits(t):
    ints = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
            torch.float16: torch.int16}
    return t.contiguous().view(ints[t.dtype])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_zero_coef_passes_dy_through_inf_and_nan(impl, dtype, layout):
    """coef_c == 0 (alpha_c = 0) with Inf/NaN in x: dx = dy exactly, as on the triton backend,
    and y = x bitwise (NaN payloads and -0.0 included)."""
    m, dev = impl
    shape = (4, 3, 6, 6)
    x = make(shape, layout, dtype, device=dev)
    x[0, 1, 2, 2] = float("inf")
    x[1, 1, 0, 0] = float("nan")
    x[2, 2, 1, 1] = float("-inf")
    x[3, 2, 4, 4] = float("nan")
    x[3, 0, 1, 1] = -0.0
    dy = make(shape, layout, dtype, gen=7, device=dev)
    st = ref.stat_dtype(dtype)
    alpha = torch.tensor([0.0, 0.0, 0.5], dtype=st, device=dev)
    mean = torch.zeros(3, dtype=st, device=dev)
    sigma = torch.ones(3, dtype=st, device=dev)
    s = seed_t(device=dev)
    y = m.forward_scaled(view3(x), torch.zeros(3, dtype=st, device=dev), s)
    assert torch.equal(bits(y.reshape(shape)), bits(x))
    launchers = [m]
    if dev == "cuda":  # the triton backend must give the same
        try:
            from anoise import kernels

            launchers.append(kernels)
        except Exception:  # triton missing: the cuda launcher alone
            pass
    for m in launchers:
        dx, _ = m.backward_batch(view3(dy), view3(x), alpha, mean, sigma, s)
        dx = dx.reshape(shape)
        assert torch.equal(bits(dx[:, :2]), bits(dy[:, :2])), m.__name__
        assert dx[2, 2, 1, 1].isinf() and dx[3, 2, 4, 4].isnan()  # alpha 0.5: propagates


@gpu_only
def test_cpu_seed_is_a_clear_error():
    x = make((2, 3, 4, 4), "contiguous")
    alpha = torch.full((3,), 0.2, device="cuda")
    cpu_seed = seed_t(device="cpu")
    m = ext()
    calls = {
        "forward_batch": lambda: m.forward_batch(view3(x), alpha, cpu_seed, 1e-5),
        "forward_scaled": lambda: m.forward_scaled(view3(x), alpha, cpu_seed),
        "noise_dot": lambda: m.noise_dot(view3(x), cpu_seed),
        "backward_batch": lambda: m.backward_batch(view3(x), view3(x), alpha, alpha, alpha,
                                                   cpu_seed),
        "draw_at": lambda: m.draw_at(torch.arange(3, device="cuda"), cpu_seed),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=r"seed must be on the same device as .*cuda.*cpu"):
            call()
    for call in (lambda: m.randn(10, cpu_seed), lambda: m.randn_range(0, 10, 1, cpu_seed)):
        with pytest.raises(ValueError, match=r"seed must be a CUDA tensor.*cpu"):
            call()


@gpu_only
def test_agrees_with_triton():
    pytest.importorskip("triton")
    x = make((8, 16, 7, 7), "channels_last")
    out = {}
    for backend in ("cuda", "triton"):
        try:
            xg = x.detach().clone().requires_grad_()
            alpha = torch.full((16,), 0.3, device="cuda", requires_grad=True)
            y = AF.adaptive_noise(xg, alpha, seed=SEED, backend=backend)
            y.backward(torch.ones_like(y))
        except ValueError as exc:
            pytest.skip(str(exc))
        out[backend] = (y.detach(), xg.grad, alpha.grad)
    for a, b in zip(out["cuda"], out["triton"], strict=True):
        torch.testing.assert_close(a, b, atol=TOLERANCES[torch.float32][0] * 10, rtol=1e-5)


@gpu_only
@pytest.mark.slow
def test_past_2_pow_31_elements():
    """The 64-bit index paths: one channel of 2**31 + 1000 bfloat16 elements."""
    n = 2**31 + 1000
    try:
        x = torch.zeros((1, 1, n), dtype=torch.bfloat16, device="cuda")
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    m, s = ext(), seed_t()
    y = m.forward_scaled(x, torch.ones(1, device="cuda"), s, index_base=6)
    for lo in (0, n - 4096):
        want = philox_normal(SEED, torch.arange(lo, lo + 4096) + 6)
        torch.testing.assert_close(y[0, 0, lo:lo + 4096].float().cpu(), want, atol=1e-5,
                                   rtol=2**-8)
    del y
    dy = x
    dy[0, 0, -1000:] = 1
    g = m.noise_dot(dy, s, index_base=6)
    want = philox_normal(SEED, torch.arange(n - 1000, n) + 6).double().sum()
    torch.testing.assert_close(g.double().cpu(), want.view(1), atol=2e-3, rtol=1e-5)


def _huge_channel(shape, layout, device):
    """Channel 1 of random sign and magnitude in [0.5e19, 1e19] (its M2 overflows float32, its
    variance does not), the others ordinary."""
    g = torch.Generator().manual_seed(3)
    x = make(shape, "contiguous", device="cpu").double()
    magnitude = 0.5e19 + 0.5e19 * torch.rand(x[:, 1].shape, generator=g, dtype=torch.float64)
    x[:, 1] = magnitude * (torch.randint(0, 2, x[:, 1].shape, generator=g) * 2 - 1)
    x = x.float().to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.t().contiguous().t()
    return x


@pytest.mark.parametrize("shape, layout", [((6, 3, 5, 7), "contiguous"),
                                           ((6, 3, 5, 7), "channels_last"),
                                           ((40, 3), "contiguous"), ((40, 3), "transposed"),
                                           ((80, 3, 64, 64), "contiguous")])
def test_statistics_of_huge_values_are_finite_and_exact(impl, shape, layout):
    m, dev = impl
    x = _huge_channel(shape, layout, dev)
    dims = (0, *range(2, x.dim()))
    expected = torch.var(x.double(), dim=dims, correction=0)
    assert expected[1] > 1e37 and torch.isfinite(expected.float()).all()
    alpha = torch.full((3,), 0.5, device=dev)
    y, mean, var = m.forward_batch(view3(x), alpha, seed_t(device=dev), 1e-5)
    assert torch.isfinite(var).all(), var
    torch.testing.assert_close(var.double().cpu(), expected.cpu(), rtol=1e-5, atol=0)
    sigma = torch.sqrt(var + 1e-5)
    dy = make(shape, "contiguous", gen=2, device=dev)
    dx, g = m.backward_batch(view3(dy), view3(x), alpha, mean, sigma, seed_t(device=dev))
    for t in (y, sigma, dx, g):
        assert torch.isfinite(t).all()


def test_nan_and_inf_stay_in_their_channel_next_to_huge_values(impl):
    m, dev = impl
    x = _huge_channel((6, 3, 5, 7), "contiguous", "cpu")
    x = torch.cat([x, x[:, :1]], dim=1)  # channel 3 ordinary, then NaN in 0 and Inf in 2
    x[2, 0, 1, 1] = float("nan")
    x[3, 2, 0, 0] = float("inf")
    x = x.to(dev)
    _, _, var = m.forward_batch(view3(x), torch.ones(4, device=dev), seed_t(device=dev), 1e-5)
    assert torch.isnan(var[0]) and torch.isnan(var[2])
    expected = torch.var(x.double(), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(var[[1, 3]].double().cpu(), expected[[1, 3]].cpu(), rtol=1e-5,
                               atol=0)
