"""Sweeps through Hydra's plugins: the joblib launcher (2 runs in parallel), submitit's local
executor, and the Optuna sweeper example (search=maml_optuna)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = ["data=synthetic", "data.source.image_size=16", "train.iterations=6",
        "train.eval_every=6", "train.val_episodes=20", "eval.episodes=30", "logger=none"]


def metabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "150"}
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def results(sweep: Path) -> dict[int, dict]:
    """shots -> results.json of each run of a sweep over data.shots."""
    out = {}
    for path in sorted(sweep.glob("*/checkpoints/results.json")):
        r = json.loads(path.read_text())
        out[r["shots"]] = r
    return out


def test_joblib_and_submitit_local_run_every_setting(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    jl = metabench("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "data.shots=1,5", *TINY, f"hydra.sweep.dir={tmp_path / 'joblib'}",
                   cwd=tmp_path)
    assert jl.returncode == 0, jl.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in jl.stdout + jl.stderr
    sl = metabench("train", "-m", "hydra/launcher=submitit_local", "data.shots=1,5", *TINY,
                   f"hydra.sweep.dir={tmp_path / 'submitit'}", cwd=tmp_path)
    assert sl.returncode == 0, sl.stderr[-2000:]
    a, b = results(tmp_path / "joblib"), results(tmp_path / "submitit")
    assert sorted(a) == sorted(b) == [1, 5]
    for shots in (1, 5):  # each launcher ran the same seeded setting: the same test numbers
        assert a[shots]["mean"] == b[shots]["mean"] and a[shots]["episodes"] == 30
    assert any((tmp_path / "submitit" / ".submitit").iterdir())  # submitit's job folders


def test_slurm_launcher_config_composes(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = metabench("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                  "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout.split("\n", 1)[1])  # first line: "# @package hydra.launcher"
    assert cfg["_target_"].endswith("SlurmLauncher")
    assert (cfg["partition"], cfg["gpus_per_node"], cfg["timeout_min"]) == ("gpu", 1, 240)


def test_optuna_search_maximises_validation_accuracy(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    r = metabench("train", "-m", "algo=maml", "search=maml_optuna", "hydra.sweeper.n_trials=3",
                  "backbone=mlp", "backbone.hidden=[32]", "data=synthetic",
                  "data.source.image_size=8",
                  "train.meta_batch=2", *TINY[2:], f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = []
    for run in sorted(p for p in sweep.iterdir() if (p / "summary.json").exists()):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        score = json.loads((run / "summary.json").read_text())["best_val"]
        trials.append((score, cfg["algo"]["inner_lr"], cfg["algo"]["inner_steps"]))
        assert not (run / "checkpoints" / "results.json").exists()  # trials skip the test split
    assert len(trials) == 3
    assert len({(lr, steps) for _, lr, steps in trials}) == 3  # three different proposals
    top = max(trials)
    assert best["best_value"] == pytest.approx(top[0])
    assert best["best_params"]["algo.inner_lr"] == pytest.approx(top[1])
    assert best["best_params"]["algo.inner_steps"] == top[2]
    assert all(0.01 <= lr <= 1.0 and 1 <= steps <= 4 for _, lr, steps in trials)
