"""Coordinate-wise pieces shared by the learned optimisers (Meta Networks' generators, L2L,
Meta-LSTM): the gradient preprocessing of Andrychowicz et al. 2016 and a small LSTM whose
weights every coordinate of the learner shares, each coordinate with its own state."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def log_sign(g: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al.'s preprocessing (their appendix A): (log|g| / p, sign g) where
    |g| >= e^-p, else (-1, e^p g); [..., 2] per coordinate."""
    big = g.abs() >= math.exp(-p)
    scale = torch.where(big, g.abs().clamp_min(1e-30).log() / p, -torch.ones_like(g))
    sign = torch.where(big, g.sign(), math.exp(p) * g)
    return torch.stack([scale, sign], -1)


class CoordinateLSTM(nn.Module):
    """Stacked LSTM cells over a batch of coordinates: features [N, inputs] -> hidden [N, h]
    of the last layer. The state is a list of (h, c) per layer, each [N, h] (None: zeros)."""

    def __init__(self, inputs: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = (inputs, *hidden)
        pairs = zip(sizes, sizes[1:], strict=False)
        self.cells = nn.ModuleList(nn.LSTMCell(a, b) for a, b in pairs)

    def forward(self, x: Tensor, state: list[tuple[Tensor, Tensor]] | None
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        new = []
        for j, cell in enumerate(self.cells):
            h, c = cell(x, None if state is None else state[j])
            new.append((h, c))
            x = h
        return x, new


def flatten(params: dict[str, Tensor], lead: int = 0) -> Tensor:
    """The parameters as one vector per leading index: [*lead dims, coords]."""
    return torch.cat([p.flatten(lead) for p in params.values()], -1)


def unflatten(vector: Tensor, like: dict[str, Tensor], lead: int = 0) -> dict[str, Tensor]:
    """``flatten``'s inverse: ``vector`` cut into ``like``'s shapes."""
    out, i = {}, 0
    for k, p in like.items():
        n = math.prod(p.shape[lead:])
        out[k] = vector[..., i:i + n].reshape(p.shape)
        i += n
    return out
