"""Data-parallel training: torchrun with 2 CPU processes (gloo) takes the same steps as one
process over the whole meta-batch, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metabench import distributed, run
from metabench.errors import ConfigError

CONFIG = ["algo=maml", "data=synthetic", "data.source.image_size=16", "train.meta_batch=4",
          "train.iterations=4", "train.log_every=2", "train.eval_every=4",
          "train.val_episodes=10", "train.optimizer=sgd", "train.lr=0.1",
          "train.evaluate_at_end=false", "logger=none"]


def train(cwd: Path, run_dir: str, procs: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="150")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable])
    return subprocess.run([*launcher, "-m", "metabench", "train", *CONFIG,
                           f"hydra.run.dir={run_dir}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_equal_one_process(tmp_path: Path):
    one = train(tmp_path, "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = train(tmp_path, "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one/checkpoints/last.pt", weights_only=False)
    b = torch.load(tmp_path / "two/checkpoints/last.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    cfg = OmegaConf.create(a["config"])
    torch.manual_seed(cfg.seed)  # as run.train does: the weights both runs started from
    init = run.build_learner(cfg, run.build_data(cfg)).state_dict()
    # Two ranks sum the meta-gradient in another order than one process (each rank its half,
    # then an all-reduce), so the float32 results differ by rounding only. float32's eps is
    # 1.2e-7 relative to the magnitude of what is summed; here the reductions (second-order
    # MAML over conv maps, 4 steps) lose about sqrt(n) eps to n eps of it, n ~ 1e2-1e3. Measured
    # worst |a - b| / max|a|: 5.3e-6 (AVX2 and default kernels), 2.0e-5 on an AVX-512 machine;
    # the bound 1e-4 keeps 5x over the worst; the "did not train" check below gives it teeth.
    for k, v in a["model"].items():
        scale = v.abs().max().clamp_min(1e-3)
        assert (v - b["model"][k]).abs().max() / scale < 1e-4, k
        if v.is_floating_point() and v.numel() > 1:
            assert not torch.equal(v, init[k]), f"{k} did not train"  # the check has teeth
    # train metrics are all-reduced over both ranks' tasks: the same as the one process's
    ma, mb = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [p["step"] for p in ma] == [p["step"] for p in mb]
    # the same rounding (loss: a mean, rel 1e-4 as above); an accuracy may flip a prediction
    # or two of the hundreds behind it (abs 0.01)
    for pa, pb in zip(ma, mb, strict=True):
        for k, tol in (("train/loss", {"rel": 1e-4}), ("train/acc", {"abs": 0.01}),
                       ("val/acc", {"abs": 0.01})):
            if k in pa:
                assert pb[k] == pytest.approx(pa[k], **tol), (k, pa, pb)
    # rank 1 wrote nothing anywhere: the working dir holds the two run dirs only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert two.stdout.count("metabench train: maml-synthetic") == 1  # rank 0's table only


def test_meta_batch_must_split_evenly(cfg_factory):
    cfg = cfg_factory("algo=maml", "data=synthetic", "train.meta_batch=3", "logger=none")
    with pytest.raises(ConfigError, match=r"train.meta_batch=3 must be a multiple of the 2 "):
        run.prepare(cfg, ("train",), distributed.World(rank=1, size=2))


def test_shard_takes_contiguous_equal_shares():
    from metabench.episodes import Episode

    x = torch.arange(6.0).view(6, 1, 1)
    y = torch.zeros(6, 1, dtype=torch.long)
    ep = Episode(x, y, x + 10, y, ways=1)
    parts = [distributed.shard(ep, distributed.World(rank=r, size=3)) for r in range(3)]
    assert [p.x_support.flatten().tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [p.x_query.flatten().tolist() for p in parts] == [[10, 11], [12, 13], [14, 15]]
