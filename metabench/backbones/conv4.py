"""Conv-4 (Vinyals et al. 2016; used by MAML and ProtoNet): 4 x [conv3x3, norm, ReLU, maxpool 2].

``pool`` keeps max pooling in the leading blocks only: the Relation Network's Omniglot encoder
pools in the first two of four blocks (64 x 7 x 7 maps on 28 x 28 images)."""

from __future__ import annotations

import torch
from torch import nn

from metabench.backbones.norms import (  # noqa: F401  (re-exported for callers of conv4)
    BatchStatNorm2d,
    explicit_batch_stats,
    make_norm,
)


class Conv4(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], hidden: int = 64, layers: int = 4,
                 norm: str = "batch", pool: int | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"conv4 needs image input (C, H, W), got shape {tuple(input_shape)}")
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int)
                                 or not 0 <= pool <= layers):
            raise ValueError(f"backbone.pool={pool} must be null (every block pools) or an "
                             f"integer from 0 to backbone.layers={layers}")
        pooled = layers if pool is None else pool
        blocks, c = [], input_shape[0]
        for i in range(layers):
            # Identity keeps the module indices (state_dict keys) the same for every ``pool``
            blocks += [nn.Conv2d(c, hidden, 3, padding=1), make_norm(norm, hidden), nn.ReLU(),
                       nn.MaxPool2d(2) if i < pooled else nn.Identity()]
            c = hidden
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            self.map_shape = tuple(self.features(torch.zeros(2, *input_shape)).shape[1:])
        self.out_dim = int(torch.tensor(self.map_shape).prod())

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)
