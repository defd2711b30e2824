"""The fused C++ backends ("cpu" on CPU tensors, "cuda" on CUDA tensors) against the reference.

Each test runs on every device of DEVICES with that device's C++ backend.  The noise is float32
by definition (SPEC 3) and the C++ kernels compute log/sin/cos with their own approximations, so
a backend's eps differs from the reference's by ~1e-7: comparisons with the reference itself use
at least float32 tolerances, and float64 results are also checked at 1e-10 against the SPEC
formulas evaluated in float64 on the backend's own eps (from the draw_at test hook).

Test hooks shared by both extensions:
    draw_at(groups, seed) -> (words int64 (G, 4), rand4 float32 (G, 4), randn4 float32 (G, 4))
    randn_range(start, count, step, seed) -> eps at element indices start + j * step
    randn(numel, seed) -> eps at element indices 0 .. numel - 1
"""

import importlib
import math
import struct

import pytest
import torch
from conftest import DEVICES, NO_COMPILER, TOLERANCES, assert_close_to_reference

import anoise
import anoise.functional as AF
from anoise import reference as ref

pytestmark = pytest.mark.skipif(NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}")
BACKEND = {"cpu": "cpu", "cuda": "cuda"}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SEED = 1234567


def ext(device):
    return importlib.import_module(f"anoise._{BACKEND[device]}")


def signed(seed):
    return seed - 2**64 if seed >= 2**63 else seed


def seed_t(seed, device):
    return torch.tensor([signed(seed)], dtype=torch.int64, device=device)


def isas(device):
    """Instruction-set builds to run the CPU kernels under (one pass on CUDA)."""
    return ext(device).isa_list() if device == "cpu" else [None]


class use_isa:
    def __init__(self, device, name):
        self.mod, self.name = ext(device), name

    def __enter__(self):
        if self.name is not None:
            self.prev = self.mod.isa()
            self.mod.set_isa(self.name)

    def __exit__(self, *exc):
        if self.name is not None:
            self.mod.set_isa(self.prev)


def make_input(shape, layout, dtype, device, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    if layout == "transposed":
        x = torch.randn(shape[::-1], generator=g, dtype=torch.float64).t()
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    # Per-channel offsets and scales, so that statistics differ between channels.
    C = shape[1]
    view = (1, C) + (1,) * (len(shape) - 2)
    x = x * torch.linspace(0.5, 3.0, C, dtype=torch.float64).view(view)
    x = x + torch.linspace(-2.0, 2.0, C, dtype=torch.float64).view(view)
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # not dense: every other element of the last dim
        x = torch.cat([x, x], dim=-1)[..., ::2]
    return x


CASES = [
    ((3, 7, 13, 5), "contiguous"),
    ((3, 7, 13, 5), "channels_last"),
    ((5, 3), "contiguous"),
    ((5, 3), "transposed"),
    ((2, 64, 1, 1), "contiguous"),
    ((2, 64, 1, 1), "channels_last"),
    ((2, 3, 4, 5, 6), "contiguous"),
    ((4, 5, 6, 8), "strided"),
]


def stream_at(device, indices, seed):
    """The backend's eps at element indices (int64): randn4x(seed, i >> 2)[i & 3] via draw_at."""
    flat = indices.flatten().to(device)
    randn4 = ext(device).draw_at(flat >> 2, seed_t(seed, device))[2]
    return randn4.gather(1, (flat & 3).unsqueeze(1)).view(indices.shape)


def own_noise(x, seed, base=0):
    """The backend's eps for every element of x (logical row-major index), as float64."""
    idx = base + torch.arange(x.numel(), dtype=torch.int64)
    return stream_at(x.device.type, idx, seed).double().view(x.shape)


def formula(x, alpha, noise, eps):
    """SPEC section 2 in float64 with the given noise (differentiable in x and alpha)."""
    dims = [0] + list(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    mean = x.mean(dims)
    var = ((x - mean.view(view)) ** 2).mean(dims)
    sigma = torch.sqrt(var + eps)
    return x + (alpha * sigma).view(view) * noise, mean, var


# ---- availability ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_backend_is_available_and_auto_picks_it(device):
    info = anoise.backends()[BACKEND[device]]
    assert info.available, info.reason
    if device == "cpu":
        resolve = importlib.import_module("anoise.backends").resolve
        assert resolve("auto", torch.device("cpu")) == "cpu"


# ---- the noise stream -----------------------------------------------------------------------


def _bits(values):
    return [struct.unpack("<I", struct.pack("<f", v))[0] for v in values]


@pytest.mark.parametrize("device", DEVICES)
def test_stream_matches_triton_vectors(device, philox4_vectors):
    """randint4x / rand4x bit for bit, randn4x within 1e-5, for every instruction-set build."""
    for isa in isas(device):
        with use_isa(device, isa):
            for case in philox4_vectors:
                groups = torch.tensor(case["groups"], dtype=torch.int64, device=device)
                words, rand4, randn4 = ext(device).draw_at(groups, seed_t(case["seed"], device))
                assert words.shape == rand4.shape == randn4.shape == (len(groups), 4)
                assert words.dtype == torch.int64 and randn4.dtype == torch.float32
                assert words.cpu().tolist() == case["words"], (isa, case["seed"])
                want = [int(h, 16) for row in case["rand4_f32_hex"] for h in row]
                assert _bits(rand4.flatten().tolist()) == want, (isa, case["seed"])
                expected = torch.tensor(case["randn4"], dtype=torch.float32)
                torch.testing.assert_close(randn4.cpu(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_component_0_is_the_earlier_stream(device, philox_vectors):
    """Component 0 of group j is tl.randn(seed, j): the earlier stream's vectors still hold."""
    for isa in isas(device):
        with use_isa(device, isa):
            for case in philox_vectors:
                groups = torch.tensor(case["offsets"], dtype=torch.int64, device=device)
                words, rand4, randn4 = ext(device).draw_at(groups, seed_t(case["seed"], device))
                assert words.cpu().tolist() == case["words"], isa
                want = [int(h, 16) for h in case["rand_f32_hex"]]
                assert _bits(rand4[:, 0].tolist()) == want, isa
                expected = torch.tensor(case["randn"], dtype=torch.float32)
                torch.testing.assert_close(randn4[:, 0].cpu(), expected, atol=1e-5, rtol=1e-5)


def test_draw_at_rejects_bad_groups():
    m = ext("cpu")
    s = seed_t(1, "cpu")
    with pytest.raises(TypeError, match="groups must be int64"):
        m.draw_at(torch.zeros(3, dtype=torch.int32), s)
    with pytest.raises(ValueError, match="groups must be >= 0"):
        m.draw_at(torch.tensor([0, -1]), s)
    with pytest.raises(ValueError, match="groups must be 1-D"):
        m.draw_at(torch.zeros(2, 2, dtype=torch.int64), s)
    words, rand4, randn4 = m.draw_at(torch.zeros(0, dtype=torch.int64), s)
    assert words.shape == rand4.shape == randn4.shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "start, step",
    [
        (0, 1), (1, 1), (2, 1), (3, 1),  # groups straddling the start
        (2**34 - 37, 1),  # group counters carry past 2**32
        (2**32 - 37, 3), (2**31 - 5, 7), (2**34 - 6, 2), (2**40 + 11, 2**30), (5, 2**33),
        (2**63 - 1000, 1), (2**63 - 3000, 13),  # up to just under 2**63
    ],
)
def test_kernel_noise_path_equals_stream(device, start, step):
    """The vectorised path (straddling groups, lane carries past 2**32) equals draw_at."""
    seed = 2**63 + 12345
    for count in (0, 1, 2, 3, 5, 203):  # 203: not a multiple of any vector width
        idx = start + step * torch.arange(count, dtype=torch.int64)
        for isa in isas(device):
            with use_isa(device, isa):
                fast = ext(device).randn_range(start, count, step, seed_t(seed, device))
                assert torch.equal(fast, stream_at(device, idx, seed)), (isa, count)


@pytest.mark.parametrize("device", DEVICES)
def test_randn_matches_reference_stream(device):
    n = 10_003
    for isa in isas(device):
        with use_isa(device, isa):
            got = ext(device).randn(n, seed_t(SEED, device)).cpu()
            expected = anoise.philox.philox_normal(SEED, torch.arange(n))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert abs(got.mean().item()) < 0.05 and abs(got.std().item() - 1) < 0.05


# ---- forward and backward against the reference -------------------------------------------


def _run(x, alpha, backend, dy, **kw):
    x = x.detach().clone().requires_grad_()
    alpha = alpha.detach().clone().requires_grad_()
    y = AF.adaptive_noise(x, alpha, seed=SEED, backend=backend, **kw)
    y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, alpha.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, layout", CASES, ids=lambda v: str(v))
def test_forward_backward_match_reference(device, dtype, shape, layout):
    x = make_input(shape, layout, dtype, device)
    C = shape[1]
    alpha = torch.linspace(0.05, 0.6, C, dtype=torch.float64, device=device)
    dy = make_input(shape, "contiguous", torch.float64, device, gen_seed=1)
    y, dx, da = _run(x, alpha.to(ref.stat_dtype(dtype)), BACKEND[device], dy)
    if layout != "strided":
        assert y.stride() == x.stride() and dx.stride() == x.stride()
    y_ref, dx_ref, da_ref = _run(x.double(), alpha, "reference", dy)
    check = TOLERANCES[torch.float32] if dtype == torch.float64 else TOLERANCES[dtype]
    for got, want in ((y, y_ref), (dx, dx_ref), (da, da_ref)):
        atol, rtol = check
        scale = max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol)
    if dtype == torch.float64:  # exact arithmetic on the backend's own noise
        xr = x.detach().clone().requires_grad_()
        ar = alpha.clone().requires_grad_()
        yf, _, _ = formula(xr, ar, own_noise(x, SEED), 1e-5)
        yf.backward(dy)
        assert_close_to_reference(y, yf.detach(), torch.float64)
        assert_close_to_reference(dx, xr.grad, torch.float64)
        assert_close_to_reference(da, ar.grad, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_isa_matches_reference(device, dtype):
    """Each vectorised build of the CPU kernels (baseline, AVX2, AVX-512 where the CPU has them)."""
    x = make_input((4, 6, 9, 7), "contiguous", dtype, device)
    xc = x.contiguous(memory_format=torch.channels_last)
    alpha = torch.full((6,), 0.3, dtype=ref.stat_dtype(dtype), device=device)
    dy = make_input((4, 6, 9, 7), "contiguous", torch.float64, device, gen_seed=2)
    want = _run(x.double(), alpha.double(), "reference", dy)
    tol = torch.float32 if dtype == torch.float64 else dtype
    for isa in isas(device):
        with use_isa(device, isa):
            for inp in (x, xc):
                for got, w in zip(_run(inp, alpha, BACKEND[device], dy), want, strict=True):
                    assert_close_to_reference(got, w, tol)


def test_build_mode_is_validated(monkeypatch):
    from anoise import _build

    monkeypatch.setenv("ANOISE_EXT", "sometimes")
    with pytest.raises(ImportError, match="ANOISE_EXT must be auto, aot or jit"):
        _build.load("cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_running_stats_update_and_eval(device, dtype):
    x = make_input((6, 5, 7, 3), "contiguous", dtype, device)
    dy = make_input((6, 5, 7, 3), "contiguous", torch.float64, device, gen_seed=3)
    results = {}
    for backend in ("reference", BACKEND[device]):
        rv = torch.ones(5, device=device)
        nbt = torch.zeros((), dtype=torch.int64, device=device)
        AF.adaptive_noise(x, 0.2, running_var=rv, num_batches_tracked=nbt, backend=backend)
        AF.adaptive_noise(
            x * 2, 0.2, running_var=rv, num_batches_tracked=nbt, momentum=None, backend=backend
        )
        alpha = torch.full((5,), 0.3, dtype=ref.stat_dtype(dtype), device=device)
        ev = _run(x, alpha, backend, dy, running_var=rv, training=False)
        results[backend] = (rv, nbt) + ev
    for got, want in zip(results[BACKEND[device]], results["reference"], strict=True):
        assert_close_to_reference(got, want, torch.float32)
    # Eval with running statistics: dx = dy exactly.
    assert torch.equal(results[BACKEND[device]][3], dy.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_stats_grad_false_passes_dy_through(device):
    x = make_input((4, 3, 5, 5), "contiguous", torch.float32, device)
    dy = make_input((4, 3, 5, 5), "contiguous", torch.float64, device, gen_seed=4)
    alpha = torch.full((3,), 0.5, device=device)
    y, dx, da = _run(x, alpha, BACKEND[device], dy, stats_grad=False)
    y_ref, _, da_ref = _run(x.double(), alpha.double(), "reference", dy, stats_grad=False)
    assert torch.equal(dx, dy.float())
    assert_close_to_reference(y, y_ref, torch.float32)
    assert_close_to_reference(da, da_ref, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    x = make_input((3, 4, 5), "contiguous", torch.float64, device).requires_grad_()
    alpha = torch.tensor([0.1, 0.4, 0.7, 1.0], dtype=torch.float64, device=device)
    alpha.requires_grad_()
    rv = torch.rand(4, dtype=torch.float64, device=device) + 0.5

    def batch(x, a):
        return AF.adaptive_noise(x, a, seed=SEED, backend=BACKEND[device])

    def running(x, a):
        return AF.adaptive_noise(
            x, a, seed=SEED, backend=BACKEND[device], running_var=rv, training=False
        )

    assert torch.autograd.gradcheck(batch, (x, alpha))
    assert torch.autograd.gradcheck(running, (x, alpha))


# ---- determinism, edge cases --------------------------------------------------------------


def _everything(x, alpha, dy, backend):
    xg = x.detach().clone().requires_grad_()
    ag = alpha.detach().clone().requires_grad_()
    rv = torch.ones(x.shape[1], device=x.device)
    y = AF.adaptive_noise(xg, ag, seed=SEED, backend=backend, running_var=rv)
    y.backward(dy)
    return y, xg.grad, ag.grad, rv


THREAD_CASES = [
    # Many chunks per channel (N*S = 60000 > the 16384-element chunk) and many tasks; with 6
    # channels, 1 thread walks channel by channel and 2 threads phase by phase.
    ((6, 6, 100, 100), "contiguous"),
    ((6, 8, 100, 100), "channels_last"),
    ((70001, 3), "contiguous"),  # (N, C): position by position, groups straddle positions
    ((50, 5, 7, 7), "channels_last"),  # S = 49: tiles of positions, groups straddle channels
    ((4, 6, 500, 501), "contiguous"),  # 24 MB in float32: streaming stores, unaligned rows
]


@pytest.mark.parametrize("shape, layout", THREAD_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_thread_count_does_not_change_results(shape, layout, dtype):
    x = make_input(shape, layout, dtype, "cpu")
    dy = make_input(shape, layout, dtype, "cpu", gen_seed=5)
    alpha = torch.linspace(0.1, 0.8, shape[1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _everything(x, alpha, dy, "cpu")
        torch.set_num_threads(2)
        two = _everything(x, alpha, dy, "cpu")
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_variance_channel_is_finite(device, dtype):
    x = make_input((4, 3, 6, 6), "contiguous", dtype, device)
    x[:, 1] = 2.5
    alpha = torch.full((3,), 0.5, dtype=ref.stat_dtype(dtype), device=device)
    dy = torch.ones(x.shape, dtype=torch.float64, device=device)
    y, dx, da = _run(x, alpha, BACKEND[device], dy)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all() and torch.isfinite(da).all()
    noise = own_noise(x, SEED)[:, 1]
    expected = (2.5 + 0.5 * math.sqrt(1e-5) * noise).to(dtype)
    assert_close_to_reference(y[:, 1], expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_alpha_zero_is_bitwise_identity(device, dtype, layout):
    x = make_input((3, 4, 5, 6), layout, dtype, device)
    x[0, 0, 0, :2] = torch.tensor([-0.0, 0.0], dtype=dtype)  # -0.0 + 0.0 would give +0.0
    alpha = torch.tensor([0.0, 0.3, 0.0, 0.2], dtype=ref.stat_dtype(dtype), device=device)
    y = AF.adaptive_noise(x, alpha, seed=SEED, backend=BACKEND[device], running_var=None)
    bits = torch.int16 if dtype in (torch.float16, torch.bfloat16) else torch.int32
    if dtype == torch.float64:
        bits = torch.int64
    for c in (0, 2):
        assert torch.equal(y[:, c].view(bits), x[:, c].view(bits))
    assert not torch.equal(y[:, 1], x[:, 1])
    scale = torch.zeros(4, dtype=ref.stat_dtype(dtype), device=device)
    y0 = ext(device).forward_scaled(x.flatten(2), scale, seed_t(SEED, device))
    assert torch.equal(y0.view(bits), x.flatten(2).view(bits))
    assert AF.adaptive_noise(x, 0.0, backend=BACKEND[device]) is x


@pytest.mark.parametrize("device", DEVICES)
def test_nan_propagates_to_its_channel_only(device):
    x = make_input((3, 4, 5), "contiguous", torch.float32, device)
    x[1, 2, 3] = float("nan")
    y = AF.adaptive_noise(x, 0.2, seed=SEED, backend=BACKEND[device])
    assert torch.isnan(y[:, 2]).all()
    assert torch.isfinite(y[:, [0, 1, 3]]).all()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(6, 3, 5, 7), (40, 3)], ids=str)
def test_statistics_finite_where_the_float32_sum_of_squares_overflows(shape, layout):
    """Values of magnitude ~1e19: each squared deviation is ~1e38, their float32 sum overflows,
    but the variance itself is representable (as it is for torch.var)."""
    if len(shape) == 2 and layout == "channels_last":
        layout = "contiguous"
    g = torch.Generator().manual_seed(3)
    magnitude = torch.empty(shape, dtype=torch.float64).uniform_(0.5e19, 1e19, generator=g)
    sign = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    x = (magnitude * sign).float()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    C = shape[1]
    dims = [0] + list(range(2, x.dim()))
    want = torch.var(x.double(), dim=dims, correction=0)
    assert torch.isfinite(want.float()).all()
    _, _, var = ext("cpu").forward_batch(x.flatten(2) if x.dim() > 2 else x.unsqueeze(2),
                                         torch.full((C,), 0.2), seed_t(SEED, "cpu"), 1e-5)
    assert torch.isfinite(var).all()
    torch.testing.assert_close(var.double(), want, rtol=1e-5, atol=0)
    alpha = torch.full((C,), 0.2)
    dy = make_input(shape, "contiguous", torch.float64, "cpu", gen_seed=5)
    y, dx, da = _run(x, alpha, "cpu", dy)
    for t in (y, dx, da):
        assert torch.isfinite(t).all()
    sigma = torch.sqrt(var.double() + 1e-5).view((1, C) + (1,) * (x.dim() - 2))
    noise = own_noise(x, SEED)
    atol = 1e-6 * x.abs().max().item()  # x itself is rounded to float32 in y
    torch.testing.assert_close(y.double(), x.double() + 0.2 * sigma * noise, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_input(device):
    x = torch.empty(0, 3, 4, device=device)
    y, mean, var = ext(device).forward_batch(
        x, torch.ones(3, device=device), seed_t(1, device), 1e-5
    )
    assert y.shape == x.shape and mean.shape == (3,) and var.shape == (3,)
    assert torch.equal(ext(device).noise_dot(x, seed_t(1, device)), torch.zeros(3, device=device))
    assert AF.adaptive_noise(x, 0.1, backend=BACKEND[device]).shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_launchers_reject_bad_arguments(device):
    m = ext(device)
    x = torch.randn(2, 3, 4, device=device)
    a = torch.ones(3, device=device)
    s = seed_t(1, device)
    with pytest.raises(ValueError, match="alpha must have shape"):
        m.forward_batch(x, torch.ones(4, device=device), s, 1e-5)
    with pytest.raises(TypeError, match="alpha must have dtype"):
        m.forward_batch(x, a.double(), s, 1e-5)
    with pytest.raises(TypeError, match="seed must be an int64"):
        m.forward_batch(x, a, s.int(), 1e-5)
    with pytest.raises(ValueError, match="3-D"):
        m.forward_batch(x[0], a, s, 1e-5)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        m.noise_dot(x.int(), s)
    with pytest.raises(ValueError, match="dy must have x's shape"):
        m.backward_batch(x[:1], x, a, a, a, s)
    other = "cuda" if device == "cpu" else "cpu"
    if other in DEVICES:
        with pytest.raises(ValueError, match="must be a"):
            m.forward_batch(x.to(other), a, s, 1e-5)


# ---- memory contract and custom ops ---------------------------------------------------------


def _saved_sizes(fn):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


@pytest.mark.parametrize("device", DEVICES)
def test_forward_saves_at_most_one_input_sized_tensor(device):
    x = make_input((4, 3, 8, 8), "contiguous", torch.float32, device).requires_grad_()
    alpha = torch.full((3,), 0.2, device=device, requires_grad=True)
    rv = torch.ones(3, device=device)
    b = BACKEND[device]
    big = x.numel()
    full = _saved_sizes(lambda: AF.adaptive_noise(x, alpha, backend=b))
    assert sum(n == big for n in full) <= 1 and all(n in (big, 1, 3) for n in full)
    no_stats = _saved_sizes(lambda: AF.adaptive_noise(x, alpha, backend=b, stats_grad=False))
    assert all(n < big for n in no_stats)
    ev = _saved_sizes(
        lambda: AF.adaptive_noise(x, alpha, backend=b, running_var=rv, training=False)
    )
    assert all(n < big for n in ev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    b = BACKEND[device]
    x = make_input((3, 4, 5, 6), layout, torch.float32, device).requires_grad_()
    alpha = torch.full((4,), 0.3, device=device, requires_grad=True)
    s = seed_t(SEED, device)
    ops = torch.ops.anoise
    stats = torch.rand(4, device=device) + 0.5
    torch.library.opcheck(ops.forward_batch, (x, alpha, s, 1e-5, True, b))
    torch.library.opcheck(ops.forward_batch, (x, alpha, s, 1e-5, False, b))
    torch.library.opcheck(ops.forward_scaled, (x, stats, s, b))
    dy = torch.randn_like(x).detach()
    torch.library.opcheck(ops.backward_batch, (dy, x.detach(), alpha.detach(), stats, stats, s, b))
    torch.library.opcheck(ops.noise_dot, (dy, s, b))


# ---- index_base: a call draws the noise of its slice of a larger batch ------------------------

BASE_CASES = [
    ((3, 7, 13, 5), "contiguous"),  # planes, runs along S
    ((3, 7, 13, 5), "channels_last"),  # rows, runs over C
    ((6, 5), "contiguous"),  # (N, C): rows
    ((6, 5), "transposed"),  # planes with S == 1: runs along N
    ((2, 2, 9000), "contiguous"),  # several chunks per channel
]


def _split(shape, layout, pad, device, dtype=torch.float64, gen_seed=0):
    """x_big (pad + N rows) and its last N rows x, both 3-D views in the given layout.

    Element (n, c, s) of x has logical index B + (n*C + c)*S + s in x_big, B = x_pad.numel().
    """
    big = make_input((pad + shape[0],) + shape[1:], layout, dtype, device, gen_seed)
    big3 = big.reshape(big.shape[0], big.shape[1], -1)
    return big3, big3[pad:], big3[:pad].numel()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape, layout", BASE_CASES, ids=lambda v: str(v))
def test_index_base_forward_scaled_is_slice_of_larger_call(device, dtype, shape, layout):
    pad = 2
    big, x, B = _split(shape, layout, pad, device, dtype)
    C = shape[1]
    scale = torch.linspace(0.25, 1.5, C, dtype=ref.stat_dtype(dtype), device=device)
    scale[1] = 0  # that channel must still come back bitwise unchanged
    s = seed_t(2**63 + 99, device)
    m = ext(device)
    for isa in isas(device):
        with use_isa(device, isa):
            y = m.forward_scaled(x, scale, s, index_base=B)
            y_big = m.forward_scaled(big, scale, s)
            assert torch.equal(y - x, (y_big - big)[pad:]), isa
            assert torch.equal(y[:, 1], x[:, 1])
            y0 = m.forward_scaled(x, scale, s, index_base=0)
            assert torch.equal(y0, m.forward_scaled(x, scale, s)), isa
            assert not torch.equal(y0, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, layout", BASE_CASES, ids=lambda v: str(v))
def test_index_base_forward_batch_and_noise_dot(device, shape, layout):
    pad = 3
    big, x, B = _split(shape, layout, pad, device)
    C = shape[1]
    alpha = torch.linspace(0.1, 0.9, C, dtype=torch.float64, device=device)
    dy_big = make_input(tuple(big.shape), "contiguous", torch.float64, device, gen_seed=7)
    dy_big[:pad] = 0  # the padding adds nothing to the larger call's g
    dy = dy_big[pad:]
    s = seed_t(SEED, device)
    m = ext(device)
    ones = torch.ones(C, dtype=torch.float64, device=device)
    for isa in isas(device):
        with use_isa(device, isa):
            # The slice's noise, from the larger call at base 0.
            eps = m.forward_scaled(torch.zeros_like(big), ones, s)[pad:]
            y, mean, var = m.forward_batch(x, alpha, s, 1e-5, index_base=B)
            y0, mean0, var0 = m.forward_batch(x, alpha, s, 1e-5)
            assert torch.equal(mean, mean0) and torch.equal(var, var0), isa
            sigma = torch.sqrt(var + 1e-5)
            want = x + (alpha * sigma).view(1, C, 1) * eps
            torch.testing.assert_close(y, want, atol=1e-12, rtol=1e-12)

            g = m.noise_dot(dy, s, index_base=B)
            torch.testing.assert_close(g, m.noise_dot(dy_big, s), atol=1e-9, rtol=1e-12)
            torch.testing.assert_close(g, (dy * eps).sum((0, 2)), atol=1e-9, rtol=1e-12)

            dx, gb = m.backward_batch(dy, x, alpha, mean, sigma, s, index_base=B)
            torch.testing.assert_close(gb, g, atol=1e-9, rtol=1e-12)  # dy walked in x's order
            M = x.shape[0] * x.shape[2]
            coef = (alpha * g / (M * sigma)).view(1, C, 1)
            want_dx = dy + coef * (x - mean.view(1, C, 1))
            torch.testing.assert_close(dx, want_dx, atol=1e-12, rtol=1e-12)
            assert not torch.equal(g, m.noise_dot(dy, s)), isa


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("base", [2**32 - 301, 2**33 - 7, 2**63 - 2000])
def test_index_base_crosses_high_word(device, layout, base):
    """Indices base + i past 2**32 (and up to just under 2**63) equal the reference stream."""
    shape = (4, 5, 37)  # 740 elements: not a multiple of any vector width
    z = torch.zeros(shape + (1,), device=device)
    if layout == "channels_last":
        z = z.contiguous(memory_format=torch.channels_last)
    z3 = z.reshape(4, 5, -1)
    n = z3.numel()
    seed = 2**63 + 12345
    offsets = base + torch.arange(n, dtype=torch.int64)
    expected = anoise.philox.philox_normal(seed, offsets).view(shape)
    ones = torch.ones(5, device=device)
    for isa in isas(device):
        with use_isa(device, isa):
            own = stream_at(device, offsets, seed).view(shape)
            got = ext(device).forward_scaled(z3, ones, seed_t(seed, device), index_base=base)
            assert torch.equal(got, own), isa
            torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)
            g = ext(device).noise_dot(torch.ones_like(z3), seed_t(seed, device), index_base=base)
            torch.testing.assert_close(g.cpu(), expected.sum((0, 2)), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_index_base_is_checked_and_keyword_only(device):
    m = ext(device)
    x = torch.randn(2, 3, 4, device=device)
    a = torch.ones(3, device=device)
    s = seed_t(1, device)
    calls = [
        lambda **kw: m.forward_batch(x, a, s, 1e-5, **kw),
        lambda **kw: m.forward_scaled(x, a, s, **kw),
        lambda **kw: m.backward_batch(x, x, a, a, a, s, **kw),
        lambda **kw: m.noise_dot(x, s, **kw),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="index_base must be >= 0"):
            call(index_base=-1)
        with pytest.raises(ValueError, match="index_base"):
            call(index_base=-(2**63))
    with pytest.raises(TypeError):
        m.forward_scaled(x, a, s, 5)  # positional: keyword-only as in the Triton launchers


# ---- every launcher against the reference stream ---------------------------------------------

# Groups of four noise indices straddle rows (S not a multiple of 4), channels, positions and
# the index base.
STREAM_CASES = [
    ((3, 7, 13, 5), "contiguous"),
    ((3, 7, 13, 5), "channels_last"),
    ((5, 3), "contiguous"),  # (N, C): S == 1
    ((5, 3), "transposed"),
    ((7, 3, 2), "contiguous"),  # S = 2
    ((5, 6, 3), "contiguous"),  # S = 3
    ((3, 5, 5), "contiguous"),  # S = 5
    ((3, 6, 7, 7), "contiguous"),  # S = 49
    ((3, 6, 7, 7), "channels_last"),
]
STREAM_BASES = [0, 1, 2, 3, 2**32 - 2, 2**62 + 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, layout", STREAM_CASES, ids=lambda v: str(v))
def test_launchers_match_reference_stream(device, shape, layout):
    x3 = make_input(shape, layout, torch.float32, device).reshape(shape[0], shape[1], -1)
    dy3 = make_input(shape, layout, torch.float32, device, gen_seed=9).reshape(x3.shape)
    C = shape[1]
    alpha = torch.linspace(0.2, 0.9, C, device=device)
    seed = 2**63 + 4321
    s = seed_t(seed, device)
    m = ext(device)
    xd, dyd, ad = x3.cpu().double(), dy3.cpu().double(), alpha.cpu().double()
    for base in STREAM_BASES:
        eps = anoise.philox.noise_like(xd, seed, offset=base).double()
        xr, ar = xd.clone().requires_grad_(), ad.clone().requires_grad_()
        y_want, _, _ = formula(xr, ar, eps, 1e-5)
        y_want.backward(dyd)
        for isa in isas(device):
            with use_isa(device, isa):
                y = m.forward_scaled(x3, alpha, s, index_base=base)
                assert_close_to_reference(y.cpu(), xd + ad.view(1, C, 1) * eps, torch.float32)
                g = m.noise_dot(dy3, s, index_base=base)
                assert_close_to_reference(g.cpu(), (dyd * eps).sum((0, 2)), torch.float32)
                y, mean, var = m.forward_batch(x3, alpha, s, 1e-5, index_base=base)
                assert_close_to_reference(y.cpu(), y_want.detach(), torch.float32)
                sigma = torch.sqrt(var + 1e-5)
                dx, g = m.backward_batch(dy3, x3, alpha, mean, sigma, s, index_base=base)
                assert_close_to_reference(dx.cpu(), xr.grad, torch.float32)
                assert_close_to_reference((sigma * g).cpu(), ar.grad, torch.float32)


def test_large_outputs_are_streamed_correctly():
    """Outputs of 16 MiB and more are written with streaming stores (here from rows that are not
    vector-aligned): they must hold what the cached path writes."""
    shape = (4, 6, 500 * 501)  # 24 MB in float32
    x = make_input(shape, "contiguous", torch.float32, "cpu")
    dy = make_input(shape, "contiguous", torch.float32, "cpu", gen_seed=4)
    scale = torch.linspace(0.5, 1.5, 6)
    scale[2] = 0
    alpha = torch.linspace(0.1, 0.6, 6)
    s = seed_t(SEED, "cpu")
    m = ext("cpu")
    for isa in isas("cpu"):
        with use_isa("cpu", isa):
            y = m.forward_scaled(x, scale, s)
            # 6 MB slices at their own index base: written by the cached path.
            parts = [m.forward_scaled(x[n : n + 1], scale, s, index_base=n * x[0].numel())
                     for n in range(shape[0])]
            assert torch.equal(y, torch.cat(parts)), isa
            y, mean, var = m.forward_batch(x, alpha, s, 1e-5)
            sigma = torch.sqrt(var + 1e-5)
            want = x.double() + (alpha * sigma).double().view(1, -1, 1) * own_noise(x, SEED)
            torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
            dx, g = m.backward_batch(dy, x, alpha, mean, sigma, s)
            coef = (alpha * g / (shape[0] * shape[2] * sigma)).double().view(1, -1, 1)
            want = dy.double() + coef * (x.double() - mean.double().view(1, -1, 1))
            torch.testing.assert_close(dx.double(), want, atol=1e-5, rtol=1e-5)


def test_d_alpha_float32_with_heavy_cancellation():
    """g = sum(dy * eps) over M = 120,000 elements whose terms cancel to almost nothing: d alpha
    in float32 is sigma * g evaluated in float64 on the backend's own noise, to 1e-5 (a float32
    running sum of g missed it by more)."""
    shape, dims = (30, 2, 4000), (0, 2)
    x = make_input(shape, "contiguous", torch.float32, "cpu")
    eps = own_noise(x, SEED)
    r = 4 * torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    dy = (r - (r * eps).sum(dims, keepdim=True) / (eps * eps).sum(dims, keepdim=True) * eps).float()
    terms = dy.double() * eps
    assert (terms.abs().sum(dims) > 1e6 * terms.sum(dims).abs()).all()  # heavy cancellation
    alpha = torch.tensor([0.3, 0.7], requires_grad=True)
    AF.adaptive_noise(x, alpha, seed=SEED, backend="cpu").backward(dy)
    sigma = torch.sqrt(x.double().var(dims, unbiased=False) + 1e-5)
    assert_close_to_reference(alpha.grad, sigma * terms.sum(dims), torch.float32)


@pytest.mark.skipif(NO_COMPILER is not None, reason=f"no compiler: {NO_COMPILER}")
@pytest.mark.parametrize("stats_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_native_eager_node_equals_the_python_one(dtype, stats_grad):
    """The cpu backend's autograd node in C++ (plain eager calls) gives the bits of the Python
    autograd.Function over the same launchers: outputs, both gradients, and the refusal of a
    second derivative."""
    from anoise import _cpu, ops

    sdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(3, 7, 13, 5, dtype=dtype, requires_grad=True)
    alpha = torch.linspace(0.1, 0.7, 7, dtype=sdtype).requires_grad_()
    seed = torch.tensor([0x5EED], dtype=torch.int64)
    dy = torch.randn_like(x)
    native = _cpu.eager_batch(x, alpha, seed, 1e-5, stats_grad)
    python = ops._EagerBatch.apply(x, alpha, seed, 1e-5, stats_grad, "cpu")
    assert type(native[0].grad_fn).__name__ != type(python[0].grad_fn).__name__
    for a, b in zip(native, python, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(torch.autograd.grad(native[0], (x, alpha), dy),
                    torch.autograd.grad(python[0], (x, alpha), dy), strict=True):
        assert torch.equal(a, b)
    y = _cpu.eager_batch(x, alpha, seed, 1e-5, stats_grad)[0]
    gx, ga = torch.autograd.grad((y * y).sum(), (x, alpha), create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        (gx.sum() + ga.sum()).backward()
    y.relu_()  # an output of its own, not a view: in-place ops are allowed
