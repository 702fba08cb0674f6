"""Evaluation over fixed, seeded episodes: per-episode metrics, their mean and 95% CI."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metabench.algorithms.base import MetaLearner
from metabench.precision import autocast


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 1.96 * sample std / sqrt(n) of per-episode values."""
    v = values.double()
    n = v.numel()
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return v.mean().item(), 1.96 * std / math.sqrt(n)


def run_episodes(learner: MetaLearner, sampler, episodes: int, batch: int,
                 seed: int, precision: str = "fp32") -> dict[str, Tensor]:
    """Per-episode metrics [episodes] over the same episodes for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    was_training = learner.training
    learner.eval()
    out: dict[str, list[Tensor]] = {}
    try:
        with torch.no_grad():  # gradient-based learners still adapt: torch.func.grad ignores it
            done = 0
            while done < episodes:
                n = min(batch, episodes - done)
                with autocast(precision, next(learner.parameters()).device):
                    _, metrics = learner(sampler.sample(n, generator))
                for k, v in metrics.items():
                    out.setdefault(k, []).append(v.detach().float().cpu())
                done += n
    finally:
        learner.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(per_episode: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
    return {k: mean_ci95(v) for k, v in per_episode.items()}
