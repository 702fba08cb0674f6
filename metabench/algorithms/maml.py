"""MAML (Finn et al. 2017) and first-order MAML: a backbone plus a linear head, adapted per
task with SGD steps on the support set, scored on the query set with the adapted weights."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metabench.algorithms.base import MetaLearner, task_metrics
from metabench.algorithms.gradient import Params, sgd_adapt
from metabench.episodes import Episode


class MAML(MetaLearner):
    any_ways = False  # the head has one output per training way

    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.4,
                 inner_steps: int = 1, eval_inner_steps: int = 3, first_order: bool = False):
        super().__init__(backbone, kind, ways)
        out = ways if kind == "classification" else 1
        self.model = nn.Sequential(OrderedDict(backbone=backbone,
                                               head=nn.Linear(backbone.out_dim, out)))
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.first_order = first_order

    def inner_lrs(self) -> float | Params:
        """The inner step size; subclasses (Meta-SGD) return learned per-parameter rates."""
        return self.inner_lr

    def fast_params(self) -> Params:
        return dict(self.model.named_parameters())

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        classification = self.kind == "classification"

        def support_loss(p: Params) -> Tensor:
            pred = functional_call(self.model, p, (x,))
            return task_metrics(pred[None], y[None], classification)["loss"][0]

        return sgd_adapt(support_loss, params, steps, self.inner_lrs(), self.first_order)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        steps = self.inner_steps if self.training else self.eval_inner_steps
        params = self.fast_params()
        preds, before = [], []
        for t in range(episode.tasks):  # measured faster than vmap on CPU; exact with BatchNorm
            fast = self.adapt(params, episode.x_support[t], episode.y_support[t], steps)
            preds.append(functional_call(self.model, fast, (episode.x_query[t],)))
            if not self.training:
                before.append(functional_call(self.model, params, (episode.x_query[t],)))
        loss, metrics = self.scored(torch.stack(preds), episode)
        if before:  # evaluation also reports the unadapted model, for comparison
            pre = task_metrics(torch.stack(before), episode.y_query, episode.is_classification)
            metrics.update({f"pre_{k}": v for k, v in pre.items()})
        return loss, metrics
