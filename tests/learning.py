"""Shared learning check: test accuracy on synthetic data before and after a short training."""

from __future__ import annotations

import torch

from metabench import run
from metabench.evaluation import run_episodes, summarize

FAST = ["data=synthetic", "logger=none", "data.source.image_size=16", "data.source.noise=0.9",
        "train.eval_every=1000", "train.val_episodes=50", "eval.episodes=100", "eval.batch=50"]


def train_and_compare(cfg_factory, tmp_path, *overrides: str) -> tuple[float, float]:
    cfg = cfg_factory(*FAST, *overrides)
    torch.manual_seed(cfg.seed)  # as run.train does: "before" is the init training starts from
    data, learner, device = run.prepare(cfg, ("test",))
    test = data.sampler("test", run.episode_spec(cfg, False), device)
    before = summarize(run_episodes(learner, test, cfg.eval.episodes, cfg.eval.batch,
                                    cfg.eval.seed))["acc"][0]
    out = run.train(cfg, tmp_path, say=lambda *_: None)
    return before, out["test"]["mean"]
