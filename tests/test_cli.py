"""The CLI end to end (train -> checkpoints -> evaluate -> results.json, W&B offline history)
and bad input: one clear line, a non-zero exit, no traceback, nothing existing touched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from wandb_records import history, run_info, summary

from metabench.checkpoint import load_checkpoint

FAST = ["data=synthetic", "data.source.image_size=16", "train.iterations=30",
        "train.log_every=10", "train.eval_every=15", "train.val_episodes=20",
        "eval.episodes=40", "eval.batch=20"]


def metabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "200"}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One ProtoNet run with W&B offline, shared by the checks below."""
    root = tmp_path_factory.mktemp("cli")
    run_dir = root / "run"
    r = metabench("train", *FAST, "logger=wandb", f"hydra.run.dir={run_dir}", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, run_dir, r


def test_train_writes_config_metrics_checkpoints(trained):
    _, run_dir, r = trained
    cfg = (run_dir / "config.yaml").read_text()
    assert "name: protonet" in cfg and "iterations: 30" in cfg and "${" not in cfg
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "train/loss" in x] == [10, 20, 30]
    assert [x["step"] for x in rows if "val/acc" in x] == [15, 30]
    blob = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert blob["step"] == 30 and blob["config"]["algo"]["name"] == "protonet"
    assert {"model", "optimizer", "rng", "best_val"} <= set(blob)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    best_val = max(x["val/acc"] for x in rows if "val/acc" in x)
    assert best["best_val"] == pytest.approx(best_val)
    assert "metabench train: protonet-synthetic-5w1s-seed0" in r.stdout


def test_wandb_offline_run_holds_history(trained):
    _, run_dir, r = trained
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = history(files[0])
    steps = [row["_step"] for row in rows if "train/loss" in row]
    assert steps == [x["step"] for x in logged if "train/loss" in x]
    val = [row["val/acc"] for row in rows if "val/acc" in row]
    assert val == pytest.approx([x["val/acc"] for x in logged if "val/acc" in x])
    info = run_info(files[0])
    assert info.display_name == "protonet-synthetic-5w1s-seed0"
    assert {"protonet", "synthetic", "5-way", "1-shot"} <= set(info.tags)
    assert "wandb sync" in r.stdout
    final = summary(files[0])  # the test result with the protocol it was measured under
    assert final["protocol/transductive"] is True and final["protocol/norm"] == "batch"
    assert final["protocol/episodes"] == 40 and "test/accuracy" in final


def test_evaluate_results_are_deterministic_and_complete(trained):
    root, run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "best.pt"
    results = ckpt.parent / "results.json"
    outs = []
    for _ in range(2):
        r = metabench("evaluate", f"checkpoint={ckpt}", "eval.episodes=60", "logger=none",
                      cwd=root)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(results.read_text()))
    assert outs[0] == outs[1]
    res = outs[0]
    assert res["metric"] == "accuracy" and 0.0 <= res["mean"] <= 1.0 and res["ci95"] > 0
    assert (res["episodes"], res["ways"], res["shots"]) == (60, 5, 1)
    assert (res["algo"], res["data"]) == ("protonet", "synthetic")
    assert "95% CI" in r.stdout and f"{100 * res['mean']:.2f}%" in r.stdout


def test_evaluate_in_another_setting_keeps_the_runs_own_result(trained):
    root, run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "best.pt"
    own = ckpt.parent / "results.json"
    before = own.read_text() if own.exists() else None
    r = metabench("evaluate", f"checkpoint={ckpt}", "data.ways=10", "data.shots=5",
                  "eval.episodes=20", "logger=none", cwd=root)
    assert r.returncode == 0, r.stderr
    other = ckpt.parent / "results_10w5s.json"
    res = json.loads(other.read_text())
    assert (res["ways"], res["shots"], res["episodes"]) == (10, 5, 20)
    assert (own.read_text() if own.exists() else None) == before
    assert "results_10w5s.json" in r.stdout.replace("\n", "")


def test_help_lists_commands_and_groups(tmp_path):
    r = metabench("--help", cwd=tmp_path)
    assert r.returncode == 0
    for word in ("train", "evaluate", "algo:", "maml", "protonet", "omniglot", "conv4",
                 "quick/protonet_omniglot", "paper/<algo>_omniglot_", "aliases"):
        assert word in r.stdout


# --- bad input ---------------------------------------------------------------------------

def metabench_in_process(*args: str, cwd: Path, capfd, monkeypatch
                         ) -> subprocess.CompletedProcess:
    """``metabench ARGS`` run by ``cli.main`` in this process (no interpreter start-up: the
    bad-input cases are many and each fails within a second); the same exit code and output
    as the command. ``test_real_process_exit_code_and_output`` checks the two agree."""
    from hydra.core.global_hydra import GlobalHydra

    from metabench import cli

    monkeypatch.chdir(cwd)
    capfd.readouterr()
    GlobalHydra.instance().clear()
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["metabench", *args], code, out, err)


@pytest.fixture(scope="module")
def bad_env(tmp_path_factory):
    """A small Omniglot, a MAML checkpoint, a truncated checkpoint and an existing run."""
    from helpers import write_omniglot_zip

    root = tmp_path_factory.mktemp("bad")
    omni = root / "omni"
    omni.mkdir()
    write_omniglot_zip(omni / "images_background.zip", "images_background",
                       {"A": 3, "B": 2, "C": 2})
    write_omniglot_zip(omni / "images_evaluation.zip", "images_evaluation", {"D": 3})
    run = root / "maml"
    r = metabench("train", *FAST, "algo=maml", "train.meta_batch=2", "logger=none",
                  "train.evaluate_at_end=false", f"hydra.run.dir={run}", cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    good = run / "checkpoints" / "last.pt"
    (root / "truncated.pt").write_bytes(good.read_bytes()[:5000])
    (root / "foreign.pt").write_bytes(b"hello")
    torch.save({"weights": torch.zeros(2)}, root / "other.pt")
    return root, omni, good


OMNI = ["data=omniglot", "data.split=background", "logger=none"]

BAD = {
    "unknown algo": (["train", "algo=nope"], "Could not find 'algo/nope'"),
    "unknown data": (["train", "data=nope"], "Could not find 'data/nope'"),
    "unknown backbone": (["train", "backbone=nope"], "Could not find 'backbone/nope'"),
    "unknown key": (["train", "train.iteratons=5"], "iteratons"),
    "shots+queries > 20": (["train", *OMNI, "data.shots=10", "data.queries=15"],
                           "= 25 exceeds the 20 images per class of omniglot"),
    "ways > classes": (["train", *OMNI, "data.ways=50"],
                       "data.ways=50 exceeds the 12 classes of the omniglot test split"),
    "train ways > classes": (["train", *OMNI, "data.train_ways=21"],
                             "data.train_ways=21 exceeds the 20 classes"),
    "zero ways": (["train", *OMNI, "data.ways=0"], "data.ways=0 must be a positive integer"),
    "negative iterations": (["train", "data=synthetic", "train.iterations=-5"],
                            "train.iterations=-5 must be a positive integer"),
    "wrong type": (["train", "data=synthetic", "train.meta_batch=abc"],
                   "train.meta_batch=abc must be a positive integer"),
    "missing dataset": (["train", "data=omniglot", "data.root=/nonexistent/omniglot"],
                        "Omniglot not found: place images_background.zip and "
                        "images_evaluation.zip"),
    "protonet on regression": (["train", "data=sinusoid", "backbone=mlp"],
                               "algo=protonet does not handle regression data"),
    "conv4 on vectors": (["train", "algo=maml", "data=sinusoid", "backbone=conv4"],
                         "backbone: conv4 needs image input"),
    "evaluate without checkpoint": (["evaluate"], "evaluate needs checkpoint=PATH"),
    "missing checkpoint": (["evaluate", "checkpoint=nope.pt"], "checkpoint nope.pt does not exist"),
    "truncated checkpoint": (["evaluate", "checkpoint=truncated.pt"],
                             "checkpoint truncated.pt is truncated or unreadable"),
    "foreign file": (["evaluate", "checkpoint=foreign.pt"], "truncated or unreadable"),
    "foreign checkpoint": (["evaluate", "checkpoint=other.pt"],
                           "other.pt is not a metabench checkpoint"),
    "maml other ways": (["evaluate", "checkpoint=GOOD", "data.ways=3"],
                        "algo=maml has a fixed 5-way head"),
    "evaluate unknown key": (["evaluate", "checkpoint=GOOD", "eval.nope=3"], "nope"),
    "unknown command": (["trian"], "unknown command 'trian'"),
    "bad precision": (["train", "data=synthetic", "train.precision=fp8"],
                      "train.precision=fp8 is not one of: fp32, bf16, fp16"),
    "unknown experiment": (["train", "experiment=nope"], "Could not find 'experiment/nope'"),
    "unknown logger": (["train", "logger=nope"], "Could not find 'logger/nope'"),
    "unknown algo key": (["train", "algo.inner_lrr=0.1"], "Could not override 'algo.inner_lrr'"),
    "extra algo key": (["train", "data=synthetic", "+algo.foo=3"],
                       "got an unexpected keyword argument 'foo'"),
    "bad device": (["train", "data=synthetic", "device=tpu"],
                   "device=tpu is not one of: auto, cpu, cuda, cuda:N"),
    "bad split": (["train", *OMNI, "data.split=nope"],
                  "data.split=nope is not one of: vinyals, background"),
    "bad norm": (["train", "data=synthetic", "backbone.norm=group"],
                 "backbone: backbone.norm=group is not one of: batch, running, support, none"),
    "norm the algo cannot do": (["train", "data=synthetic", "algo=maml", "backbone.norm=running"],
                                "algo=maml does not support backbone.norm=running"),
    "bad inner lr": (["train", "data=synthetic", "algo=maml", "algo.inner_lr=abc"],
                     "algo: algo.inner_lr=abc must be a positive number"),
    "bad inner steps": (["train", "data=synthetic", "algo=maml", "algo.inner_steps=-1"],
                        "algo: algo.inner_steps=-1 must be a non-negative integer"),
    "zero eval episodes": (["train", "data=synthetic", "eval.episodes=0"],
                           "eval.episodes=0 must be a positive integer"),
    "zero eval_every": (["train", "data=synthetic", "train.eval_every=0"],
                        "train.eval_every=0 must be a positive integer"),
    "queries not a number": (["train", "data=synthetic", "data.queries=abc"],
                             "data.queries=abc must be a positive integer"),
    "evaluate negative episodes": (["evaluate", "checkpoint=GOOD", "eval.episodes=-1"],
                                   "eval.episodes=-1 must be a positive integer"),
    "evaluate bare word": (["evaluate", "GOOD"], "expected key=value overrides"),
    "lr beyond float32": (["train", "data=synthetic", "train.lr=1e38"],
                          "train.lr=1e+38 is out of range: training computes in float32"),
    "negative lr": (["train", "data=synthetic", "train.lr=-0.1"],
                    "train.lr=-0.1 must be a number greater than 0"),
    "nan inner lr": (["train", "data=synthetic", "algo=maml", "algo.inner_lr=nan"],
                     "algo.inner_lr=nan must be a finite number"),
    "bad divergence factor": (["train", "data=synthetic", "train.divergence_factor=0.5"],
                              "train.divergence_factor=0.5 must be a number above 1"),
    "evaluate unknown logger": (["evaluate", "checkpoint=GOOD", "logger=nope"],
                                "logger=nope is not one of: none, wandb"),
}


# one line per problem: data.train_* follow data.*, and every split is checked
LINES = {"zero ways": 2, "shots+queries > 20": 2, "ways > classes": 3,
         "queries not a number": 2}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_nonzero_exit(case, bad_env, capfd, monkeypatch):
    root, omni, good = bad_env
    args, expected = BAD[case]
    args = [a.replace("GOOD", str(good)) for a in args]
    if "data=omniglot" in args and "data.root=/nonexistent/omniglot" not in args:
        args.append(f"data.root={omni}")
    run_dir = root / "runs" / re.sub(r"\W+", "_", case)
    if args[0] == "train":
        args.append(f"hydra.run.dir={run_dir}")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    r = metabench_in_process(*args, cwd=root, capfd=capfd, monkeypatch=monkeypatch)
    assert r.returncode == 2
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    if not any(hydra in r.stderr for hydra in ("Could not", "Key 'iteratons'")):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert all(ln.startswith("error:") for ln in lines), r.stderr
        assert len(lines) == LINES.get(case, 1), r.stderr
    assert not run_dir.exists()  # validation failed before a run folder was kept
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p in before}
    assert after == before  # nothing that existed was modified


@pytest.mark.parametrize("case", ["wrong type", "unknown algo", "truncated checkpoint"])
def test_real_process_exit_code_and_output(case, bad_env, capfd, monkeypatch):
    """The command itself gives what the in-process runner of the cases above gives."""
    root, _, good = bad_env
    args = [a.replace("GOOD", str(good)) for a in BAD[case][0]]
    if args[0] == "train":
        args.append(f"hydra.run.dir={root / 'runs' / 'real'}")
    real = metabench(*args, cwd=root)
    inproc = metabench_in_process(*args, cwd=root, capfd=capfd, monkeypatch=monkeypatch)
    assert real.returncode == inproc.returncode == 2
    assert BAD[case][1] in real.stderr
    assert [ln for ln in real.stderr.splitlines() if ln.startswith("error:")] == \
        [ln for ln in inproc.stderr.splitlines() if ln.startswith("error:")]


def test_hydra_composition_errors_exit_2(tmp_path):
    r = metabench("train", "algo=nope", cwd=tmp_path)
    assert r.returncode == 2 and "Available options in 'algo'" in r.stderr


def test_wandb_failure_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    import wandb

    from metabench.loggers import WandbLogger

    def broken_init(**kwargs):
        raise RuntimeError("api key rejected")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B disabled for this run: api key rejected"):
        lg = WandbLogger(tmp_path, {}, project="p", name="n", group=None, tags=[])
    lg.log({"train/loss": 1.0}, step=1)  # no-ops, no exception
    lg.summary({"val/best": 0.5})
    lg.close()
    assert lg.run is None
