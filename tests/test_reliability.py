"""Runs left alone overnight: one writer per run directory, a full disk, a diverging run, and
logs written to a file that keep every value."""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metabench import files, locking, run
from metabench.checkpoint import load_checkpoint
from metabench.errors import StorageError, TrainingStopped
from metabench.loop import check_divergence

TINY = ["data=synthetic", "data.source.image_size=16", "train.iterations=6", "train.log_every=3",
        "train.eval_every=3", "train.val_episodes=10", "eval.episodes=10", "logger=none"]


def metabench(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = metabench("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (run_dir / locking.OWNER_NAME).exists()  # released at the end
    holder = locking.hold(run_dir, warn=print)  # this process is the live first writer now
    try:
        before = snapshot(run_dir)
        r = metabench("train", *TINY, "train.resume=true", f"hydra.run.dir={run_dir}",
                      cwd=tmp_path)
        assert r.returncode == 2
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: run directory {run_dir.resolve()} is in use by pid "
                         f"{os.getpid()} on host {socket.gethostname()} (since "
                         + lines[0].split("(since ")[1]], r.stderr
        assert snapshot(run_dir) == before  # not even .hydra/ was rewritten
    finally:
        holder.release()
    # a process that died holding the lock leaves its record: the next run takes over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / locking.OWNER_NAME).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    r = metabench("train", *TINY, "train.iterations=9", "train.resume=true",
                  f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"warning: took over the lock of {run_dir.resolve()} from pid {dead.pid}" in r.stderr
    assert "resuming from" in r.stdout and load_checkpoint(
        run_dir / "checkpoints" / "last.pt")["step"] == 9


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, cfg_factory,
                                                               monkeypatch):
    cfg = cfg_factory(*TINY, "train.iterations=9", "train.evaluate_at_end=false")
    saves = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):  # the third checkpoint file (last.pt at step 6 after last+best at 3)
        saves["n"] += 1
        if saves["n"] == 4:  # config.yaml, last.pt, best.pt, then this one
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(StorageError) as e:
        run.train(cfg, tmp_path, say=lambda *_: None)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device (ENOSPC)" in msg
    assert "checkpoints/last.pt" in msg and "previous version of the file is kept" in msg
    blob = load_checkpoint(tmp_path / "checkpoints" / "last.pt")  # intact and loadable
    assert blob["step"] == 3
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # no temp file left behind
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_read_only_cache_folder_is_one_line(tmp_path, monkeypatch):
    from metabench.data.cache import save_cache

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(StorageError, match=r"Read-only file system \(EROFS\)"):
        save_cache({"x": 1}, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_divergence_guard():
    check_divergence(5.0, 1.0, 1e4, step=10)  # worse, but within the bound
    check_divergence(2e5, 1.0, None, step=10)  # bound off
    with pytest.raises(TrainingStopped, match=r"is over 10000 x the first validation loss \(1\)"):
        check_divergence(2e4, 1.0, 1e4, step=10)
    with pytest.raises(TrainingStopped, match="non-finite"):
        check_divergence(float("nan"), None, None, step=10)


class Drifting(torch.nn.Module):
    """A learner whose training pushes w up by 1 a step (SGD, lr 1) and whose validation loss
    is exp(3 w): it grows e^6 = 403x between validations two steps apart, finitely."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, episode):
        n = episode.tasks
        loss = -self.w if self.training else torch.exp(3 * self.w.detach())
        return loss, {"loss": loss.detach().expand(n)}


class Tasks:
    def sample(self, n, generator):
        from metabench.episodes import Episode

        x = torch.zeros(n, 1, 1)
        return Episode(x, x, x, x, ways=0)


@pytest.mark.parametrize("factor, stop", [(100.0, 4), (None, None)])
def test_diverging_run_stops_before_its_weights_are_saved(factor, stop):
    from metabench.loggers import MultiLogger
    from metabench.loop import LoopSettings, fit

    learner, saved = Drifting(), []
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    settings = LoopSettings(iterations=8, meta_batch=1, log_every=2, eval_every=2,
                            val_episodes=1, eval_batch=1, val_seed=0, divergence_factor=factor)

    def save(step, best, is_best, reference, score=None):
        saved.append((step, reference))

    args = (learner, optimizer, None, Tasks(), Tasks(), settings, torch.Generator(),
            MultiLogger(), save)
    if stop is None:  # the guard off: the run goes to the end
        fit(*args)
        assert [s for s, _ in saved] == [2, 4, 6, 8]
        return
    with pytest.raises(TrainingStopped, match=f"at step {stop} is over 100 x the first"):
        fit(*args)
    # the first validation (step 2, loss e^6) is the yardstick; step 4 (e^12) was never saved
    assert saved == [(2, pytest.approx(math.exp(6), rel=1e-5))]


def test_checkpoint_carries_the_divergence_yardstick(tmp_path, cfg_factory):
    cfg = cfg_factory(*TINY, "train.evaluate_at_end=false")
    run.train(cfg, tmp_path, say=lambda *_: None)
    blob = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert blob["val_reference"] == pytest.approx(first["val/loss"])


def test_output_to_a_file_keeps_every_value(tmp_path):
    deep = tmp_path / ("a_rather_long_folder_name_for_a_cluster_scratch_space" * 2) / "run"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with (tmp_path / "train.log").open("w") as log:
        r = subprocess.run([sys.executable, "-m", "metabench", "train", *TINY,
                            f"hydra.run.dir={deep}"], cwd=tmp_path, env=env, stdout=log,
                           stderr=subprocess.PIPE, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "train.log").read_text()
    assert "…" not in text and str(deep) in text  # the run dir in the table, whole
    results = json.loads((deep / "checkpoints" / "results.json").read_text())
    acc = f"{100 * results['mean']:.2f}% +- {100 * results['ci95']:.2f}%"
    result_lines = [ln for ln in text.splitlines() if ln.startswith("result: ")]
    assert result_lines == [f"result: protonet-synthetic-5w1s-seed0: test accuracy {acc} over "
                            f"10 episodes; " + result_lines[0].split("episodes; ", 1)[1]]
    assert str(deep) in result_lines[0]
    with (tmp_path / "report.log").open("w") as log:
        r = subprocess.run([sys.executable, "-m", "metabench", "report", str(deep)],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "report.log").read_text()
    assert "…" not in text and acc in text and "protonet" in text and "synthetic" in text
