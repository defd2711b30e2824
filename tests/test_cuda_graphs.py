"""A training step captured in a CUDA graph replays with fresh noise (needs a GPU)."""

import pytest
import torch
from torch import nn

import anoise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _channel_noise_std(y, x):
    return (y - x).transpose(0, 1).reshape(x.shape[1], -1).std(1)


def test_captured_training_step_replays_with_fresh_noise():
    torch.manual_seed(0)
    model = nn.Sequential(anoise.AdaptiveNoiseConv2d(3, 8, 3, padding=1, alpha=0.5), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 4)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    static_x = torch.randn(64, 3, 16, 16, device="cuda")
    static_t = torch.randint(0, 4, (64,), device="cuda")
    captured = {}
    model[0].noise.register_forward_hook(
        lambda m, i, o: captured.update(x=i[0], y=o))

    def step():
        opt.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(static_x), static_t)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up outside the graph, as CUDA graphs require
            step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    conv_x, noisy_y = captured["x"], captured["y"]

    noises, batches_before = [], model[0].noise.num_batches_tracked.item()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.isfinite(static_loss)
        noises.append((noisy_y - conv_x).clone())
        # Eager statistics: per channel, noise std = alpha * sigma_c of this replay's batch.
        sigma = conv_x.transpose(0, 1).reshape(8, -1).var(1, unbiased=False).add(1e-5).sqrt()
        torch.testing.assert_close(_channel_noise_std(noisy_y, conv_x), 0.5 * sigma, rtol=0.05,
                                   atol=0)
    assert not torch.equal(noises[0], noises[1]) and not torch.equal(noises[1], noises[2])
    assert model[0].noise.num_batches_tracked.item() == batches_before + 3
