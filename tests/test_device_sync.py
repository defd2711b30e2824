"""No host-device synchronisation or host-to-device copy in a forward pass: a tensor alpha is
checked when it is set (modules) or on the device (functional), and an explicit seed is written
on the device, so a forward can be captured in a CUDA graph.  Also: the backends agree where
``dx = dy`` exactly (``coef == 0``) even with Inf/NaN in ``x``."""

import pytest
import torch
from conftest import DEVICES, usable_backends
from torch.utils._python_dispatch import TorchDispatchMode

import anoise
import anoise.functional as AF

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="host-device synchronisation and CUDA graphs need a GPU")
CUDA_BACKENDS = usable_backends("cuda") if torch.cuda.is_available() else []


def _layers(device, backend):
    C = 3
    return [
        anoise.AdaptiveNoise(C, 0.2, per_channel_alpha=True, backend=backend),
        anoise.AdaptiveNoise(C, 0.2, learnable_alpha=True, backend=backend),
        anoise.AdaptiveNoise(C, 0.2, learnable_alpha=True, per_channel_alpha=True,
                             eval_stats="batch", backend=backend),
    ]


@needs_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_forward_does_not_synchronise_with_a_tensor_alpha(backend):
    x = torch.randn(8, 3, 5, 5, device="cuda", requires_grad=True)
    layers = [layer.cuda() for layer in _layers("cuda", backend)]
    alpha = torch.tensor([0.1, 0.2, 0.3], device="cuda")
    for layer in layers:  # warm up: builds, autotuning, lazy initialisation
        layer(x)
    AF.adaptive_noise(x, alpha, seed=3, backend=backend)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for train in (True, False):
            for layer in layers:
                layer.train(train)(x)
        AF.adaptive_noise(x, alpha, seed=3, backend=backend)
        AF.adaptive_noise(x, alpha[0], running_var=torch.ones(3, device="cuda"), training=False,
                          backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", usable_backends("cpu"))
def test_module_forward_reads_no_value_of_alpha(backend, monkeypatch):
    """CPU-side check: a host read of any tensor (bool, item, float) raises during forward."""
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    layers = _layers("cpu", backend)

    def host_read(*_):
        raise AssertionError("a tensor was read on the host during forward")

    for train in (True, False):
        for layer in layers:
            layer.train(train)
            with monkeypatch.context() as m:
                for name in ("__bool__", "item", "__float__", "tolist"):
                    m.setattr(torch.Tensor, name, host_read)
                layer(x)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", [b for b in usable_backends("cpu") if b != "reference"])
def test_explicit_seed_is_not_copied_from_the_host(backend):
    """CPU-side check: the seed tensor is not built from host data (on a GPU that is a
    host-to-device copy, forbidden while capturing a CUDA graph)."""
    x = torch.randn(4, 3, 5)
    with _Ops() as log:
        AF.adaptive_noise(x, 0.2, seed=2**64 - 5, backend=backend)
    assert not [op for op in log.ops if "lift_fresh" in op or "_to_copy" in op], log.ops


@needs_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "running"])
def test_explicit_seed_in_a_cuda_graph(backend, mode):
    static_x = torch.randn(8, 3, 5, 5, device="cuda")
    rv = torch.rand(3, device="cuda") + 0.5

    def f():
        return AF.adaptive_noise(static_x, 0.4, seed=2**64 - 5, backend=backend,
                                 training=mode == "batch", running_var=rv)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        f()  # warm up outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = f()
    rv0 = rv.clone()
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        rv.copy_(rv0)
        graph.replay()
        torch.cuda.synchronize()
        rv.copy_(rv0)
        torch.testing.assert_close(static_y, f(), rtol=0, atol=0)


@needs_cuda
@pytest.mark.parametrize("backend", [b for b in CUDA_BACKENDS if b != "reference"])
def test_a_seed_on_another_device_is_a_clear_error(backend):
    x = torch.randn(4, 3, 5, device="cuda")
    alpha = torch.full((3,), 0.2, device="cuda")
    with pytest.raises(ValueError, match="seed"):
        torch.ops.anoise.forward_batch(x, alpha, torch.tensor([3]), 1e-5, True, backend)


@pytest.mark.parametrize("device, backend", [
    (d, b) for d in DEVICES for b in usable_backends(d) if b != "reference"])
def test_zero_coefficient_gives_dy_exactly_with_inf_and_nan_in_x(device, backend):
    """Where ``coef_c = alpha_c G_c / (M sigma_c)`` is 0, ``dx = dy`` exactly, whatever ``x``
    holds: every backend returns the same gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, generator=g).to(device)
    x[0, 1, 0], x[1, 1, 2], x[2, 1, 3] = float("inf"), float("-inf"), float("nan")
    dy = torch.randn(4, 3, 6, generator=g).to(device)
    alpha = torch.tensor([0.3, 0.0, 0.5], device=device)
    mean, sigma = torch.zeros(3, device=device), torch.ones(3, device=device)
    dx, _ = torch.ops.anoise.backward_batch(dy, x, alpha, mean, sigma,
                                            torch.tensor([9], device=device), backend)
    assert torch.equal(dx[:, 1], dy[:, 1])
    assert torch.isfinite(dx[:, [0, 2]]).all()
