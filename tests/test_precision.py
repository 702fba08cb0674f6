"""train.precision=bf16 on CPU: accepted only where the CPU computes bf16 natively (refused in one
line elsewhere), the same autocast scope in training and evaluation, fp32 master weights."""

from __future__ import annotations

import pytest
import torch

from metabench import checks, run
from metabench.errors import ConfigError
from metabench.evaluation import run_episodes

TINY = ["data=synthetic", "data.source.image_size=16", "train.iterations=4", "train.log_every=2",
        "train.eval_every=4", "train.val_episodes=5", "eval.episodes=5", "logger=none",
        "device=cpu", "train.precision=bf16"]


def test_bf16_refused_where_the_cpu_would_emulate_it(cfg_factory, monkeypatch):
    monkeypatch.setattr(checks, "native_bf16_cpu", lambda: False)
    with pytest.raises(ConfigError) as e:
        run.prepare(cfg_factory(*TINY), ("train",))
    assert str(e.value) == (
        "train.precision=bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); this CPU "
        f"({torch.backends.cpu.get_cpu_capability()}) would emulate it, slower than fp32: use "
        "train.precision=fp32")
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA device"):
        run.prepare(cfg_factory(*TINY, "train.precision=fp16"), ("train",))


def test_bf16_trains_and_evaluates_under_autocast_with_fp32_weights(tmp_path, cfg_factory,
                                                                     monkeypatch):
    # where the CPU has no native bf16 this runs emulated (slow but the same numerics path)
    monkeypatch.setattr(checks, "native_bf16_cpu", lambda: True)
    cfg = cfg_factory(*TINY)
    out = run.train(cfg, tmp_path, say=lambda *_: None)
    assert 0.0 <= out["test"]["mean"] <= 1.0
    data, learner, device = run.prepare(cfg, ("test",))
    seen = []
    first = next(m for m in learner.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    sampler = run.sampler(cfg, data, "test", device)
    run_episodes(learner, sampler, 2, 2, seed=0, precision="bf16")
    assert seen and set(seen) == {torch.bfloat16}  # evaluation in bf16 too
    run_episodes(learner, sampler, 2, 2, seed=0, precision="fp32")
    assert seen[-1] == torch.float32
    blob = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in blob["model"].values()
               if v.is_floating_point())  # master weights stay fp32
