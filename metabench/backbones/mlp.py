"""MLP (MAML's sinusoid network: two hidden layers of 40 with ReLU)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    norm = "none"  # no normalisation layers: every prediction is its own

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...] = (40, 40)):
        super().__init__()
        layers, d = [], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
