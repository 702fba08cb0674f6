"""ResNet-12 (TADAM, Oreshkin et al. 2018; MetaOptNet, Lee et al. 2019): 4 residual blocks of
3 x [conv3x3, norm, LeakyReLU 0.1] with a 1x1 conv + norm shortcut, then max-pool 2; the
embedding is the global average of the last map (640-d for the standard 64-160-320-640).

The block adds the shortcut before its last activation (as MetaOptNet's code does):
``out = maxpool(lrelu(norm3(conv3(...)) + norm(conv1x1(x))))``. Convolutions have no bias
(the norm's shift replaces it). DropBlock / dropout, which MetaOptNet adds for regularisation,
is not included."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metabench.backbones.norms import check_norm, make_norm

SLOPE = 0.1


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """3 x [conv3x3, norm, LeakyReLU] with the shortcut added before the last LeakyReLU, then
    max-pool 2 (halves height and width, rounding down)."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        super().__init__()
        self.conv1, self.norm1 = conv3x3(c_in, c_out), make_norm(norm, c_out)
        self.conv2, self.norm2 = conv3x3(c_out, c_out), make_norm(norm, c_out)
        self.conv3, self.norm3 = conv3x3(c_out, c_out), make_norm(norm, c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False),
                                      make_norm(norm, c_out))
        self.act = nn.LeakyReLU(SLOPE)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


class ResNet12(nn.Module):
    def __init__(self, input_shape: tuple[int, ...],
                 channels: Sequence[int] = (64, 160, 320, 640), norm: str = "batch"):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"resnet12 needs image input (C, H, W), got shape "
                             f"{tuple(input_shape)}")
        self.norm = check_norm(norm)
        channels = list(channels)
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0
                                for c in channels):
            raise ValueError(f"backbone.channels={channels} must be a non-empty list of "
                             "positive integers")
        c, h, w = input_shape
        if min(h, w) < 2 ** len(channels):
            raise ValueError(f"resnet12 with {len(channels)} blocks halves the image "
                             f"{len(channels)} times: {h}x{w} input is too small "
                             f"(needs at least {2 ** len(channels)} pixels a side)")
        blocks = []
        for c_out in channels:
            blocks.append(ResidualBlock(c, c_out, norm))
            c, h, w = c_out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.map_shape = (c, h, w)
        self.out_dim = c

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(-2, -1))
