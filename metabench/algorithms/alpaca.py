"""ALPaCA (Harrison, Sharma & Pavone 2018): Bayesian linear regression on meta-learned features.

The backbone gives features phi(x) [d]; a task's outputs are y = K^T phi(x) + eps, eps ~
N(0, sigma_eps), with a matrix-normal prior on K whose mean K0 [d, 1] and precision Lambda0 =
L L^T [d, d] are meta-learned with the features. The posterior from a task's context (support)
points is closed-form, so adaptation is exact and needs no inner optimisation:

    Lambda_n = Phi^T Phi + Lambda0,   K_n = Lambda_n^-1 (Phi^T Y + Lambda0 K0),

and a query's predictive is Gaussian with mean K_n^T phi(x) and variance
(1 + phi(x)^T Lambda_n^-1 phi(x)) sigma_eps. Training minimises the query points' predictive
NLL with the number of context points drawn uniformly in 0..shots per task and step (the
paper's trick: one model for every context size, the prior itself included); evaluation uses
every support point. Reference: StanfordASL/ALPaCA main/alpaca.py (``batch_update``,
``model``, ``loss_f``, ``gen_variable_horizon_data``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.base import MetaLearner
from metabench.episodes import Episode


def blr_posterior(phi: Tensor, y: Tensor, k0: Tensor, chol0: Tensor) -> tuple[Tensor, Tensor]:
    """The posterior mean K_n [T, d, 1] and the Cholesky factor of the posterior precision
    Lambda_n [T, d, d] from context features ``phi`` [T, n, d] and targets ``y`` [T, n, 1]
    (rows of zeros in both are no context), under the prior mean ``k0`` [d, 1] and the
    prior precision's Cholesky factor ``chol0`` [d, d]."""
    lam0 = chol0 @ chol0.T
    lam_n = phi.transpose(1, 2) @ phi + lam0
    chol_n = torch.linalg.cholesky(lam_n)
    k_n = torch.cholesky_solve(phi.transpose(1, 2) @ y + lam0 @ k0, chol_n)
    return k_n, chol_n


def blr_predictive(phi: Tensor, k_n: Tensor, chol_n: Tensor, sigma_eps: float) -> Tensor:
    """Predictive (mean, variance) [T, m, 1, 2] of query features ``phi`` [T, m, d]: one
    Gaussian component per query, as metabench/uncertainty.py scores it."""
    mean = phi @ k_n  # [T, m, 1]
    half = torch.linalg.solve_triangular(chol_n, phi.transpose(1, 2), upper=False)
    var = (1 + (half ** 2).sum(1)) * sigma_eps  # [T, m]: (1 + phi^T Lambda_n^-1 phi) sigma
    return torch.stack([mean, var[..., None]], -1)


class ALPaCA(MetaLearner):
    kinds = ("regression",)
    predicts_variance = True

    def __init__(self, backbone: nn.Module, kind: str, ways: int, sigma_eps: float = 0.02,
                 prior_precision: float = 1.0, random_context: bool = True):
        super().__init__(backbone, kind, ways)
        require("a positive number", sigma_eps=sigma_eps, prior_precision=prior_precision)
        require("true or false", random_context=random_context)
        d = backbone.out_dim
        self.sigma_eps = float(sigma_eps)
        self.random_context = random_context
        self.k0 = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d, 1)))
        # Lambda0 = L L^T with L lower triangular with a positive (exp) diagonal: always
        # positive definite, and L is its Cholesky factor; starts at prior_precision * I
        self.l_offdiag = nn.Parameter(torch.zeros(d, d))
        self.l_logdiag = nn.Parameter(torch.full((d,), 0.5 * math.log(prior_precision)))

    def prior_cholesky(self) -> Tensor:
        """L [d, d], the Cholesky factor of the prior precision Lambda0."""
        return self.l_offdiag.tril(-1) + torch.diag(self.l_logdiag.exp())

    def context_mask(self, episode: Episode) -> Tensor:
        """[T, n] 1 for the support rows used as context: in training the first c_t rows of
        task t with c_t ~ U{0..n} (the support points are in random order), in evaluation
        all of them."""
        t, n = episode.y_support.shape[:2]
        device = episode.y_support.device
        if not (self.training and self.random_context):
            return torch.ones(t, n, device=device)
        counts = torch.randint(n + 1, (t, 1), device=device)
        return (torch.arange(n, device=device) < counts).float()

    def predictive(self, episode: Episode, mask: Tensor | None = None) -> Tensor:
        """Query predictive distributions [T, m, 1, 2] given the support rows ``mask`` [T, n]
        selects (default: ``context_mask``)."""
        n = episode.x_support.shape[1]
        x = torch.cat([episode.x_support, episode.x_query], 1)
        phi = self.backbone(x.flatten(0, 1)).view(*x.shape[:2], -1)
        phi = phi.to(torch.promote_types(phi.dtype, torch.float32))
        phi_s, phi_q = phi[:, :n], phi[:, n:]
        mask = (self.context_mask(episode) if mask is None else mask).to(phi.dtype)[..., None]
        y = episode.y_support.to(phi.dtype) * mask
        with torch.autocast(phi.device.type, enabled=False):  # the solves in float32 at least
            k_n, chol_n = blr_posterior(phi_s * mask, y, self.k0, self.prior_cholesky())
            return blr_predictive(phi_q, k_n, chol_n, self.sigma_eps)

    def predict(self, episode: Episode) -> Tensor:
        return self.predictive(episode)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.scored(self.predict(episode), episode)
        if self.training:  # the paper's objective: the predictive NLL, not the MSE
            return metrics["nll"].mean(), metrics
        # evaluation also reports the prior predictive (no context), for comparison
        none = torch.zeros(episode.y_support.shape[:2], device=episode.y_support.device)
        _, prior = self.scored(self.predictive(episode, none), episode)
        metrics.update({f"pre_{k}": v for k, v in prior.items()})
        return loss, metrics
