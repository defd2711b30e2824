"""The demo's small CNN."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two stride-2 5x5 convolutions and two linear layers.

    Strided convolutions keep the activation maps small (8x12x12 and 16x4x4 for 28x28 input),
    which is where the noise layers of a stochastic student act.
    """

    def __init__(self, image_size: int = 28, channels: tuple[int, int] = (8, 16),
                 hidden: int = 64, num_classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, stride=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=2)
        side = ((image_size - 5) // 2 + 1 - 5) // 2 + 1
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for SmallCNN (need >= 13)")
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.fc2(self.act(self.fc1(x.flatten(1))))
