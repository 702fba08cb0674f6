"""Conv-4 (Vinyals et al. 2016; used by MAML and ProtoNet): 4 x [conv3x3, norm, ReLU, maxpool 2]."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_explicit_stats = contextvars.ContextVar("explicit_batch_stats", default=False)


@contextlib.contextmanager
def explicit_batch_stats() -> Iterator[None]:
    """Inside this block BatchStatNorm2d computes mean/var explicitly: needed under
    ``torch.func.vmap``, where the fused kernel's second-order gradients are wrong."""
    token = _explicit_stats.set(True)
    try:
        yield
    finally:
        _explicit_stats.reset(token)


class BatchStatNorm2d(nn.Module):
    """Batch norm with the statistics of the current call, in train and eval mode alike (no
    running averages): numerically ``nn.BatchNorm2d(track_running_stats=False)``, but written
    from mean/var so that ``torch.func.vmap`` of second-order ``grad`` through it is exact
    (the fused batch-norm kernel gives wrong meta-gradients there; pytorch/functorch#534)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _explicit_stats.get():  # the fused kernel: exact outside vmap, and faster
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True,
                                eps=self.eps)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return x_hat * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """``batch``: batch statistics of the current call, at train and test alike (no running
    averages), so each task is normalised by itself: MAML's transductive protocol, applied to
    every algorithm. ``none``: identity."""
    if kind == "batch":
        return BatchStatNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"backbone.norm={kind} is not one of: batch, none")


class Conv4(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], hidden: int = 64, layers: int = 4,
                 norm: str = "batch"):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"conv4 needs image input (C, H, W), got shape {tuple(input_shape)}")
        blocks, c = [], input_shape[0]
        for _ in range(layers):
            blocks += [nn.Conv2d(c, hidden, 3, padding=1), make_norm(norm, hidden), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = hidden
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            self.map_shape = tuple(self.features(torch.zeros(2, *input_shape)).shape[1:])
        self.out_dim = int(torch.tensor(self.map_shape).prod())

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)
