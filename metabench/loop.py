"""THE meta-training loop: sample a meta-batch, take a loss from the learner, step the
optimiser; log, validate and checkpoint on a schedule. It knows nothing of any algorithm."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from metabench.algorithms.base import MetaLearner
from metabench.distributed import SINGLE, World, average_gradients, average_values, shard
from metabench.errors import Interrupted, TrainingStopped
from metabench.evaluation import run_episodes, summarize
from metabench.loggers import Logger
from metabench.precision import autocast, grad_scaler


@dataclass
class LoopSettings:
    iterations: int
    meta_batch: int
    log_every: int
    eval_every: int
    val_episodes: int
    eval_batch: int
    val_seed: int
    grad_clip: float = 0.0
    precision: str = "fp32"
    world: World = SINGLE  # torchrun: each rank trains on its share of the meta-batch
    # stop when a validation loss exceeds this many times the first one (None: no bound)
    divergence_factor: float | None = 1e4


def fit(learner: MetaLearner, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, train_sampler, val_sampler,
        settings: LoopSettings, generator: torch.Generator, logger: Logger,
        save: Callable[..., None], start_step: int = 0,
        best_val: float = -math.inf, on_step: Callable[[int, dict[str, float]], None] | None = None,
        val_reference: float | None = None) -> dict[str, Any]:
    """Train from ``start_step`` to ``settings.iterations``; returns the best validation score.

    ``save(step, best_val, is_best, val_reference, score=)`` writes checkpoints (``score``: this
    validation's, for the kept top-k; absent on Ctrl-C); the validation score is
    accuracy for classification and minus the loss for regression, so higher is always better;
    ``val_reference`` is the first validation loss, the divergence guard's yardstick (kept in
    checkpoints for resume). Ctrl-C saves the last finished step before stopping; a non-finite
    training loss, or a validation loss that is non-finite or past ``divergence_factor`` times
    the first, stops without saving. Under torchrun only rank 0 validates (the others wait for
    it in the next all-reduce).
    """
    world = settings.world
    learner.train()
    running: dict[str, torch.Tensor] = {}
    seen, done = 0, start_step
    device = next(learner.parameters()).device
    scaler = grad_scaler(settings.precision, device)
    try:
        for step in range(start_step + 1, settings.iterations + 1):
            episode = train_sampler.sample(settings.meta_batch, generator)
            if world.distributed:
                episode = shard(episode, world)
            with autocast(settings.precision, device):
                loss, metrics = learner(episode)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(learner.parameters(), world)
            if settings.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(learner.parameters(), settings.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            for k, v in metrics.items():  # summed on the device: no host sync between log points
                running[k] = running.get(k, 0) + v.detach().mean()
            seen += 1
            done = step

            last = step == settings.iterations
            shown: dict[str, float] = {}
            if step % settings.log_every == 0 or last:
                means = average_values({k: v / seen for k, v in running.items()}, world)
                point = {f"train/{k}": v.item() for k, v in means.items()}
                check_finite(point.values(), step)
                point["train/lr"] = optimizer.param_groups[0]["lr"]
                logger.log(point, step)
                running, seen = {}, 0
                shown.update(point)
            if (step % settings.eval_every == 0 or last) and world.is_main:
                check_finite([torch.stack([p.detach().sum() for p in learner.parameters()]).sum()
                              .item()], step)
                val = summarize(run_episodes(learner, val_sampler, settings.val_episodes,
                                             settings.eval_batch, settings.val_seed,
                                             settings.precision))
                val_loss = val["loss"][0]
                check_divergence(val_loss, val_reference, settings.divergence_factor, step)
                if val_reference is None:
                    val_reference = val_loss
                point = {f"val/{k}": m for k, (m, _) in val.items()}
                point.update({f"val/{k}_ci95": c for k, (_, c) in val.items()})
                score = val["acc"][0] if "acc" in val else -val["loss"][0]
                is_best = score > best_val
                best_val = max(best_val, score)
                point["val/best"] = best_val if "acc" in val else -best_val
                save(step, best_val, is_best, val_reference, score=score)  # before the log
                logger.log(point, step)
                shown.update(point)
            if on_step:
                on_step(step, shown)
    except KeyboardInterrupt:
        save(done, best_val, False, val_reference)
        raise Interrupted(f"interrupted after step {done}; checkpoints/last.pt holds it: resume "
                          "with train.resume=true and the same hydra.run.dir") from None
    return {"best_val": best_val}


def check_finite(values, step: int) -> None:
    if not all(math.isfinite(v) for v in values):
        raise TrainingStopped(f"training loss or weights became non-finite by step {step}; "
                              "stopped, the last good checkpoint is kept")


def check_divergence(loss: float, reference: float | None, factor: float | None,
                     step: int) -> None:
    """A run whose validation loss is non-finite, or ``factor`` times its first one, diverged:
    stop before its weights are saved, so ``last.pt`` and ``best.pt`` stay the last good ones."""
    if not math.isfinite(loss):
        raise TrainingStopped(f"validation loss became non-finite ({loss}) at step {step}; "
                              "stopped, the last good checkpoint is kept")
    if factor is not None and reference is not None and loss > factor * abs(reference):
        raise TrainingStopped(
            f"validation loss {loss:.4g} at step {step} is over {factor:g} x the first "
            f"validation loss ({reference:.4g}): the run diverged; stopped, the last good "
            "checkpoint is kept (train.divergence_factor sets the bound, null turns it off)")
