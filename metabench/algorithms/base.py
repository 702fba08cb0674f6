"""The one interface every algorithm implements, and the per-task objective it is scored by."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.episodes import Episode
from metabench.uncertainty import calibration, gaussian_mixture_metrics, mixture_mean


def task_metrics(pred: Tensor, target: Tensor, classification: bool) -> dict[str, Tensor]:
    """Per-task loss (cross-entropy or MSE) and, for classification, accuracy: each [tasks]."""
    if classification:
        loss = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none")
        acc = (pred.argmax(-1) == target).float().mean(1)
        return {"loss": loss.view(target.shape).mean(1), "acc": acc}
    return {"loss": ((pred - target) ** 2).flatten(1).mean(1)}


class MetaLearner(nn.Module):
    """``forward(episode) -> (loss, metrics)``: ``loss`` is the scalar to minimise (mean over
    tasks), ``metrics`` maps names to per-task tensors [tasks] for logging and confidence
    intervals. ``self.training`` selects the train or evaluation protocol (e.g. inner steps).

    A learner never owns an optimiser, a loop, a logger or a device decision.
    """

    #: whether an episode's number of ways may differ from the one the learner was built with
    any_ways: bool = True
    #: which dataset kinds the learner handles
    kinds: tuple[str, ...] = ("classification", "regression")
    #: the ``backbone.norm`` modes the learner can evaluate under (backbones/norms.py)
    norms: tuple[str, ...] = ("batch", "running", "support", "none")
    #: regression only: ``predict`` gives a predictive distribution per query, [T, m, S, 2]
    #: (S equally weighted Gaussian components: mean, variance; metabench/uncertainty.py),
    #: scored by its mean's MSE, its NLL and its 90% interval's coverage
    predicts_variance: bool = False
    #: evaluation metrics of its own that a test result records beside the standard ones
    #: (mean and 95% CI each; MANN: accuracy at the k-th presentation of a class)
    reported: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, kind: str, ways: int):
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        self.ways = ways

    @property
    def norm(self) -> str:
        """The backbone's normalisation mode (``none`` for a backbone without norm layers)."""
        return getattr(self.backbone, "norm", "none")

    def transductive(self) -> bool:
        """Whether a query's test prediction depends on the other queries of its episode:
        with ``norm=batch`` they share the batch statistics of one forward call."""
        return self.norm == "batch"

    def episode_problems(self, ways: int, support: int) -> list[str]:
        """Why an episode of ``ways`` classes and ``support`` support examples in all cannot
        be scored by this learner, as sentences (none: it can)."""
        if self.kind == "classification" and not self.any_ways and ways != self.ways:
            return [f"this model has a fixed {self.ways}-way head: it cannot classify into "
                    f"{ways} classes"]
        return []

    def probabilities(self, pred: Tensor) -> Tensor:
        """Class probabilities [..., ways] from ``predict``'s output (logits here)."""
        return pred.to(torch.promote_types(pred.dtype, torch.float32)).softmax(-1)

    def point_prediction(self, pred: Tensor) -> Tensor:
        """Regression values [..., m, 1] from ``predict``'s output (a mixture's mean)."""
        return mixture_mean(pred) if self.predicts_variance else pred

    def uncertainty(self, pred: Tensor, episode: Episode) -> dict[str, Tensor]:
        """Evaluation's uncertainty metrics of ``predict``'s output, per task: NLL, ECE and
        reliability bin sums of ``probabilities`` for classification (every learner)."""
        if not episode.is_classification:
            return {}
        return calibration(self.probabilities(pred), episode.y_query)

    def scored(self, pred: Tensor, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean loss and the per-task metrics of query predictions; in evaluation with
        the uncertainty metrics too."""
        if self.predicts_variance:
            metrics = gaussian_mixture_metrics(pred, episode.y_query)
        else:
            metrics = task_metrics(pred, episode.y_query, episode.is_classification)
            if not self.training:
                metrics.update(self.uncertainty(pred.detach(), episode))
        return metrics["loss"].mean(), metrics

    def param_groups(self) -> list[dict]:
        """The outer optimiser's parameter groups: one, every parameter, unless a learner
        gives some of its own a rate of their own (Alpha-MAML's inner rate)."""
        return [{"params": list(self.parameters())}]

    def predict(self, episode: Episode) -> Tensor:  # pragma: no cover
        """Query predictions [T, m, outputs] (logits or scores; regression: values) under the
        current protocol (``self.training``): what the loss and the metrics are computed from."""
        raise NotImplementedError

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        return self.scored(self.predict(episode), episode)

