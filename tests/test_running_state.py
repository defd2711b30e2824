"""Running statistics: a batch that is not used is not counted, and a call that fails leaves
``running_var`` and ``num_batches_tracked`` as they were (nothing is half-updated)."""

import warnings

import pytest
import torch
from conftest import usable_backends
from torch import nn

import anoise
import anoise.functional as AF

BACKENDS = usable_backends("cpu")


def _state(*tensors):
    return [t.clone() for t in tensors]


def _assert_unchanged(before, *tensors):
    for b, t in zip(before, tensors, strict=True):
        assert t.is_meta or torch.equal(b, t)  # a meta tensor holds no values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [None, 0.1])
def test_one_value_batch_is_not_counted(backend, momentum):
    """N*S == 1 gives no variance: BatchNorm refuses such a batch; we skip it, uncounted, so the
    cumulative average (momentum=None, what calibrate uses) stays the average of real batches."""
    rv, nbt = torch.ones(3), torch.tensor(0)
    bn = nn.BatchNorm1d(3, momentum=momentum, affine=False)
    g = torch.Generator().manual_seed(0)
    for n in (8, 1, 5, 1):
        x = torch.randn(n, 3, generator=g) * 3
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            AF.adaptive_noise(x, 0.2, running_var=rv, num_batches_tracked=nbt, momentum=momentum,
                              backend=backend)
        if n > 1:
            bn(x)
    assert nbt.item() == bn.num_batches_tracked.item() == 2
    torch.testing.assert_close(rv, bn.running_var)


def test_calibrate_ignores_one_value_batches():
    layer = nn.Sequential(anoise.AdaptiveNoiseLinear(4, 3, alpha=0.1))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 4, generator=g), torch.randn(1, 4, generator=g),
               torch.randn(16, 4, generator=g)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        anoise.calibrate(layer, batches)
    with torch.no_grad():
        outs = [nn.Linear.forward(layer[0], b) for b in batches if b.shape[0] > 1]
    expected = torch.stack([o.var(0) for o in outs]).mean(0)
    torch.testing.assert_close(layer[0].noise.running_var, expected)
    assert layer[0].noise.num_batches_tracked.item() == 2


def _bad_buffers():
    with torch.inference_mode():
        inference_rv = torch.ones(3)
    return [
        (dict(running_var=torch.ones(1).expand(3)), ValueError, "running_var.*overlap"),
        (dict(running_var=inference_rv), ValueError, "running_var.*inference"),
        (dict(num_batches_tracked=torch.zeros(2, dtype=torch.long)), ValueError,
         "num_batches_tracked must hold one value"),
        (dict(num_batches_tracked=torch.zeros((), dtype=torch.float32)), TypeError,
         "num_batches_tracked must be an integer tensor"),
        (dict(num_batches_tracked=torch.zeros((), dtype=torch.long, device="meta")), ValueError,
         "num_batches_tracked is on meta"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [None, 0.1])
@pytest.mark.parametrize("case", range(len(_bad_buffers())))
def test_bad_buffers_raise_and_change_nothing(backend, momentum, case):
    kwargs, err, match = _bad_buffers()[case]
    rv = kwargs.setdefault("running_var", torch.full((3,), 2.0))
    nbt = kwargs.setdefault("num_batches_tracked", torch.tensor(4))
    before = _state(rv, nbt)
    with pytest.raises(err, match=match):
        AF.adaptive_noise(torch.randn(8, 3, 4), 0.1, momentum=momentum, backend=backend,
                          **kwargs)
    _assert_unchanged(before, rv, nbt)


def _student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3))
    student = anoise.to_stochastic(teacher, 0.1)
    anoise.calibrate(student, [torch.randn(8, 3, 9, 9) for _ in range(2)])
    return student


def _noise_state(model):
    return [t.clone() for layer in anoise.noise_layers(model)
            for t in (layer.running_var, layer.num_batches_tracked)]


def _loader_that_raises():
    yield torch.randn(8, 3, 9, 9)
    raise OSError("disk gone")


@pytest.mark.parametrize("batches, err", [
    ([], ValueError),
    (_loader_that_raises, OSError),
    ([torch.randn(8, 3, 9, 9), torch.randn(8, 2, 9, 9)], RuntimeError),  # conv rejects 2 channels
    ([torch.randn(8, 3, 9, 9), torch.randn(8, 3, 2, 2)], RuntimeError),  # too small for the conv
])
def test_failed_calibration_leaves_the_statistics_untouched(batches, err):
    student = _student()
    student.train()
    before = _noise_state(student)
    buffers = [id(t) for layer in anoise.noise_layers(student) for t in layer.buffers()]
    with pytest.raises(err):
        anoise.calibrate(student, batches() if callable(batches) else batches)
    for b, t in zip(before, _noise_state(student), strict=True):
        assert torch.equal(b, t)
    assert all(layer.momentum == 0.1 for layer in anoise.noise_layers(student))
    assert all(m.training for m in student.modules())
    assert buffers == [id(t) for layer in anoise.noise_layers(student) for t in layer.buffers()]


def test_calibration_commits_into_the_same_buffers():
    student = _student()
    buffers = [layer.running_var for layer in anoise.noise_layers(student)]
    before = [b.clone() for b in buffers]
    anoise.calibrate(student, [torch.randn(8, 3, 9, 9) * 5])
    for layer, buf, old in zip(anoise.noise_layers(student), buffers, before, strict=True):
        assert layer.running_var is buf and not torch.equal(buf, old)
        assert layer.num_batches_tracked.item() == 1
