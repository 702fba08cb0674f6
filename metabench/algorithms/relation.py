"""Relation Network (Sung et al. 2018): a learned relation module scores each (query, class) pair
from the channel concatenation of the query's feature map and the class's feature map (the sum
of its support maps), a sigmoid score in [0, 1] regressed onto the one-hot target with MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.base import MetaLearner
from metabench.backbones.norms import make_norm
from metabench.episodes import Episode


def class_maps(maps: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """Sum over shots of the support feature maps: [n, C, H, W] -> [ways, C, H, W]."""
    onehot = F.one_hot(y_support, ways).to(maps.dtype)  # [n, ways]
    return (onehot.T @ maps.flatten(1)).view(ways, *maps.shape[1:])


class RelationModule(nn.Module):
    """2 x [conv3x3, norm, ReLU, maxpool 2] on a pair's 2C-channel map, then FC -> hidden, ReLU,
    FC -> 1, sigmoid. Convolutions are padded and a block skips its pool on maps already
    smaller than 2 x 2, so any map size works; the FC input size follows from ``map_shape``."""

    def __init__(self, map_shape: tuple[int, int, int], channels: int = 64, hidden: int = 8,
                 norm: str = "batch"):
        super().__init__()
        c, h, w = map_shape
        self.in_channels = c
        blocks = []
        for i in range(2):
            pool = min(h, w) >= 2
            blocks += [nn.Conv2d(2 * c if i == 0 else channels, channels, 3, padding=1),
                       make_norm(norm, channels), nn.ReLU(),
                       nn.MaxPool2d(2) if pool else nn.Identity()]
            h, w = (h // 2, w // 2) if pool else (h, w)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Linear(channels * h * w, hidden), nn.ReLU(),
                                nn.Linear(hidden, 1))

    def head(self, first: Tensor) -> Tensor:
        """Scores [P] from the first convolution's output [P, channels, H, W]."""
        return torch.sigmoid(self.fc(self.blocks[1:](first).flatten(1))).squeeze(-1)

    def forward(self, pairs: Tensor) -> Tensor:
        """Scores [P] in [0, 1] of concatenated pair maps [P, 2C, H, W]."""
        return self.head(self.blocks[0](pairs))

    def pair_scores(self, query_maps: Tensor, class_maps: Tensor) -> Tensor:
        """Scores [m, ways] of every (query, class) pair, equal to ``forward`` on each pair's
        concatenation: the first convolution is linear, so it is applied to the m query maps
        and the ways class maps apart and summed per pair, not to m * ways concatenations."""
        conv = self.blocks[0]
        c = self.in_channels
        q = F.conv2d(query_maps, conv.weight[:, :c], conv.bias, padding=conv.padding)
        k = F.conv2d(class_maps, conv.weight[:, c:], None, padding=conv.padding)
        m, ways = q.shape[0], k.shape[0]
        first = (q[:, None] + k[None]).flatten(0, 1)  # pair (i, j) at row i * ways + j
        return self.head(first).view(m, ways)


class RelationNet(MetaLearner):
    kinds = ("classification",)
    # the relation module normalises (query, class) pairs: no support-only statistics exist
    norms = ("batch", "running", "none")

    def __init__(self, backbone: nn.Module, kind: str, ways: int, channels: int = 64,
                 hidden: int = 8, norm: str = "batch"):
        super().__init__(backbone, kind, ways)
        if not hasattr(backbone, "feature_map") or not hasattr(backbone, "map_shape"):
            name = type(backbone).__name__.lower()
            raise ValueError(f"algo=relation needs a backbone with spatial feature maps "
                             f"(conv4 or resnet12); backbone={name} has none")
        for key, v in (("channels", channels), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"algo.{key}={v} must be a positive integer")
        if norm not in self.norms:
            raise ValueError(f"algo.norm={norm} is not one of: {', '.join(self.norms)}")
        self.relation_norm = norm
        self.relation = RelationModule(tuple(backbone.map_shape), channels, hidden, norm)

    def transductive(self) -> bool:
        """Batch statistics in the backbone or in the relation module (whose batch holds every
        (query, class) pair of a task) share information between queries."""
        return "batch" in (self.norm, self.relation_norm)

    def scores(self, episode: Episode) -> Tensor:
        """Relation scores [T, m, ways]; each task's support and query go through the backbone
        as one batch, and its pairs through the relation module as one batch (so batch
        statistics are per task, at train and test alike)."""
        n = episode.x_support.shape[1]
        out = []
        for t in range(episode.tasks):
            maps = self.backbone.feature_map(torch.cat([episode.x_support[t],
                                                        episode.x_query[t]]))
            classes = class_maps(maps[:n], episode.y_support[t], episode.ways)
            out.append(self.relation.pair_scores(maps[n:], classes))
        return torch.stack(out)

    def predict(self, episode: Episode) -> Tensor:
        return self.scores(episode)

    def probabilities(self, pred: Tensor) -> Tensor:
        """The relation scores (each in [0, 1], trained towards one-hot) normalised to sum 1."""
        p = pred.float().clamp_min(1e-12)
        return p / p.sum(-1, keepdim=True)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        scores = self.scores(episode)
        target = F.one_hot(episode.y_query, episode.ways).to(scores.dtype)
        loss = ((scores - target) ** 2).flatten(1).mean(1)
        acc = (scores.argmax(-1) == episode.y_query).float().mean(1)
        metrics = {"loss": loss, "acc": acc}
        if not self.training:
            metrics.update(self.uncertainty(scores.detach(), episode))
        return loss.mean(), metrics
