"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML Deep Learning workshop 2015): twin
encoders with shared weights; a pair's "same class" logit is sum_j alpha_j |h_j(x1) - h_j(x2)|
+ b (the paper's sigmoid of it is the probability); trained on same/different pairs with
binary cross-entropy; one-shot classification by the best-scoring exemplar.

Pairs come from the sampled episodes (metabench/data/pairs.py): every query against every
support example, positives and negatives weighted equally as the paper's 50/50 pair sampling;
with ``data.episode_classes=within_alphabet`` every negative pair shares an alphabet. Each
image is embedded once per episode. A class's logit at test is its best support example's
pair logit. ``features > 0`` adds the paper's sigmoid fully connected layer on top of the
backbone (4096 units there; 0: the backbone's own embedding, as in the Omniglot presets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.metric import MetricLearner
from metabench.data.pairs import pair_targets, pair_weights
from metabench.episodes import Episode


class Siamese(MetricLearner):
    any_ways = True

    def __init__(self, backbone: nn.Module, kind: str, ways: int, features: int = 0,
                 alpha_init: float = -0.5, bias_init: float = 5.0):
        super().__init__(backbone, kind, ways)
        require("a non-negative integer", features=features)
        d = int(backbone.out_dim)
        self.project = (nn.Sequential(nn.Linear(d, features), nn.Sigmoid()) if features
                        else nn.Identity())
        # alpha < 0 at the start: a larger distance lowers the "same" logit (the paper draws
        # these weights at random and lets training find the sign)
        self.alpha = nn.Parameter(torch.full((features or d,), float(alpha_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def pair_logits(self, h1: Tensor, h2: Tensor) -> Tensor:
        """[T, m, D] x [T, n, D] -> [T, m, n] "same class" logits of every pair (symmetric)."""
        return ((h1[:, :, None] - h2[:, None]).abs() * self.alpha).sum(-1) + self.bias

    def embed_pairs(self, episode: Episode) -> Tensor:
        zs, zq = self.embed(episode)
        return self.pair_logits(self.project(zq), self.project(zs))

    def class_logits(self, pairs: Tensor, y_support: Tensor, ways: int) -> Tensor:
        """Each class's best support example: [T, m, n] pair logits -> [T, m, ways]."""
        member = F.one_hot(y_support, ways).bool()[:, None]  # [T, 1, n, ways]
        masked = pairs[..., None].masked_fill(~member, float("-inf"))
        return masked.max(2).values

    def predict(self, episode: Episode) -> Tensor:
        return self.class_logits(self.embed_pairs(episode), episode.y_support, episode.ways)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.training:
            return self.scored(self.predict(episode), episode)
        pairs = self.embed_pairs(episode)
        same = pair_targets(episode.y_query, episode.y_support)
        bce = F.binary_cross_entropy_with_logits(pairs, same.to(pairs.dtype), reduction="none")
        loss = (bce * pair_weights(same)).sum((1, 2))  # per task
        logits = self.class_logits(pairs.detach(), episode.y_support, episode.ways)
        acc = (logits.argmax(-1) == episode.y_query).float().mean(1)
        return loss.mean(), {"loss": loss.detach(), "acc": acc}
