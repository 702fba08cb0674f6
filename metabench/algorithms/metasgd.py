"""Meta-SGD (Li et al. 2017): MAML whose inner step size is a learned tensor per parameter,
of the parameter's shape, so the meta-learner learns each weight's rate and direction.

The rates start uniformly in ``[lr_min, lr_max]`` (the paper draws them from [0.005, 0.1]) and
are trained by the outer optimiser together with the initialisation."""

from __future__ import annotations

import torch
from torch import nn

from metabench.algorithms.gradient import Params
from metabench.algorithms.maml import MAML


def _rate_key(name: str) -> str:
    """nn.ParameterDict keys may not contain dots; parameter names do."""
    return name.replace(".", "__")


class MetaSGD(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, lr_min: float = 0.005,
                 lr_max: float = 0.1, inner_steps: int = 1, eval_inner_steps: int = 1,
                 first_order: bool = False, task_batching: str = "auto"):
        for key, v in (("lr_min", lr_min), ("lr_max", lr_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"algo.{key}={v} must be a non-negative number")
        if lr_max < lr_min:
            raise ValueError(f"algo.lr_max={lr_max} must be at least algo.lr_min={lr_min}")
        # MAML's scalar inner_lr is unused here: the learned rates replace it
        super().__init__(backbone, kind, ways, inner_lr=max(lr_max, 1e-8),
                         inner_steps=inner_steps, eval_inner_steps=eval_inner_steps,
                         first_order=first_order, task_batching=task_batching)
        self.lrs = nn.ParameterDict({
            _rate_key(n): nn.Parameter(torch.empty_like(p).uniform_(lr_min, lr_max))
            for n, p in self.model.named_parameters()})

    def inner_lrs(self) -> Params:
        return {n: self.lrs[_rate_key(n)] for n, _ in self.model.named_parameters()}
