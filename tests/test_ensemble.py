"""The top-k kept checkpoints and their ensemble at test (MAML++'s protocol): the k best by
validation score stay, best first; an ensemble of identical members is the single model; a
run keeps them and ``eval.ensemble_top`` averages them into results_top<k>.json; asking for
more than were kept is one line before any work."""

from __future__ import annotations

import json

import pytest
import torch
from test_maml import tiny_episode

from metabench import run
from metabench.algorithms.maml import MAML
from metabench.backbones.mlp import MLP
from metabench.ensemble import Ensemble, keep_top, top_index
from metabench.errors import ConfigError


def test_keep_top_keeps_the_k_best_best_first(tmp_path):
    for step, score in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (5, 0.55), (6, 0.7)]:
        keep_top(tmp_path, 3, step, score, {"step": step})
    entries = top_index(tmp_path / "top")
    assert [(e["step"], e["score"]) for e in entries] == [(4, 0.9), (2, 0.7), (6, 0.7)]
    assert sorted(p.name for p in (tmp_path / "top").glob("*.pt")) == [
        "step00000002.pt", "step00000004.pt", "step00000006.pt"]


def test_ensemble_of_identical_members_is_the_single_model():
    torch.manual_seed(0)
    learner = MAML(MLP((4,), hidden=(8,)), "classification", 3).double().eval()
    ensemble = Ensemble([learner, learner]).eval()
    ep = tiny_episode()
    with torch.no_grad():
        single, both = learner(ep)[1], ensemble(ep)[1]
    assert torch.allclose(single["acc"], both["acc"])
    assert torch.allclose(single["nll"], both["nll"], atol=1e-10)


FAST = ["algo=protonet", "data=synthetic", "logger=none", "data.source.image_size=16",
        "train.iterations=40", "train.eval_every=10", "train.val_episodes=10",
        "eval.episodes=20", "train.keep_top=3"]


def test_a_run_keeps_its_top_checkpoints_and_evaluate_averages_them(cfg_factory, tmp_path):
    run.train(cfg_factory(*FAST), tmp_path, say=lambda *_: None)
    ckpt_dir = tmp_path / "checkpoints"
    entries = top_index(ckpt_dir / "top")
    assert len(entries) == 3 and entries[0]["score"] >= entries[-1]["score"]
    assert {e["step"] for e in entries} <= {10, 20, 30, 40}
    best = run.load_checkpoint(ckpt_dir / "best.pt")
    assert best["step"] == entries[0]["step"]
    cfg = cfg_factory(*FAST, "eval.ensemble_top=3")
    results = run.evaluate(cfg, ckpt_dir / "best.pt", best, say=lambda *_: None)
    saved = json.loads((ckpt_dir / "results_top3.json").read_text())
    assert saved["mean"] == results["mean"] and len(saved["ensemble"]) == 3
    assert json.loads((ckpt_dir / "results.json").read_text()).get("ensemble") is None
    with pytest.raises(ConfigError, match=r"eval.ensemble_top=4: .* holds 3 checkpoint"):
        run.evaluate(cfg_factory(*FAST, "eval.ensemble_top=4"), ckpt_dir / "best.pt", best)
