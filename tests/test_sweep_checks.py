"""Sweeps check every job before the first starts, survive a failed or killed job, end with a
line counting failures, and `metabench report` accounts for every job the sweep planned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["data=synthetic", "data.source.image_size=16", "train.iterations=6", "train.log_every=3",
        "train.eval_every=3", "train.val_episodes=10", "eval.episodes=10", "logger=none"]


def metabench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit": ["hydra/launcher=submitit_local"],
    "optuna": ["search=maml_optuna", "algo=maml", "hydra.sweeper.n_trials=2"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_invalid_job_stops_the_sweep_before_any_job(launcher, tmp_path):
    if launcher != "basic":
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # 5000 ways exceed every split: one line per problem (train, val, test), naming the job
    ways = "data.ways=5000" if launcher == "optuna" else "data.ways=5,5000,10"
    sweep = tmp_path / "sweep"
    r = metabench("train", "-m", *LAUNCHERS[launcher], *TINY, ways, f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 3, r.stderr
    job = ("error: job 0 (algo.inner_lr=" if launcher == "optuna"
           else "error: job 1 (data.ways=5000): ")
    assert all(ln.startswith(job) for ln in lines), lines
    assert "data.train_ways=5000 exceeds the 64 classes of the synthetic train split" in lines[0]
    assert "Traceback" not in r.stderr
    assert not sweep.exists()  # nothing started, no folder made
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_failed_job_does_not_stop_the_others_and_is_counted(tmp_path):
    sweep = tmp_path / "sweep"  # lr 1e25: the weights overflow in the first steps
    r = metabench("train", "-m", *TINY, "train.lr=0.001,1e25,0.002", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == (f"error: 1 of 3 jobs failed; `metabench report {sweep}` "
                                         "lists every job with its status")
    assert "error: job 1 (train.lr=1e+25): training loss or weights became non-finite" in r.stderr
    for job in ("0_", "2_"):  # the jobs after the failed one ran to the end
        (done,) = sweep.glob(f"{job}*/checkpoints/results.json")
        assert json.loads(done.read_text())["episodes"] == 10
    rep = metabench("report", str(sweep), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "failed" in rep.stdout and "non-finite by step 3" in rep.stdout


SITECUSTOMIZE = '''
import os, signal
if os.environ.get("KILL_SEED"):  # the job with this seed dies at once, as if OOM-killed
    from metabench import run
    _train = run.train
    def train(cfg, *args, **kwargs):
        if int(cfg.seed) == int(os.environ["KILL_SEED"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return _train(cfg, *args, **kwargs)
    run.train = train
'''


def test_killed_job_is_listed_with_its_status(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    sweep = tmp_path / "sweep"
    env = {"KILL_SEED": "1",
           "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = metabench("train", "-m", "hydra/launcher=submitit_local", *TINY, "seed=0,1,2",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "did not return" in r.stderr.splitlines()[-1]  # one closing line, no traceback
    assert "Traceback" not in r.stderr
    deadline = time.monotonic() + 300  # the jobs started beside the killed one run to the end
    while len(list(sweep.glob("*/summary.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    (killed,) = sweep.glob("1_*")
    assert not (killed / "config.yaml").exists()  # it wrote nothing of its own
    rep = metabench("report", str(sweep), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    rows = {row["run"]: row["status"] for row in _csv(sweep / "report.csv")}
    assert sorted(rows.values()) == ["finished", "finished", "killed"], rows
    assert any(run.startswith(str(killed)) and s == "killed" for run, s in rows.items())
    # a job whose folder is gone entirely (never started) is still listed
    import shutil

    shutil.rmtree(next(sweep.glob("2_*")))
    rows = {row["run"]: row["status"] for row in _csv(_report(sweep, tmp_path))}
    assert sorted(rows.values()) == ["finished", "killed", "not started"], rows
    assert any("(job 2: seed=2)" in run for run, s in rows.items() if s == "not started")


def _report(sweep: Path, cwd: Path) -> Path:
    rep = metabench("report", str(sweep), cwd=cwd)
    assert rep.returncode == 0, rep.stderr
    assert "not started" in rep.stdout
    return sweep / "report.csv"


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))
