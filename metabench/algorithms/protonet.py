"""Prototypical Networks (Snell et al. 2017): a query's logits are minus its squared Euclidean
distances to the class prototypes, the means of each class's support embeddings."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metabench.algorithms.metric import MetricLearner


def prototypes(z_support: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """Class means [T, ways, D] of support embeddings [T, n, D] with labels [T, n]."""
    onehot = F.one_hot(y_support, ways).to(z_support.dtype)  # [T, n, ways]
    sums = onehot.transpose(1, 2) @ z_support
    return sums / onehot.sum(1)[..., None]


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """[T, n, D] x [T, m, D] -> [T, n, m] squared Euclidean distances."""
    return ((a[:, :, None] - b[:, None]) ** 2).sum(-1)


class ProtoNet(MetricLearner):
    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        return -squared_distances(z_query, prototypes(z_support, y_support, ways))
