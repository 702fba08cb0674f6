"""`metabench evaluate ... data=NAME`: a checkpoint tested on another dataset (a rule
meta-trained on one dataset, tested on digits), its result beside the run's own, and the one
line when the dataset or its input size does not fit."""

from __future__ import annotations

import json

from metabench import cli, run

BASE = ["data=synthetic", "data.source.image_size=8", "logger=none", "data.shots=2",
        "data.train_shots=2", "data.queries=2", "data.train_queries=2", "train.iterations=2",
        "train.eval_every=2", "train.val_episodes=2", "eval.episodes=4", "eval.batch=2"]


def test_a_rule_is_tested_on_digits_beside_its_own_result(cfg_factory, tmp_path, capsys):
    run.train(cfg_factory("algo=sgd_scratch", "algo.report_steps=[1,3]", *BASE), tmp_path,
              say=lambda *_: None)
    ckpt = tmp_path / "checkpoints" / "best.pt"
    own = (tmp_path / "checkpoints" / "results.json").read_text()
    code = cli.main(["evaluate", f"checkpoint={ckpt}", "data=digits", "data.image_size=10",
                     "data.shots=2", "data.queries=3", "eval.episodes=4", "logger=none"])
    assert code == 0, capsys.readouterr()
    got = json.loads((tmp_path / "checkpoints" / "results_digits.json").read_text())
    assert got["data"] == "digits" and got["algo"] == "sgd_scratch"
    assert (got["ways"], got["shots"], got["queries"]) == (5, 2, 3)
    assert {"step1", "step3"} <= set(got)  # the per-step record on the new dataset too
    assert (tmp_path / "checkpoints" / "results.json").read_text() == own  # kept
    out = capsys.readouterr().out
    assert "results_digits.json" in out and "after inner step 1: " in out and ", 3: " in out


def test_unknown_dataset_or_wrong_input_size_is_one_line(cfg_factory, tmp_path, capsys):
    run.train(cfg_factory("algo=protonet", "backbone=mlp", "backbone.hidden=[8]", *BASE),
              tmp_path, say=lambda *_: None)
    ckpt = tmp_path / "checkpoints" / "best.pt"
    assert cli.main(["evaluate", f"checkpoint={ckpt}", "data=mnist"]) != 0
    err = capsys.readouterr().err
    assert "data=mnist is not one of:" in err and "digits" in err
    assert cli.main(["evaluate", f"checkpoint={ckpt}", "data=digits", "logger=none"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not fit data=digits with input shape (1, 28, 28)" in err
    assert "set data.image_size" in err and "Traceback" not in err
    assert not list((tmp_path / "checkpoints").glob("results_digits*.json"))
