"""Metric-based learners: embed support and query once per task, then score queries by a
comparison with the support set that each subclass defines in ``logits``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metabench.algorithms.base import MetaLearner
from metabench.backbones.norms import support_rows
from metabench.episodes import Episode


def class_ranks(y: Tensor, ways: int) -> Tensor:
    """Each example's position among its class's examples [T, n] (0 for the first)."""
    onehot = F.one_hot(y, ways)
    return ((onehot.cumsum(1) - onehot) * onehot).sum(-1)


class MetricLearner(MetaLearner):
    kinds = ("classification",)

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Support and query embeddings [T, n, D], each task through the backbone as one batch,
        support first: ``norm=batch`` normalises by the task's statistics, ``support`` by its
        support rows', ``running`` by the running averages in evaluation."""
        n = episode.x_support.shape[1]
        with support_rows(n):
            z = [self.backbone(torch.cat([episode.x_support[t], episode.x_query[t]]))
                 for t in range(episode.tasks)]
        return torch.stack([e[:n] for e in z]), torch.stack([e[n:] for e in z])

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor,
               ways: int) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict(self, episode: Episode) -> Tensor:
        zs, zq = self.embed(episode)
        return self.logits(zs, episode.y_support, zq, episode.ways)
