"""VERSA (Gordon et al., ICLR 2019, "Meta-Learning Probabilistic Inference for Prediction").

A shared feature extractor embeds every image; per class, amortised inference networks map the
mean of that class's support features to a diagonal Gaussian over the class's linear weights
and bias, so one forward pass "learns" a task, with any number of classes and shots. Queries
are scored by the Monte Carlo predictive: logits are sampled with the local reparameterisation
trick (each query's logit is Gaussian with mean f.mu_w + mu_b and variance f^2.sigma_w^2 +
sigma_b^2), and the loss is -log of the sample-averaged softmax probability of the true class
(no KL term, as the paper's ML-PIP objective). ``predict`` returns the log of that averaged
predictive, valid logits, so the shared scoring computes the loss, accuracy, NLL and ECE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.metric import MetricLearner
from metabench.algorithms.protonet import prototypes
from metabench.uncertainty import log_mean_exp

#: the per-task posterior over a linear classifier: weight mean and log-variance [T, W, D],
#: bias mean and log-variance [T, W]
Posterior = tuple[Tensor, Tensor, Tensor, Tensor]


def inference_net(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Three dense layers with ELU between (the official code's ``inference_block``), Xavier
    normal weights and N(0, 1e-3) biases as there."""
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                        nn.Linear(hidden, d_out))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-3)
    return net


def logit_moments(z_query: Tensor, posterior: Posterior) -> tuple[Tensor, Tensor]:
    """Mean and variance [T, m, W] of each query's logits under the weight posterior: the local
    reparameterisation (logits of different queries are sampled independently)."""
    w_mean, w_logvar, b_mean, b_logvar = posterior
    mean = z_query @ w_mean.transpose(1, 2) + b_mean[:, None]
    var = z_query.square() @ w_logvar.exp().transpose(1, 2) + b_logvar.exp()[:, None]
    return mean, var


def predictive_log_probs(mean: Tensor, var: Tensor, noise: Tensor) -> Tensor:
    """log((1/L) sum_l softmax(mean + sqrt(var) * noise_l)) [T, m, W] for standard normal
    ``noise`` [L, T, m, W]: the log Monte Carlo predictive, whose entry at the true class is
    minus VERSA's per-query loss."""
    return log_mean_exp((mean + var.sqrt() * noise).log_softmax(-1), 0)


class VERSA(MetricLearner):
    any_ways = True  # one weight vector per class, each inferred from that class alone

    def __init__(self, backbone: nn.Module, kind: str, ways: int, samples: int = 10,
                 eval_samples: int = 100, hidden: int | None = None, dropout: float = 0.0):
        super().__init__(backbone, kind, ways)
        require("a positive integer", samples=samples, eval_samples=eval_samples)
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int)
                                   or hidden < 1):
            raise ValueError(f"algo.hidden={hidden} must be a positive integer or null "
                             f"(the feature size)")
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                or not 0 <= dropout < 1):
            raise ValueError(f"algo.dropout={dropout} must be a number in [0, 1)")
        d = backbone.out_dim
        h = d if hidden is None else hidden  # the official code: hidden width = feature size
        self.weight_mean = inference_net(d, h, d)
        self.weight_logvar = inference_net(d, h, d)
        self.bias_mean = inference_net(d, h, 1)
        self.bias_logvar = inference_net(d, h, 1)
        self.samples = samples
        self.eval_samples = eval_samples
        self.dropout = float(dropout)
        if self.dropout > 0:
            relus = [m for m in backbone.modules() if isinstance(m, nn.ReLU)]
            if not relus:
                raise ValueError(f"algo.dropout={dropout} needs a backbone with nn.ReLU "
                                 f"layers (dropout follows each, as in the official code)")
            for m in relus:
                m.register_forward_hook(self._drop)

    def _drop(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        """Dropout after each of the backbone's ReLUs, in training only (the official code's
        conv blocks: conv, batch norm, ReLU, dropout, max pool)."""
        return F.dropout(output, self.dropout, module.training)

    def infer(self, z_support: Tensor, y_support: Tensor, ways: int) -> Posterior:
        """The amortised posterior of every class's weights and bias from the mean of its
        support features (order-invariant within a class, one class at a time)."""
        nu = prototypes(z_support, y_support, ways)  # [T, W, D]
        return (self.weight_mean(nu), self.weight_logvar(nu), self.bias_mean(nu)[..., 0],
                self.bias_logvar(nu)[..., 0])

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int,
               noise: Tensor | None = None) -> Tensor:
        """The log Monte Carlo predictive [T, m, W] with ``algo.samples`` logit samples in
        training and ``algo.eval_samples`` in evaluation (or the given standard normal
        ``noise`` [L, T, m, W])."""
        mean, var = logit_moments(z_query, self.infer(z_support, y_support, ways))
        if noise is None:
            samples = self.samples if self.training else self.eval_samples
            noise = torch.randn((samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        return predictive_log_probs(mean, var, noise)
