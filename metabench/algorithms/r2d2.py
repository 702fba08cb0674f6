"""R2-D2 (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019, "Meta-learning with differentiable
closed-form solvers"): per task, ridge regression from the support embeddings (with a bias
column) onto one-hot labels in closed form, both divided by sqrt(n) as the official code
(bertinetto/r2d2, fewshots/models/r2d2.py) does; query logits alpha * (z_q W + b) + beta with a
learned scale alpha and offset beta (the code's AdjustLayer), and a learned lambda when
``learn_lambda``. The meta-gradient flows through the solve into the feature extractor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.heads import RIDGE_FORMS, ridge_solve
from metabench.algorithms.metric import MetricLearner


class R2D2(MetricLearner):
    any_ways = True  # the head is solved per task: any number of classes

    def __init__(self, backbone: nn.Module, kind: str, ways: int, lam: float = 50.0,
                 learn_lambda: bool = False, scale_init: float = 1e-4, bias_init: float = 0.0,
                 form: str = "auto"):
        super().__init__(backbone, kind, ways)
        require("a positive number", lam=lam)
        require("true or false", learn_lambda=learn_lambda)
        require("a positive number", scale_init=scale_init)
        if form not in RIDGE_FORMS:
            raise ValueError(f"algo.form={form} must be {', '.join(RIDGE_FORMS[:-1])} or "
                             f"{RIDGE_FORMS[-1]}")
        self.form = form
        lam_t = torch.tensor(float(lam))
        if learn_lambda:
            self.lam = nn.Parameter(lam_t)
        else:
            self.register_buffer("lam", lam_t)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def ridge(self, z_support: Tensor, y_support: Tensor, ways: int) -> Tensor:
        """The per-task ridge solution [T, D + 1, ways] (the last row: the bias)."""
        n = z_support.shape[1]
        ones = z_support.new_ones(*z_support.shape[:2], 1)
        z = torch.cat([z_support, ones], -1) / math.sqrt(n)
        y = F.one_hot(y_support, ways).to(z.dtype) / math.sqrt(n)
        return ridge_solve(z, y, self.lam, self.form)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        wb = self.ridge(z_support, y_support, ways)
        return self.scale * (z_query @ wb[:, :-1] + wb[:, -1:]) + self.bias
