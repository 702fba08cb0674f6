"""MLP (MAML's sinusoid network: two hidden layers of 40 with ReLU; ALPaCA's: 128-128-32 tanh).
Every hidden layer, the last one too, is followed by the activation."""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    norm = "none"  # no normalisation layers: every prediction is its own

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...] = (40, 40),
                 activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"backbone.activation={activation} is not one of: "
                             f"{', '.join(ACTIVATIONS)}")
        layers, d = [], math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
            d = h
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))
