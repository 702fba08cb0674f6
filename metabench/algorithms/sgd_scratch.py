"""The tuned-SGD baseline for rules learned from scratch: SGD with momentum on a fresh MLP,
whose step size and momentum are meta-learned by the same outer loop and budget as the
learned rules (a scalar learned rate is the fair tuned baseline; Sandler et al. 2021 and
Andrychowicz et al. 2016 compare against tuned SGD). v <- mu v + g, theta <- theta - lr v;
lr = exp(log_lr), mu = sigmoid(logit) (``momentum_init=0``: plain SGD, mu not learned)."""

from __future__ import annotations

import math

import torch
from torch import nn

from metabench.algorithms.arguments import require
from metabench.algorithms.scratch import Params, ScratchLearner


def logit(p: float) -> float:
    return math.log(p / (1 - p))


class SGDScratch(ScratchLearner):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, lr_init: float = 0.1,
                 momentum_init: float = 0.5, **kwargs):
        super().__init__(backbone, kind, ways, **kwargs)
        require("a positive number", lr_init=lr_init)
        if not 0 <= momentum_init < 1:
            raise ValueError(f"algo.momentum_init={momentum_init} must be in [0, 1)")
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr_init)))
        self.momentum_logit = (nn.Parameter(torch.tensor(logit(momentum_init)))
                               if momentum_init > 0 else None)

    def rates(self) -> tuple[torch.Tensor, torch.Tensor | float]:
        mu = 0.0 if self.momentum_logit is None else torch.sigmoid(self.momentum_logit)
        return self.log_lr.exp(), mu

    def rule_init(self, params: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def rule_step(self, params, state, grads, losses, t):
        lr, mu = self.rates()
        velocity = {k: mu * state[k] + grads[k] for k in params}
        return {k: p - lr * velocity[k] for k, p in params.items()}, velocity
