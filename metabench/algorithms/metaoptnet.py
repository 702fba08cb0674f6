"""MetaOptNet (Lee, Maji, Ravichandran & Soatto, CVPR 2019, "Meta-Learning with
Differentiable Convex Optimization"): per task, a linear base learner fitted to the support
embeddings in the dual, and query logits scale * sum_i a_im <z_i, z_q> with a learned scale
(initial 1, as the official code, kjunelee/MetaOptNet). ``head=svm``: the Crammer-Singer SVM
(C = 0.1) solved by qpth, gradients through its KKT conditions, 15 solver iterations in
training and 3 at test (the code); ``head=ridge``: the code's ridge dual
(1/2 a^T (K + lam I) a - 2 y^T a, lam = 50, no active constraint) has the closed form
a = 2 (K + lam I)^-1 Y, computed here directly (the same solution; tested against qpth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.heads import ridge_dual, svm_dual
from metabench.algorithms.metric import MetricLearner


class MetaOptNet(MetricLearner):
    any_ways = True  # the head is solved per task: any number of classes

    def __init__(self, backbone: nn.Module, kind: str, ways: int, head: str = "svm",
                 c: float = 0.1, lam: float = 50.0, iterations: int = 15,
                 eval_iterations: int = 3, jitter: float = 1.0, scale_init: float = 1.0):
        super().__init__(backbone, kind, ways)
        if head not in ("svm", "ridge"):
            raise ValueError(f"algo.head={head} must be svm or ridge")
        require("a positive number", c=c, lam=lam, scale_init=scale_init)
        require("a non-negative number", jitter=jitter)
        require("a positive integer", iterations=iterations, eval_iterations=eval_iterations)
        if head == "svm":
            try:
                import qpth  # noqa: F401
            except ImportError:
                raise ValueError("algo.head=svm needs the qpth package: "
                                 "pip install 'metabench[metaoptnet]'") from None
        self.head, self.c, self.lam, self.jitter = head, c, lam, jitter
        self.iterations, self.eval_iterations = iterations, eval_iterations
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def dual(self, z_support: Tensor, y_support: Tensor, ways: int) -> Tensor:
        """The base learner's dual coefficients [T, n, ways]."""
        if self.head == "svm":
            steps = self.iterations if self.training else self.eval_iterations
            return svm_dual(z_support, y_support, ways, self.c, steps, self.jitter)
        return 2 * ridge_dual(z_support, F.one_hot(y_support, ways).to(z_support.dtype),
                              self.lam)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        alpha = self.dual(z_support, y_support, ways)
        return self.scale * (z_query @ z_support.transpose(1, 2) @ alpha)
