"""PLATIPUS (Finn, Xu & Levine, NeurIPS 2018, "Probabilistic Model-Agnostic Meta-Learning"):
a diagonal Gaussian over MAML's initialisation, from which each task samples the weights it
then adapts with MAML's inner steps.

Per task (the paper's Algorithm 1 in training, Algorithm 2 at test):
- prior, conditioned on the support set: p = N(mu - gamma_p * grad_mu L_S(mu), sigma^2);
- training only, the variational posterior, conditioned on the query set:
  q = N(mu - gamma_q * grad_mu L_Q(mu), v_q); theta ~ q (reparameterised);
- test: theta ~ p, ``eval_samples`` times;
- phi = MAML's inner SGD steps on the support set from theta;
- loss = L_Q(phi) + kl_weight * KL(q || p); prediction: the average of the samples'
  predictive distributions (classification: the log of the mean of their softmaxes;
  regression: an equal mixture of Gaussians, one per sample, with a learned noise variance).

With sigma -> 0, v_q = sigma^2 and gamma_p = gamma_q = 0 the sample is mu, the KL is 0 and the
loss is MAML's (tests/test_platipus.py). mu, log sigma, log v_q, gamma_p and gamma_q are
meta-learned; the paper gives no Omniglot recipe and no official code was found, so the
defaults are MAML's Omniglot ones plus the initial values in configs/algo/platipus.yaml.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metabench.algorithms.arguments import require
from metabench.algorithms.base import task_metrics
from metabench.algorithms.gradient import Params
from metabench.algorithms.maml import MAML
from metabench.episodes import Episode
from metabench.uncertainty import log_mean_exp


def kl_diag_gaussians(mean_q: Params, var_q: Params, mean_p: Params, var_p: Params) -> Tensor:
    """KL(N(mean_q, diag var_q) || N(mean_p, diag var_p)), summed over every entry."""
    return sum(0.5 * ((var_p[k] / var_q[k]).log() + (var_q[k] + (mean_q[k] - mean_p[k]) ** 2)
                      / var_p[k] - 1).sum() for k in mean_q)


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


class PLATIPUS(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.4,
                 inner_steps: int = 1, eval_inner_steps: int = 3, first_order: bool = False,
                 task_batching: str = "auto", sigma_init: float = 0.01,
                 gamma_init: float = 0.01, kl_weight: float = 1e-3, eval_samples: int = 5,
                 noise_init: float = 1.0):
        super().__init__(backbone, kind, ways, inner_lr, inner_steps, eval_inner_steps,
                         first_order, task_batching)
        require("a positive number", sigma_init=sigma_init, noise_init=noise_init)
        require("a non-negative number", gamma_init=gamma_init, kl_weight=kl_weight)
        require("a positive integer", eval_samples=eval_samples)
        if self.task_batching == "vmap":
            raise ValueError("algo.task_batching=vmap is not supported by algo=platipus "
                             "(each task draws its own weights): use loop or auto")
        self.predicts_variance = kind == "regression"
        log_sigma = math.log(sigma_init)
        self.log_sigma = nn.ParameterDict({  # prior standard deviations, one per weight
            _key(k): nn.Parameter(torch.full_like(p, log_sigma))
            for k, p in self.model.named_parameters()})
        self.log_vq = nn.ParameterDict({  # the posterior's variances, log
            _key(k): nn.Parameter(torch.full_like(p, 2 * log_sigma))
            for k, p in self.model.named_parameters()})
        self.gamma_p = nn.Parameter(torch.tensor(float(gamma_init)))
        self.gamma_q = nn.Parameter(torch.tensor(float(gamma_init)))
        # regression's observation noise variance (log), learned from the query residuals
        self.log_noise = nn.Parameter(torch.tensor(math.log(noise_init)))
        self.kl_weight, self.eval_samples = kl_weight, eval_samples

    def batching_mode(self, device: torch.device | str) -> str:
        return "loop"

    def shifted(self, mu: Params, gamma: Tensor, x: Tensor, y: Tensor) -> Params:
        """mu - gamma * grad_mu L(mu; x, y): the mean conditioned on (x, y)."""
        g = torch.func.grad(self.task_loss)(mu, x, y)
        return {k: mu[k] - gamma * (g[k].detach() if self.first_order else g[k]) for k in mu}

    def variances(self) -> tuple[Params, Params]:
        names = [k for k, _ in self.model.named_parameters()]
        return ({k: (2 * self.log_sigma[_key(k)]).exp() for k in names},
                {k: self.log_vq[_key(k)].exp() for k in names})

    def one_task(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """(query outputs [S, m, out] of the adapted samples, the task's KL term)."""
        mu = self.fast_params()
        var_p, var_q = self.variances()
        prior = self.shifted(mu, self.gamma_p, xs, ys)
        if self.training:
            post = self.shifted(mu, self.gamma_q, xq, yq)
            kl = kl_diag_gaussians(post, var_q, prior, var_p)
            means, var, samples = post, var_q, 1
        else:
            kl, means, var, samples = torch.zeros(()), prior, var_p, self.eval_samples
        steps = self.inner_steps if self.training else self.eval_inner_steps
        outs = []
        for _ in range(samples):
            theta = {k: m + var[k].sqrt() * torch.randn_like(m) for k, m in means.items()}
            phi = self.adapt(theta, xs, ys, steps)
            outs.append(functional_call(self.model, phi, (xq,)))
        return torch.stack(outs), kl

    def sampled(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Per-sample query outputs [T, S, m, out] and KL terms [T]."""
        per_task = [self.one_task(episode.x_support[t], episode.y_support[t],
                                  episode.x_query[t], episode.y_query[t])
                    for t in range(episode.tasks)]
        return (torch.stack([o for o, _ in per_task]), torch.stack([k for _, k in per_task]))

    def predictive(self, outs: Tensor) -> Tensor:
        """The samples' predictive: log mean softmax [T, m, ways], or a Gaussian mixture
        [T, m, S, 2] with the learned noise variance."""
        if self.kind == "classification":
            return log_mean_exp(F.log_softmax(outs, -1), 1)
        noise = self.log_noise.exp().expand_as(outs[..., 0])
        return torch.stack([outs[..., 0], noise], -1).permute(0, 2, 1, 3)

    def predict(self, episode: Episode) -> Tensor:
        return self.predictive(self.sampled(episode)[0])

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        outs, kl = self.sampled(episode)
        _, metrics = self.scored(self.predictive(outs), episode)
        if not self.training:
            return metrics["loss"].mean(), metrics
        # the training sample's own query loss (S = 1), as MAML's, plus the KL term
        fit = task_metrics(outs[:, 0], episode.y_query, self.kind == "classification")["loss"]
        loss = fit + self.kl_weight * kl
        if self.kind == "regression":  # the noise variance fits the (detached) residuals
            resid = ((outs[:, 0] - episode.y_query).detach() ** 2).flatten(1).mean(1)
            loss = loss + 0.5 * (resid / self.log_noise.exp() + self.log_noise)
        metrics["kl"] = kl.detach()
        return loss.mean(), metrics
