"""Normalisation layers shared by the backbones, and the switch that makes batch norm exact
under ``torch.func.vmap``."""

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
