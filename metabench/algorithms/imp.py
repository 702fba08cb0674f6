"""Infinite Mixture Prototypes (Allen, Shelhamer, Shin & Tenenbaum, ICML 2019): each class is a
set of clusters. A class starts with one cluster, its support mean; a support point whose
squared distance to every cluster of its class exceeds lambda opens a cluster at itself
(lambda = -2 sigma log(alpha) + d sigma log(1 + rho / sigma), rho the prototypes' variance,
sigma the learned cluster variance); the support points are then softly reassigned to their
class's clusters, the means recomputed and near-empty clusters dropped. A query's logit for a
cluster is its Gaussian log-density; a class scores by its closest cluster, so cross-entropy
over those scores is the official code's loss (k-r-allen/imp, fewshot/models/imp.py: the
target is the true class's closest cluster, every class's other clusters masked out).

As the code: one clustering pass, lambda and the reassignment weights without gradient,
gradients reach the embedding through the recomputed means. Lambda -> infinity is ProtoNet with
Gaussian logits; lambda -> 0 (small sigma) is nearest neighbour."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.metric import MetricLearner, class_ranks
from metabench.algorithms.protonet import prototypes

EMPTY = 1e-3  # the code's threshold on a cluster's total assignment weight


class IMP(MetricLearner):
    any_ways = True

    def __init__(self, backbone: nn.Module, kind: str, ways: int, alpha: float = 0.1,
                 sigma_init: float = 5.0, learn_sigma: bool = True, lam: float | None = None):
        super().__init__(backbone, kind, ways)
        require("a positive number", alpha=alpha, sigma_init=sigma_init)
        require("true or false", learn_sigma=learn_sigma)
        if lam is not None:
            require("a non-negative number", lam=lam)
        self.alpha = float(alpha)
        self.lam = None if lam is None else float(lam)  # null: the paper's estimate per task
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma_init)),
                                      requires_grad=bool(learn_sigma))

    def threshold(self, protos: Tensor) -> Tensor:
        """Lambda per task [T] from the initial prototypes [T, W, D] (no gradient)."""
        if self.lam is not None:
            return protos.new_full(protos.shape[:1], self.lam)
        sigma = self.log_sigma.detach().exp()
        rho = protos.detach().var(dim=1).mean(-1).nan_to_num(0.0)  # one class: no spread
        d = protos.shape[-1]
        return -2 * sigma * math.log(self.alpha) + d * sigma * torch.log1p(rho / sigma)

    def clusters(self, zs: Tensor, ys: Tensor, ways: int) -> tuple[Tensor, Tensor]:
        """Cluster means [T, W, 1 + K, D] and which exist [T, W, 1 + K]: slot 0 holds a class's
        mean, slot 1 + r the cluster its r-th support point opened (K: the most shots)."""
        t, n, d = zs.shape
        sigma = self.log_sigma.detach().exp()
        means = prototypes(zs, ys, ways)
        lam = self.threshold(means)
        rank = class_ranks(ys, ways)
        k = int(rank.max()) + 1
        task = torch.arange(t, device=zs.device)[:, None]
        point = torch.full((t, ways, k), -1, dtype=torch.long, device=zs.device)
        point[task, ys, rank] = torch.arange(n, device=zs.device).expand(t, -1)
        z = zs.detach()
        centers = torch.cat([means.detach()[:, :, None], z.new_zeros(t, ways, k, d)], 2)
        active = torch.zeros(t, ways, 1 + k, dtype=torch.bool, device=zs.device)
        active[:, :, 0] = True
        for r in range(k):  # a class's points in support order, all classes at once
            has = point[:, :, r] >= 0
            x = z[task, point[:, :, r].clamp_min(0)]  # [T, W, D]
            dist = ((centers - x[:, :, None]) ** 2).sum(-1).masked_fill(~active, math.inf)
            opens = has & (dist.min(-1).values > lam[:, None])
            centers[:, :, 1 + r] = torch.where(opens[..., None], x, centers[:, :, 1 + r])
            active[:, :, 1 + r] = opens
        # soft reassignment of each support point over its own class's clusters (no gradient)
        own = active[task, ys]  # [T, n, 1 + K]
        dist = ((z[:, :, None] - centers[task, ys]) ** 2).sum(-1)
        prob = (-dist / (2 * sigma)).masked_fill(~own, -math.inf).softmax(-1)
        weight = F.one_hot(ys, ways).to(zs.dtype)[..., None] * prob[:, :, None]  # [T,n,W,1+K]
        total = weight.sum(1)
        sums = torch.einsum("tnws,tnd->twsd", weight, zs)
        active = active & (total > EMPTY)
        return sums / total.clamp_min(EMPTY)[..., None], active

    def cluster_logits(self, centers: Tensor, active: Tensor, zq: Tensor) -> Tensor:
        """Gaussian log-densities [T, m, W, 1 + K] of the queries under every cluster."""
        sigma = self.log_sigma.exp()
        d2 = ((zq[:, :, None, None] - centers[:, None]) ** 2).sum(-1)
        norm = 0.5 * zq.shape[-1] * (self.log_sigma + math.log(2 * math.pi))
        return (-d2 / (2 * sigma) - norm).masked_fill(~active[:, None], -math.inf)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        centers, active = self.clusters(z_support, y_support, ways)
        return self.cluster_logits(centers, active, z_query).max(-1).values
