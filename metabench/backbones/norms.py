"""Normalisation layers shared by the backbones: the evaluation protocol each one implies, and
the switch that makes batch norm exact under ``torch.func.vmap``.

``backbone.norm`` (``make_norm``):

- ``batch``: the statistics of the current call, at train and test alike (no running
  averages). A task's support and queries go through as one batch, so a query's prediction
  depends on the other queries of its episode: transductive (MAML's reference code).
- ``running``: standard batch norm. Training normalises by the call's statistics and updates
  running averages (``momentum``); evaluation (``learner.eval()``) normalises by the running
  averages and leaves them unchanged: each query on its own (ProtoNet's and the Baseline's
  reference code). The averages are buffers, so checkpoints carry them.
- ``support``: the statistics of the call's first ``n`` rows, the support set, applied to every
  row (``support_rows(n)``; a call outside that block is all support, e.g. an inner-loop step):
  non-transductive and stateless. A layer must see at least ``SUPPORT_MIN_COUNT`` support
  values per channel (images x positions), else the variance is too noisy to normalise by.
- ``none``: identity.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "running", "support", "none")
SUPPORT_MIN_COUNT = 16  # support values per channel a support-statistics layer needs at least

_explicit_stats = contextvars.ContextVar("explicit_batch_stats", default=False)
_support_rows = contextvars.ContextVar("support_rows", default=None)


@contextlib.contextmanager
def explicit_batch_stats() -> Iterator[None]:
    """Inside this block BatchStatNorm2d computes mean/var explicitly: needed under
    ``torch.func.vmap``, where the fused kernel's second-order gradients are wrong."""
    token = _explicit_stats.set(True)
    try:
        yield
    finally:
        _explicit_stats.reset(token)


@contextlib.contextmanager
def support_rows(n: int) -> Iterator[None]:
    """Inside this block a ``support`` norm takes its statistics from the first ``n`` rows of
    each batch (the support set a learner put before its queries)."""
    token = _support_rows.set(n)
    try:
        yield
    finally:
        _support_rows.reset(token)


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

    def normalize(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``x`` normalised per channel by the mean and (biased) variance of ``ref``."""
        mean = ref.mean(dim=(0, 2, 3), keepdim=True)
        var = ref.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return x_hat * self.weight[None, :, None, None] + self.bias[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _explicit_stats.get():  # the fused kernel: exact outside vmap, and faster
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True,
                                eps=self.eps)
        return self.normalize(x, x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SupportNorm2d(BatchStatNorm2d):
    """Batch norm whose statistics come from the support rows only (``support_rows``), the
    same for every query: exact under vmap and second order (explicit mean/var)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = _support_rows.get()
        ref = x if n is None else x[:n]
        count = ref.shape[0] * ref.shape[2] * ref.shape[3]
        if count < SUPPORT_MIN_COUNT:
            raise ValueError(
                f"backbone.norm=support: a layer sees {count} support values per channel "
                f"({ref.shape[0]} images x {ref.shape[2]}x{ref.shape[3]} positions), fewer "
                f"than the {SUPPORT_MIN_COUNT} its statistics need; use more ways or shots, "
                "or backbone.norm=running")
        return self.normalize(x, ref)


class RunningNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with running averages (``running``); refused under vmap, where the
    in-place update of the averages cannot happen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _explicit_stats.get():
            raise ValueError("backbone.norm=running cannot run under vmap (its running "
                             "averages are updated in place); use task_batching=loop")
        return super().forward(x)


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer of ``backbone.norm=kind`` (see the module docstring)."""
    layers = {"batch": BatchStatNorm2d, "running": RunningNorm2d, "support": SupportNorm2d}
    return nn.Identity() if check_norm(kind) == "none" else layers[kind](channels)


def check_norm(kind: str) -> str:
    """``kind`` if it is a known mode, else the one-line error."""
    if kind not in NORMS:
        raise ValueError(f"backbone.norm={kind} is not one of: {', '.join(NORMS)}")
    return kind


def query_outputs(fn, xs: torch.Tensor, xq: torch.Tensor, norm: str) -> torch.Tensor:
    """``fn(xq)``, with ``norm=support`` normalised by the support set ``xs``: the support goes
    first in one batch and only the query rows are returned."""
    if norm != "support":
        return fn(xq)
    n = xs.shape[0]
    with support_rows(n):
        return fn(torch.cat([xs, xq]))[n:]
