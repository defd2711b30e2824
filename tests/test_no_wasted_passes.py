"""Backward regenerates the noise (computes ``g``) only when a gradient needs it: alpha requires
grad, or batch statistics with ``stats_grad=True``.  Otherwise ``dx = dy`` and nothing runs."""

import contextlib

import pytest
import torch
from conftest import DEVICES, usable_backends
from torch import nn

import anoise
import anoise.functional as AF
from anoise.backends import launcher

CASES = [(d, b) for d in DEVICES for b in usable_backends(d) if b != "reference"]
LAUNCHERS = ("forward_batch", "forward_scaled", "backward_batch", "noise_dot")


@pytest.fixture
def launches(monkeypatch):
    """``with launches(backend) as counts:`` counts the fused launchers called in the block.

    The cpu backend's kernels are counted by their profiler labels (``anoise_cpu::<name>``):
    its eager autograd node calls them from C++, past any Python wrapper; the other backends'
    by wrapping their Python launchers.
    """

    @contextlib.contextmanager
    def watch(backend):
        counts = {}
        if backend == "cpu":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                yield counts
            for event in p.events():
                prefix, _, name = event.name.partition("::")
                if prefix == "anoise_cpu" and name in LAUNCHERS:
                    counts[name] = counts.get(name, 0) + 1
            return
        module = launcher(backend)
        for name in LAUNCHERS:
            original = getattr(module, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                counts[_name] = counts.get(_name, 0) + 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, counted)
        yield counts

    return watch


# (mode, stats_grad, x needs grad, alpha needs grad) -> the launchers backward may call
BACKWARD = [
    ("running", True, True, False, {}),
    ("running", True, False, True, {"noise_dot": 1}),
    ("running", True, True, True, {"noise_dot": 1}),
    ("batch", False, True, False, {}),
    ("batch", False, False, True, {"noise_dot": 1}),
    ("batch", False, True, True, {"noise_dot": 1}),
    ("batch", True, True, False, {"backward_batch": 1}),
    ("batch", True, False, True, {"noise_dot": 1}),
    ("batch", True, True, True, {"backward_batch": 1}),
]


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("mode, stats_grad, x_grad, alpha_grad, expected", BACKWARD)
def test_backward_launches_only_what_a_gradient_needs(device, backend, mode, stats_grad, x_grad,
                                                      alpha_grad, expected, launches):
    x = torch.randn(4, 3, 5, device=device, requires_grad=x_grad)
    alpha = torch.full((3,), 0.3, device=device, requires_grad=alpha_grad)
    y = AF.adaptive_noise(x, alpha, seed=2, stats_grad=stats_grad, training=mode == "batch",
                          running_var=torch.ones(3, device=device), backend=backend)
    dy = torch.randn_like(y)
    with launches(backend) as counts:
        grads = torch.autograd.grad(y, [t for t in (x, alpha) if t.requires_grad], dy)
    assert counts == expected
    if x_grad and "backward_batch" not in expected:
        assert torch.equal(grads[0], dy)


@pytest.mark.parametrize("device, backend", CASES)
def test_input_gradient_of_a_student_in_eval_regenerates_no_noise(device, backend, launches):
    """What every white-box attack step does: eval, constant alpha, gradient w.r.t. the input."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    student = anoise.to_stochastic(teacher, 0.3, layers=(nn.Conv2d, nn.Linear),
                                   backend=backend).to(device).eval()
    x = torch.randn(5, 3, 5, 5, device=device, requires_grad=True)
    loss = student(x).logsumexp(1).sum()
    with launches(backend) as counts:
        loss.backward()
    assert counts == {} and x.grad is not None
