"""Uncertainty metrics of query predictions, per task: what judges a probabilistic learner.

Classification: the negative log-likelihood of the true class and the expected calibration
error (Guo et al. 2017: equal-width confidence bins, the count-weighted mean gap between a
bin's accuracy and its mean confidence) of each task's queries, plus the per-bin sums that a
reliability diagram pools over every test episode. Regression: a learner that predicts a
distribution gives, per query, S equally weighted Gaussian components (S = 1: one Gaussian;
a sampling learner: one per sample or particle); its NLL is the mixture's, and the 90% central
predictive interval covers y exactly when the mixture's CDF at y lies in [0.05, 0.95]."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from metabench.reliability import reliability_from_sums

ECE_BINS = 15
#: per-task tensors [T, ECE_BINS] of bin sums (not averaged into a mean and CI)
BIN_KEYS = ("bin_count", "bin_correct", "bin_confidence")
#: the uncertainty metrics results.json records (mean, and ``<key>_ci95``) where measured
UNCERTAINTY_KEYS = ("nll", "ece", "coverage90")


def log_mean_exp(log_values: Tensor, dim: int) -> Tensor:
    """log((1/S) sum_s exp(v_s)) along ``dim``, stably: a sampling classifier's log predictive
    probabilities from per-sample log-softmaxes (the loss VERSA trains on)."""
    return torch.logsumexp(log_values, dim) - math.log(log_values.shape[dim])


def calibration(probs: Tensor, target: Tensor, bins: int = ECE_BINS) -> dict[str, Tensor]:
    """``nll`` and ``ece`` [T] of class probabilities [T, m, W] for labels [T, m], and the bin
    sums [T, bins] (``BIN_KEYS``) of the confidence (top probability) and correctness."""
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))
    p_true = probs.gather(-1, target[..., None])[..., 0]
    nll = -p_true.clamp_min(torch.finfo(probs.dtype).tiny).log().mean(1)
    conf, guess = probs.max(-1)
    correct = (guess == target).to(probs.dtype)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 joins the first bin
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    onehot = torch.nn.functional.one_hot(idx, bins).to(probs.dtype)  # [T, m, bins]
    count = onehot.sum(1)
    correct_sum = (onehot * correct[..., None]).sum(1)
    conf_sum = (onehot * conf[..., None]).sum(1)
    ece = (correct_sum - conf_sum).abs().sum(1) / target.shape[1]
    return {"nll": nll, "ece": ece, "bin_count": count, "bin_correct": correct_sum,
            "bin_confidence": conf_sum}


def pooled_reliability(per_episode: dict[str, Tensor]) -> dict[str, Any] | None:
    """The reliability diagram of every query of every episode; None without bin sums."""
    if not all(k in per_episode for k in BIN_KEYS):
        return None
    count, correct, conf = (per_episode[k].double().sum(0).tolist() for k in BIN_KEYS)
    return reliability_from_sums(count, correct, conf)


def mixture_mean(pred: Tensor) -> Tensor:
    """Predictive means [T, m, 1] of mixtures [T, m, S, 2] (component mean, variance)."""
    return pred[..., 0].mean(-1, keepdim=True)


def gaussian_mixture_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per task [T]: ``loss`` (MSE of the predictive mean), ``nll`` (mean over queries of
    -log (1/S) sum_s N(y; mu_s, var_s)) and ``coverage90`` (the share of queries inside the
    mixture's central 90% interval) of ``pred`` [T, m, S, 2] against ``target`` [T, m, 1]."""
    mu, var = pred[..., 0], pred[..., 1].clamp_min(1e-12)
    y = target  # [T, m, 1] broadcasts over the S components
    log_pdf = -0.5 * ((y - mu) ** 2 / var + var.log() + math.log(2 * math.pi))
    nll = -log_mean_exp(log_pdf, -1).mean(1)
    cdf = (0.5 * (1 + torch.erf((y - mu) / (2 * var).sqrt()))).mean(-1)
    inside = ((cdf >= 0.05) & (cdf <= 0.95)).to(pred.dtype).mean(1)
    mse = ((mixture_mean(pred) - target) ** 2).flatten(1).mean(1)
    return {"loss": mse, "nll": nll, "coverage90": inside}
