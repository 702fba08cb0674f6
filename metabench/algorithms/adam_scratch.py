"""The tuned-Adam baseline for rules learned from scratch: Adam (Kingma & Ba 2015, with bias
correction, eps 1e-8 added to the root as torch.optim.Adam) on a fresh MLP, its step size
and both betas meta-learned by the same outer loop and budget as the learned rules:
lr = exp(log_lr), beta = sigmoid(logit)."""

from __future__ import annotations

import math

import torch
from torch import nn

from metabench.algorithms.arguments import require
from metabench.algorithms.scratch import Params, ScratchLearner
from metabench.algorithms.sgd_scratch import logit

EPS = 1e-8


class AdamScratch(ScratchLearner):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, lr_init: float = 0.01,
                 beta1_init: float = 0.9, beta2_init: float = 0.999, **kwargs):
        super().__init__(backbone, kind, ways, **kwargs)
        require("a positive number", lr_init=lr_init)
        for key, b in (("beta1_init", beta1_init), ("beta2_init", beta2_init)):
            if not 0 < b < 1:
                raise ValueError(f"algo.{key}={b} must be in (0, 1)")
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr_init)))
        self.beta_logits = nn.Parameter(torch.tensor([logit(beta1_init), logit(beta2_init)]))

    def rule_init(self, params: Params) -> tuple[Params, Params]:
        zeros = {k: torch.zeros_like(v) for k, v in params.items()}
        return zeros, dict(zeros)

    def rule_step(self, params, state, grads, losses, t):
        b1, b2 = torch.sigmoid(self.beta_logits)
        lr = self.log_lr.exp()
        m = {k: b1 * state[0][k] + (1 - b1) * grads[k] for k in params}
        v = {k: b2 * state[1][k] + (1 - b2) * grads[k] ** 2 for k in params}
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        # 1e-30 under the root: a finite meta-gradient where a coordinate's gradient is 0
        new = {k: p - lr * (m[k] / c1) / ((v[k] / c2 + 1e-30).sqrt() + EPS)
               for k, p in params.items()}
        return new, (m, v)
