"""Alpha-MAML (Behl, Baydin & Torr, ICML 2019 AutoML workshop, "Alpha MAML: Adaptive
Model-Agnostic Meta-Learning"): MAML whose inner rate alpha and outer rate beta both follow
their hypergradients online (hypergradient descent, Baydin et al. 2018), so neither needs
tuning.

- alpha: a scalar, alpha_t = alpha_{t-1} - mu_alpha dL_Q/dalpha; for one inner step
  dL_Q(theta - alpha g_S)/dalpha = -g_Q(theta') . g_S(theta). It is a parameter in a group of
  its own, at the fixed rate ``alpha_lr`` (mu_alpha) with no hypergradient of its own, so the
  outer SGD step on it is exactly that update (autograd gives the derivative through every
  inner step, first or second order).
- beta: the outer optimiser ``train.optimizer=sgd_hd`` (metabench/optim.py), whose rate moves
  by ``train.hypergrad_lr`` (mu_beta) times the dot product of successive meta-gradients.

Both rates are logged (``train/inner_lr``, ``train/lr``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.maml import MAML
from metabench.episodes import Episode


class AlphaMAML(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.4,
                 alpha_lr: float = 1e-4, inner_steps: int = 1, eval_inner_steps: int = 3,
                 first_order: bool = False, task_batching: str = "auto"):
        super().__init__(backbone, kind, ways, inner_lr, inner_steps, eval_inner_steps,
                         first_order, task_batching)
        require("a non-negative number", alpha_lr=alpha_lr)
        self.alpha = nn.Parameter(torch.tensor(float(inner_lr)))
        self.alpha_lr = float(alpha_lr)

    def inner_lrs(self) -> Tensor:
        return self.alpha

    def param_groups(self) -> list[dict]:
        rest = [p for n, p in self.named_parameters() if n != "alpha"]
        return [{"params": rest},
                {"params": [self.alpha], "lr": self.alpha_lr, "hypergrad_lr": 0.0,
                 "weight_decay": 0.0}]

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = super().forward(episode)
        if self.training:
            metrics["inner_lr"] = self.alpha.detach().expand(episode.tasks)
        return loss, metrics
