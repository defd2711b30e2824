"""Mixed precision: the modules inside torch.autocast, and GradScaler training steps."""

import pytest
import torch
from conftest import DEVICES
from torch import nn

import anoise


def _student(device):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                            nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    return anoise.to_stochastic(teacher, 0.5, learnable_alpha=True).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_backward(device, dtype):
    model = _student(device)
    x = torch.randn(16, 3, 8, 8, device=device)
    seen = []
    model[0].noise.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    with torch.autocast(device, dtype=dtype):
        loss = model(x).float().pow(2).mean()
    loss.backward()
    x_in, y = seen[0]
    assert x_in.dtype == dtype and y.dtype == dtype  # the layer runs in the autocast dtype
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model[0].noise.alpha.grad.dtype == torch.float32  # parameters stay float32
    # The injected noise still has std alpha * sigma_c per channel (low-precision tolerance).
    noise = (y.float() - x_in.float()).transpose(0, 1).reshape(8, -1)
    sigma = x_in.float().transpose(0, 1).reshape(8, -1).var(1, unbiased=False).add(1e-5).sqrt()
    torch.testing.assert_close(noise.std(1), 0.5 * sigma, rtol=0.15, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_training_steps(device):
    model = _student(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler(device)
    x, target = torch.randn(32, 3, 8, 8, device=device), torch.randint(0, 4, (32,), device=device)
    before = model[0].weight.detach().clone()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(model[0].weight, before)
    assert model[0].noise.running_var.dtype == torch.float32
