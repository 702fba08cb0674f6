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
                 seed: int, precision: str = "fp32",
                 one_at_a_time: bool = False) -> dict[str, Tensor]:
    """Per-episode metrics [episodes] over the same episodes for the same seed and ``batch``
    (the sampler draws a batch's episodes together, so ``batch`` decides which they are).
    ``one_at_a_time`` gives each episode of a batch to the learner alone: the same episodes,
    the per-episode reference that batched evaluation is checked and timed against."""
    generator = torch.Generator().manual_seed(seed)
    was_training = learner.training
    learner.eval()
    out: dict[str, list[Tensor]] = {}
    device = next(learner.parameters()).device
    try:  # sampling learners (VERSA, PLATIPUS, BMAML) draw the same on every evaluation
        with (torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda"
                                                     else [])):
            torch.manual_seed(seed)  # gradient-based learners still adapt under no_grad
            done = 0
            while done < episodes:
                n = min(batch, episodes - done)
                episode = sampler.sample(n, generator)
                parts = ([episode.task(t) for t in range(n)] if one_at_a_time else [episode])
                for part in parts:
                    with autocast(precision, next(learner.parameters()).device):
                        _, metrics = learner(part)
                    for k, v in metrics.items():  # half precisions to float32, float64 kept
                        v = v.detach().to(torch.promote_types(v.dtype, torch.float32))
                        out.setdefault(k, []).append(v.cpu())
                done += n
    finally:
        learner.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(per_episode: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
    """Mean and 95% CI of each per-episode metric [episodes]; per-episode vectors (the
    reliability bin sums, [episodes, bins]) are pooled elsewhere, not averaged here."""
    return {k: mean_ci95(v) for k, v in per_episode.items() if v.dim() == 1}
