"""``torch.func`` transforms and forward-mode AD with a drawn seed (``seed=None``, what every
module does), on every usable backend: each gives what it gives with that seed passed
explicitly, and what ordinary reverse-mode autograd gives under the same generator state.

The drawn seed is the one ``anoise.ops.draw_seed`` returns after ``torch.manual_seed(SEED)``.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import DEVICES, usable_backends
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

import anoise
import anoise.functional as AF
from anoise.ops import draw_seed

CASES = [(d, b) for d in DEVICES for b in usable_backends(d)]
MODES = ["batch", "running"]
SEED = 21


def _drawn_seed(device) -> int:
    """The seed the next draw gives after ``torch.manual_seed(SEED)``."""
    torch.manual_seed(SEED)
    return int(draw_seed(torch.empty(1, device=device)).item()) & (2**64 - 1)


def _noise(mode, backend, seed):
    def f(x, alpha):
        rv = torch.linspace(0.5, 2.0, x.shape[1], dtype=x.dtype, device=x.device)
        return AF.adaptive_noise(x, alpha, running_var=rv if mode == "running" else None,
                                 training=mode == "batch", seed=seed, backend=backend)
    return f


def _inputs(device, shape=(2, 2, 3)):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(device)
    alpha = (torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.2).to(device)
    return x, alpha


def _drawn(transform):
    """``transform`` run under ``torch.manual_seed(SEED)``, so that its draw is reproducible."""
    def run(*args):
        torch.manual_seed(SEED)
        return transform(*args)
    return run


def _assert_same(got, expected):
    for a, b in zip(torch.utils._pytree.tree_leaves(got),
                    torch.utils._pytree.tree_leaves(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device, backend", CASES)
def test_transforms_with_a_drawn_seed_equal_the_explicit_seed(device, backend):
    """Batch statistics (the running-statistics path draws its seed the same way)."""
    mode = "batch"
    x, alpha = _inputs(device)
    u = torch.randn_like(x)
    tx, talpha = torch.randn_like(x), torch.randn_like(alpha)
    seed = _drawn_seed(device)
    drawn, given = _noise(mode, backend, None), _noise(mode, backend, seed)

    def transforms(f):
        return {
            "grad": lambda: grad(lambda x, a: (f(x, a) * u).sum(), argnums=(0, 1))(x, alpha),
            "vjp": lambda: vjp(f, x, alpha)[1](u),
            "jacrev": lambda: jacrev(f, argnums=(0, 1))(x, alpha),
            "jacfwd": lambda: jacfwd(f, argnums=(0, 1))(x, alpha),
            "jvp": lambda: jvp(f, (x, alpha), (tx, talpha)),
            "vmap": lambda: vmap(f, in_dims=(0, None), randomness="same")(x[None], alpha),
        }

    expected = {name: t() for name, t in transforms(given).items()}
    for name, t in transforms(drawn).items():
        torch.manual_seed(SEED)
        _assert_same(t(), expected[name])

    # ... and reverse mode agrees with plain autograd
    xr, ar = x.clone().requires_grad_(), alpha.clone().requires_grad_()
    _assert_same(expected["grad"], torch.autograd.grad((given(xr, ar) * u).sum(), (xr, ar)))


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_dual_tensors_with_a_drawn_seed(device, backend, mode):
    x, alpha = _inputs(device)
    tx, talpha = torch.randn_like(x), torch.randn_like(alpha)
    seed = _drawn_seed(device)
    tangents = []
    for f in (_noise(mode, backend, None), _noise(mode, backend, seed)):
        torch.manual_seed(SEED)
        with fwAD.dual_level():
            y = f(fwAD.make_dual(x, tx), fwAD.make_dual(alpha, talpha))
            tangents.append(fwAD.unpack_dual(y))
    _assert_same(tangents[0], tangents[1])
    assert tangents[0].tangent.abs().max() > 0.1


def _conv(backend, device):
    torch.manual_seed(0)
    return anoise.AdaptiveNoiseConv2d(2, 3, 3, padding=1, alpha=0.4, learnable_alpha=True,
                                      backend=backend).to(device).double()


@pytest.mark.parametrize("device, backend", CASES)
def test_forward_mode_through_a_module(device, backend):
    """``make_dual`` into a conv twin: ``<J t, u>`` equals ``<t, J^T u>`` from backward."""
    conv = _conv(backend, device)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, device=device)
    t, u = torch.randn_like(x), torch.randn(2, 3, 3, 3, dtype=torch.float64, device=device)
    for train in (True, False):
        conv.train(train)
        state = {k: v.clone() for k, v in conv.state_dict().items()}
        torch.manual_seed(SEED)
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(conv(fwAD.make_dual(x, t))).tangent
        conv.load_state_dict(state)  # the same running variance for the second pass
        torch.manual_seed(SEED)
        xr = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(conv(xr), xr, u)
        torch.testing.assert_close((tangent * u).sum(), (gx * t).sum())


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_functional_call_under_transforms(device, backend, train):
    """Per-parameter gradients and input Jacobians of a module, as ``torch.func`` users take
    them.  In training the buffers are passed in (they are updated in place, which a transform
    allows only for its inputs, as for ``nn.BatchNorm``) and get the update eager gives."""
    conv = _conv(backend, device).train(train)
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64, device=device)
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def loss(p, b, x):
        return functional_call(conv, (p, b), (x,)).square().sum()

    buffers = {k: v.clone() for k, v in conv.named_buffers()}
    grads = _drawn(grad(loss))(params, buffers, x)
    torch.manual_seed(SEED)
    expected = torch.autograd.grad(conv(x).square().sum(), list(conv.parameters()))
    _assert_same(list(grads.values()), list(expected))
    for name, value in conv.named_buffers():  # eager updated the module's own buffers
        torch.testing.assert_close(buffers[name], value, rtol=0, atol=0)
    if train:
        assert buffers["noise.num_batches_tracked"].item() == 1

    conv.eval()
    buffers = dict(conv.named_buffers())
    out = _drawn(lambda x: functional_call(conv, (params, buffers), (x,)))(x)
    jr = _drawn(jacrev(lambda x: functional_call(conv, (params, buffers), (x,))))(x)
    jf = _drawn(jacfwd(lambda x: functional_call(conv, (params, buffers), (x,))))(x)
    torch.testing.assert_close(jf, jr)
    _, vjp_fn = _drawn(lambda x: vjp(lambda x: functional_call(conv, params, (x,)), x))(x)
    torch.testing.assert_close(vjp_fn(torch.ones_like(out))[0], jr.sum((0, 1, 2, 3)))
