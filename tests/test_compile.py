"""train.compile: the learner runs through torch.compile (Dynamo), checkpoints keep the plain
module's keys, and training takes the same steps as without it."""

from __future__ import annotations

import torch

from metabench import run
from metabench.checkpoint import load_checkpoint


def test_compiled_training_matches_eager(cfg_factory, tmp_path, monkeypatch):
    compiled = []

    def eager_backend_compile(module):  # real Dynamo tracing, no C++ toolchain needed
        compiled.append(module)
        return torch._dynamo.optimize("eager")(module)

    overrides = ["data=synthetic", "logger=none", "data.source.image_size=16",
                 "train.iterations=4", "train.eval_every=4", "train.val_episodes=10",
                 "train.evaluate_at_end=false", "backbone.norm=none"]
    run.train(cfg_factory(*overrides), tmp_path / "eager", say=lambda *_: None)
    monkeypatch.setattr(torch, "compile", eager_backend_compile)
    run.train(cfg_factory(*overrides, "train.compile=true"), tmp_path / "compiled",
              say=lambda *_: None)
    assert len(compiled) == 1
    a = load_checkpoint(tmp_path / "eager/checkpoints/last.pt")["model"]
    b = load_checkpoint(tmp_path / "compiled/checkpoints/last.pt")["model"]
    assert list(a) == list(b)  # no "_orig_mod." prefix: the checkpoint loads without compile
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
