"""Conv-4 (Vinyals et al. 2016; used by MAML and ProtoNet): 4 x [conv3x3, norm, ReLU, maxpool 2].

``pool`` keeps downsampling in the leading blocks only: the Relation Network's Omniglot encoder
pools in the first two of four blocks (64 x 7 x 7 maps on 28 x 28 images).

``downsample=stride`` is the Omniglot network of the MAML and Reptile reference code: each
downsampling block convolves with stride 2 instead of max pooling (28 -> 14 -> 7 -> 4 -> 2),
about a quarter of the pooled network's arithmetic. ``readout=mean`` averages the last map
over its positions (MAML's Omniglot code: 64 features), ``flatten`` keeps every position.

Each pooling block applies max pooling before the ReLU: the two commute (ReLU is monotone), so
values and gradients are those of [conv, norm, ReLU, maxpool], with the ReLU on a quarter of
the elements and no pooling kernel on the negative half."""

from __future__ import annotations

import torch
from torch import nn

from metabench.backbones.norms import (  # noqa: F401  (re-exported for callers of conv4)
    SUPPORT_MIN_COUNT,
    BatchStatNorm2d,
    check_norm,
    explicit_batch_stats,
    make_norm,
)

DOWNSAMPLE = ("pool", "stride")
READOUT = ("flatten", "mean")


class Conv4(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], hidden: int = 64, layers: int = 4,
                 norm: str = "batch", pool: int | None = None, downsample: str = "pool",
                 readout: str = "flatten"):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"conv4 needs image input (C, H, W), got shape {tuple(input_shape)}")
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int)
                                 or not 0 <= pool <= layers):
            raise ValueError(f"backbone.pool={pool} must be null (every block pools) or an "
                             f"integer from 0 to backbone.layers={layers}")
        if downsample not in DOWNSAMPLE:
            raise ValueError(f"backbone.downsample={downsample} is not one of: "
                             f"{', '.join(DOWNSAMPLE)}")
        if readout not in READOUT:
            raise ValueError(f"backbone.readout={readout} is not one of: {', '.join(READOUT)}")
        self.norm = check_norm(norm)
        pooled = layers if pool is None else pool
        blocks, c = [], input_shape[0]
        for i in range(layers):
            # module indices (state_dict keys) are the same for every pool/downsample choice:
            # conv 4i, norm 4i+1, then pooling (or Identity) and the ReLU
            stride = 2 if downsample == "stride" and i < pooled else 1
            pooling = nn.MaxPool2d(2) if downsample == "pool" and i < pooled else nn.Identity()
            blocks += [nn.Conv2d(c, hidden, 3, stride=stride, padding=1),
                       make_norm(norm, hidden), pooling, nn.ReLU()]
            c = hidden
        self.features = nn.Sequential(*blocks)
        self.readout = readout
        with torch.no_grad():
            # enough rows for a support norm's statistics at any map size
            probe = torch.zeros(SUPPORT_MIN_COUNT, *input_shape)
            self.map_shape = tuple(self.features(probe).shape[1:])
        self.out_dim = (hidden if readout == "mean"
                        else int(torch.tensor(self.map_shape).prod()))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return maps.mean(dim=(2, 3)) if self.readout == "mean" else maps.flatten(1)
