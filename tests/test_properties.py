"""Property-based tests: every usable backend equals the float64 reference on random inputs,
and random bad inputs always raise a clear ValueError / TypeError."""

import math

import pytest
import torch
from conftest import DEVICES, TOLERANCES, usable_backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anoise.functional as AF
from anoise.backends import BACKEND_NAMES

BACKENDS = [(d, b) for d in DEVICES for b in usable_backends(d)]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIM = st.sampled_from([1, 2, 3, 5, 7, 13])


@st.composite
def cases(draw):
    shape = (draw(st.integers(1, 5)), draw(DIM)) + tuple(
        draw(st.lists(DIM, min_size=0, max_size=2)))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    alpha_kind = draw(st.sampled_from(["float", "scalar", "channel"]))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "transposed"]))
    return dict(
        shape=shape, dtype=dtype, alpha_kind=alpha_kind, layout=layout,
        mode=draw(st.sampled_from(["batch", "running"])),
        stats_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**64 - 1)),
        scale=draw(st.sampled_from([1e-3, 1.0, 100.0])),
    )


def _make(case, device):
    g = torch.Generator().manual_seed(case["seed"] % 2**31)
    x = torch.randn(case["shape"], generator=g, dtype=torch.float64) * case["scale"] + 1
    C = case["shape"][1]
    alpha = {"float": 0.4, "scalar": torch.tensor(0.4, dtype=torch.float64),
             "channel": torch.rand(C, generator=g, dtype=torch.float64)}[case["alpha_kind"]]
    running_var = torch.rand(C, generator=g) + 0.5
    return x, alpha, running_var


def _layout(x, layout):
    if layout == "channels_last" and x.dim() == 4:
        return x.to(memory_format=torch.channels_last)
    if layout == "transposed" and x.dim() >= 3:
        return x.transpose(0, 2).contiguous().transpose(0, 2)
    return x


def _run(x, alpha, running_var, case, backend, dtype, device):
    # Gradients are compared where the dtype can hold them to the tolerance.
    x = _layout(x.to(device, dtype), case["layout"])
    x.requires_grad_(dtype in (torch.float32, torch.float64))
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.to(device, torch.float64 if dtype == torch.float64 else torch.float32)
        alpha.requires_grad_(x.requires_grad)
    running = case["mode"] == "running"
    y = AF.adaptive_noise(x, alpha, running_var=running_var.to(device) if running else None,
                          training=not running, stats_grad=case["stats_grad"],
                          seed=case["seed"], backend=backend)
    return x, alpha, y


@pytest.mark.parametrize("device, backend", BACKENDS)
@SETTINGS
@given(case=cases())
def test_backend_equals_float64_reference(device, backend, case):
    x0, alpha0, rv = _make(case, device)
    dtype = case["dtype"]
    x, alpha, y = _run(x0, alpha0, rv, case, backend, dtype, device)
    # The reference on the same (rounded) input, computed in float64.
    xr, alphar, yr = _run(x0.to(dtype).double(), alpha0, rv, case, "reference", torch.float64,
                          device)
    atol, rtol = TOLERANCES[dtype]
    out_scale = max(yr.abs().max().item(), 1.0)
    torch.testing.assert_close(y.double(), yr.detach(), atol=atol * out_scale, rtol=rtol)
    if not x.requires_grad:
        return
    dy = torch.randn_like(yr)
    y.backward(dy.to(y.dtype))
    yr.backward(dy)
    grad_scale = max(xr.grad.abs().max().item(), 1.0)
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=atol * grad_scale * 10, rtol=rtol)
    if isinstance(alpha, torch.Tensor):
        a_scale = max(alphar.grad.abs().max().item(), 1.0)
        torch.testing.assert_close(alpha.grad.double(), alphar.grad, rtol=rtol * 10,
                                   atol=atol * a_scale * math.sqrt(x.numel()))


BAD_CALLS = st.one_of(
    st.builds(lambda n: (torch.randn(n), 0.1, {}), st.integers(0, 4)),
    st.builds(lambda d: (torch.ones(2, 3, dtype=d), 0.1, {}),
              st.sampled_from([torch.int8, torch.int32, torch.int64, torch.bool,
                               torch.complex64])),
    st.builds(lambda a: (torch.randn(2, 3), a, {}),
              st.one_of(st.floats(max_value=-1e-30), st.just(float("nan")),
                        st.just(float("-inf")), st.text(max_size=3), st.none())),
    st.builds(lambda s: (torch.randn(2, 3), torch.ones(s), {}),
              st.lists(st.integers(1, 4), min_size=1, max_size=3).filter(lambda s: s != [3])),
    st.builds(lambda n: (torch.randn(2, 3), 0.1, {"running_var": torch.ones(n)}),
              st.integers(0, 8).filter(lambda n: n != 3)),
    st.builds(lambda s: (torch.randn(2, 3), 0.1, {"seed": s}),
              st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64),
                        st.floats(allow_nan=True))),
    st.builds(lambda b: (torch.randn(2, 3), 0.1, {"backend": b}),
              st.text(max_size=8).filter(lambda b: b not in BACKEND_NAMES + ("auto",))),
    st.builds(lambda e: (torch.randn(2, 3), 0.1, {"eps": e}),
              st.one_of(st.floats(max_value=0.0), st.just(float("nan")))),
    st.builds(lambda m: (torch.randn(2, 3), 0.1, {"momentum": m}),
              st.one_of(st.floats(min_value=1.0001), st.floats(max_value=-1e-9))),
)


@settings(max_examples=200, deadline=None)
@given(call=BAD_CALLS)
def test_bad_input_always_raises_a_clear_error(call):
    x, alpha, kwargs = call
    with pytest.raises((ValueError, TypeError)) as info:
        AF.adaptive_noise(x, alpha, **kwargs)
    assert str(info.value)
