"""Crash safety: a run killed with SIGKILL and resumed ends with the same weights as an
uninterrupted run; Ctrl-C writes a checkpoint; a non-finite loss stops with a clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metabench.checkpoint import load_checkpoint

ARGS = ["data=synthetic", "data.source.image_size=16", "logger=none", "train.iterations=120",
        "train.log_every=5", "train.eval_every=10", "train.val_episodes=10",
        "train.evaluate_at_end=false", "train.lr_decay_every=30"]


def command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metabench", "train", *ARGS, *extra, f"hydra.run.dir={run_dir}"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    metrics = run_dir / "metrics.jsonl"
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if metrics.exists():
            lines = [ln for ln in metrics.read_text().splitlines() if ln.endswith("}")]
            if any("val/acc" in ln and json.loads(ln)["step"] >= step for ln in lines):
                return
        time.sleep(0.05)
    raise AssertionError("the run did not reach the kill point")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    blob = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert blob["step"] == 120
    return blob["model"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    norm = "backbone.norm=running"  # running averages: state a resume must restore bitwise too
    subprocess.run(command(whole, norm), env=env(), check=True, capture_output=True,
                   cwd=tmp_path)

    proc = subprocess.Popen(command(cut, norm), env=env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_step(cut, proc, 40)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = load_checkpoint(cut / "checkpoints" / "last.pt")
    killed_at, first_seconds = killed["step"], killed["seconds"]
    assert 30 <= killed_at < 120

    assert first_seconds > 0
    wall = time.perf_counter()
    r = subprocess.run(command(cut, norm, "train.resume=true"), env=env(), capture_output=True,
                       text=True, cwd=tmp_path)
    wall = time.perf_counter() - wall
    assert r.returncode == 0, r.stderr
    # the training time counts both segments (the killed one up to its last checkpoint)
    seconds = json.loads((cut / "summary.json").read_text())["seconds"]
    assert 0 < seconds - first_seconds < wall
    assert f"resuming from {cut / 'checkpoints' / 'last.pt'} at step {killed_at}" in \
        r.stdout.replace("\n", "")
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys() and any(k.endswith("running_mean") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    # the metrics history has each point once
    steps = [json.loads(ln)["step"] for ln in (cut / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in ln]
    assert steps == sorted(set(steps)) and steps[-1] == 120


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_writes_checkpoint_and_exits_130(tmp_path, sig):
    """Ctrl-C, or SIGTERM as a scheduler sends at its time limit: last.pt holds the step."""
    run_dir = tmp_path / "run"
    # SIGINT may be ignored by whatever started pytest (e.g. a background job), and an
    # ignored disposition is inherited: give the child the default one
    proc = subprocess.Popen(command(run_dir, "train.iterations=100000"), env=env(),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_step(run_dir, proc, 10)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted after step" in err and "train.resume=true" in err
    assert "Traceback" not in err
    step = int(err.split("interrupted after step ")[1].split(";")[0])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step >= 10


def test_sigterm_during_the_final_test_keeps_the_finished_training(tmp_path):
    """A stop while best.pt is being tested: one line, exit 130, the run stays finished."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(command(run_dir, "train.iterations=20", "train.evaluate_at_end=true",
                                    "eval.episodes=100000"), env=env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary = run_dir / "summary.json"
    end = time.time() + 300
    while not summary.exists() and proc.poll() is None and time.time() < end:
        time.sleep(0.05)
    assert summary.exists(), "training did not finish"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted during the test, after training finished" in err
    assert "metabench evaluate checkpoint=" in err and "Traceback" not in err
    assert json.loads(summary.read_text())["finished"] is True
    assert not (run_dir / "checkpoints" / "results.json").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(command(run_dir, "train.lr=1e30", "algo=maml", "train.meta_batch=2",
                               "algo.inner_lr=1e30"),
                       env=env(), capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "became non-finite by step" in r.stderr and "Traceback" not in r.stderr
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():  # whatever was saved holds finite weights
        blob = load_checkpoint(last)
        assert all(torch.isfinite(v).all() for v in blob["model"].values())


def test_resume_continues_the_same_wandb_run(tmp_path):
    from wandb_records import history, run_info

    run_dir = tmp_path / "run"
    offline = {**env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    offline.pop("WANDB_API_KEY", None)
    base = command(run_dir, "logger=wandb", "train.iterations=20")
    subprocess.run(base, env=offline, check=True, capture_output=True, cwd=tmp_path)
    more = [a.replace("train.iterations=20", "train.iterations=40") for a in base]
    subprocess.run([*more, "train.resume=true"], env=offline, check=True, capture_output=True,
                   cwd=tmp_path)
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    ids = {run_info(f).run_id for f in files}
    assert len(ids) == 1  # one W&B run, continued
    steps = [row["_step"] for row in history(files[1]) if "train/loss" in row]
    assert steps and min(steps) > 20 and max(steps) == 40
