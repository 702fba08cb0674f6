"""iMAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019, "Meta-Learning with Implicit
Gradients"): per task, phi* = argmin_phi L_S(phi) + lam/2 ||phi - theta||^2, approximated by
``inner_steps`` gradient steps on that regularised objective from theta (the paper's inner
problem; the official code, aravindr93/imaml_dev, runs plain SGD on L_S and then one proximal
step); the meta-gradient is (I + H/lam)^-1 grad L_Q(phi*), H the support loss's Hessian at phi*,
by ``cg_steps`` conjugate-gradient steps of Hessian-vector products
(gradient.implicit_meta_gradient). The operator is the paper's I + H/lam by default;
``cg_damping=1 lam_damping=10`` give the code's (2 v + Hv/(lam + 10)): on a non-convex network
the paper's is indefinite and CG's few steps wander (measured: the direction's cosine with the
query gradient 0.57 at 5 steps on an untrained Omniglot Conv-4, norm 3.3x), the code's keeps
it near g/2.

Nothing is backpropagated through the inner loop: the outer graph holds theta . x per task
only, so memory does not grow with the inner step count. The reported loss is the query loss;
its gradient with respect to theta is the implicit meta-gradient (a surrogate term). At test
the same regularised inner problem is solved (``eval_lam``, default ``lam``; the code's README
tests with lam 0)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.base import task_metrics
from metabench.algorithms.gradient import Params, implicit_meta_gradient, sgd_adapt
from metabench.algorithms.maml import MAML
from metabench.backbones.norms import query_outputs
from metabench.episodes import Episode


class IMAML(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.1,
                 inner_steps: int = 16, eval_inner_steps: int = 16, lam: float = 2.0,
                 cg_steps: int = 5, eval_lam: float | None = None, cg_damping: float = 0.0,
                 lam_damping: float = 0.0, task_batching: str = "loop"):
        super().__init__(backbone, kind, ways, inner_lr, inner_steps, eval_inner_steps,
                         first_order=True, task_batching=task_batching)
        require("a positive number", lam=lam)
        require("a positive integer", cg_steps=cg_steps)
        require("a non-negative number", cg_damping=cg_damping, lam_damping=lam_damping)
        self.cg_damping, self.lam_damping = float(cg_damping), float(lam_damping)
        if eval_lam is not None:
            require("a non-negative number", eval_lam=eval_lam)
        if task_batching == "vmap":
            raise ValueError("algo=imaml adapts tasks one after another (its conjugate-gradient "
                             "solve is per task): use algo.task_batching=loop or auto")
        self.lam, self.cg_steps = float(lam), int(cg_steps)
        self.eval_lam = self.lam if eval_lam is None else float(eval_lam)

    def batching_mode(self, device: torch.device | str) -> str:
        return "loop"

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        """Gradient steps on L_S(phi) + lam/2 ||phi - theta||^2 from theta (held constant)."""
        lam = self.lam if self.training else self.eval_lam
        theta = {k: v.detach() for k, v in params.items()}

        def regularised(p: Params) -> Tensor:
            prox = sum(((p[k] - theta[k]) ** 2).sum() for k in p)
            return self.task_loss(p, x, y) + 0.5 * lam * prox

        return sgd_adapt(regularised, theta, steps, self.inner_lr, first_order=True)

    def implicit_task(self, params: Params, xs: Tensor, ys: Tensor, xq: Tensor,
                      yq: Tensor) -> tuple[Tensor, Tensor]:
        """One task's query predictions at phi*, and theta . (I + H/lam)^-1 g_Q: the term whose
        gradient with respect to theta is the task's implicit meta-gradient."""
        phi = self.adapt(params, xs, ys, self.inner_steps)

        def query_loss(p: Params) -> tuple[Tensor, Tensor]:
            pred = query_outputs(lambda inputs: self.fast_forward(p, inputs), xs, xq, self.norm)
            loss = task_metrics(pred[None], yq[None], self.kind == "classification")
            return loss["loss"][0], pred

        g, pred = torch.func.grad(query_loss, has_aux=True)(phi)
        meta = implicit_meta_gradient(lambda p: self.task_loss(p, xs, ys), phi, g, self.lam,
                                      self.cg_steps, self.cg_damping, self.lam_damping)
        return pred.detach(), sum((params[k] * meta[k]).sum() for k in params)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.training:
            return super().forward(episode)
        params = self.fast_params()
        preds, terms = zip(*(self.implicit_task(params, episode.x_support[t],
                                                episode.y_support[t], episode.x_query[t],
                                                episode.y_query[t])
                             for t in range(episode.tasks)), strict=True)
        loss, metrics = self.scored(torch.stack(preds), episode)
        surrogate = torch.stack(terms).mean()
        return loss + surrogate - surrogate.detach(), metrics
