"""``torch.library.opcheck`` on every ``anoise::*`` op and every usable fused backend, over
mixed layouts: the fake kernels must give the real outputs' shapes and strides (a mismatch is a
stride assert or wrong gradients under ``torch.compile``)."""

import pytest
import torch
from conftest import DEVICES, usable_backends

import anoise  # noqa: F401  (registers the ops)

ops = torch.ops.anoise
CASES = [(d, b) for d in DEVICES for b in usable_backends(d) if b != "reference"]


def _layouts(device):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x = randn(3, 7, 13, 5)
    return {
        "contiguous": (x, randn(3, 7, 13, 5)),
        "x_contiguous_dy_channels_last": (
            x, randn(3, 7, 13, 5).contiguous(memory_format=torch.channels_last)),
        "x_channels_last_dy_contiguous": (
            x.contiguous(memory_format=torch.channels_last), randn(3, 7, 13, 5)),
        "NC": (randn(6, 5), randn(6, 5)),
        "NC_x_transposed": (randn(5, 6).t(), randn(6, 5)),
        "NC_dy_transposed": (randn(6, 5), randn(5, 6).t()),
        "3d_sliced": (randn(2, 10, 9)[:, ::2], randn(2, 5, 9)),
        "dy_expanded": (randn(2, 3, 4), torch.ones((), device=device).expand(2, 3, 4)),
    }


def _channel(t, C, lo=0.1):
    return (torch.rand(C, generator=torch.Generator().manual_seed(C)) + lo).to(t.device)


LAYOUT_DTYPES = [(layout, torch.float32) for layout in _layouts("cpu")] + [
    ("x_contiguous_dy_channels_last", torch.float64), ("NC_dy_transposed", torch.float64)]
# Every check on two layouts; on the others the fake-vs-real one (strides), as the
# compiled-autograd check is slow under Triton's interpreter.
FULL = {"x_contiguous_dy_channels_last", "NC"}


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("layout, dtype", LAYOUT_DTYPES)
def test_opcheck_every_op(device, backend, layout, dtype):
    x, dy = (t.to(dtype) for t in _layouts(device)[layout])
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    C = x.shape[1]
    alpha, mean, sigma = (_channel(x, C).to(sd) for _ in range(3))
    seed = torch.tensor([2**63 + 5 - 2**64], device=device)
    cases = [
        (ops.forward_batch, (x.clone().requires_grad_(), alpha.clone().requires_grad_(), seed,
                             1e-5, True, backend)),
        (ops.forward_batch, (x, alpha, seed, 1e-5, False, backend)),
        (ops.forward_scaled, (x.clone().requires_grad_(), alpha.clone().requires_grad_(), seed,
                              backend)),
        (ops.backward_batch, (dy, x, alpha, mean, sigma, seed, backend)),
        (ops.noise_dot, (dy, seed, backend)),
        (ops.draw_seed, (x,)),
    ]
    test_utils = None if layout in FULL else ("test_schema", "test_faketensor")
    for op, args in cases:
        if test_utils is None:
            torch.library.opcheck(op, args)
        else:
            torch.library.opcheck(op, args, test_utils=test_utils)


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("layout", ["x_contiguous_dy_channels_last",
                                    "x_channels_last_dy_contiguous", "NC_dy_transposed"])
def test_dx_is_laid_out_like_dy(device, backend, layout):
    x, dy = _layouts(device)[layout]
    C = x.shape[1]
    dx, _ = ops.backward_batch(dy, x, _channel(x, C), _channel(x, C), _channel(x, C),
                               torch.tensor([7], device=device), backend)
    assert dx.stride() == torch.empty_like(dy).stride()
