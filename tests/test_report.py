"""`metabench report` on run directories written by hand: discovery, status, seed grouping
(mean, sample std), the uncertainty columns and the reliability diagram, report.md / report.csv,
and the CLI's exit codes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metabench.report import aggregate, find_runs, pool_reliability, read_run, write_report


def make_run(root: Path, name: str, *, shots: int = 1, seed: int = 0, kind: str = "accuracy",
             summary: bool = True, test: float | None = None, ci: float = 0.01,
             metrics: list[dict] | None = None, tail: str = "",
             protocol: dict | None = None, extra: dict | None = None,
             algo: str = "protonet") -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    classification = kind == "accuracy"
    cfg = {"algo": {"name": algo},
           "data": {"name": "synthetic" if classification else "sinusoid",
                    "kind": "classification" if classification else "regression",
                    "ways": 5 if classification else 1, "shots": shots},
           "backbone": {"name": "conv4"}, "seed": seed, "train": {"iterations": 20}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))  # must not count
    if metrics is not None:
        lines = "".join(json.dumps(m) + "\n" for m in metrics)
        (run / "metrics.jsonl").write_text(lines + tail)
    if summary:
        best = max(m.get("val/acc", 0) for m in metrics or [{}])
        (run / "summary.json").write_text(json.dumps(
            {"finished": True, "iterations": 20, "seconds": 4.0, "best_val": best}))
    if test is not None:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "results.json").write_text(json.dumps(
            {"metric": kind, "mean": test, "ci95": ci, "episodes": 50, "ways": 5,
             "shots": shots, **(protocol or {}), **(extra or {})}))
    return run


def curve(*values: float) -> list[dict]:
    return [{"step": 10 * (i + 1), "val/acc": v, "val/loss": 1 - v} for i, v in enumerate(values)]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    make_run(root, "0_a", seed=0, test=0.90, ci=0.02, metrics=curve(0.80, 0.88))
    make_run(root, "1_a", seed=1, test=0.80, ci=0.04, metrics=curve(0.70, 0.86))
    make_run(root, "2_b", shots=5, test=0.95, metrics=curve(0.93))
    make_run(root, "3_unfinished", shots=5, seed=1, summary=False, metrics=curve(0.50, 0.60))
    make_run(root, "4_truncated", shots=5, seed=2, summary=False, metrics=curve(0.40, 0.55),
             tail='{"step": 30, "val/a')
    make_run(root, "5_failed", seed=3, summary=False)
    (root / "0_a" / "wandb" / "run-1" / "files").mkdir(parents=True)
    (root / "0_a" / "wandb" / "run-1" / "files" / "config.yaml").write_text("x: 1\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_find_and_read(sweep: Path):
    runs = find_runs([sweep])
    assert [r.name for r in runs] == ["0_a", "1_a", "2_b", "3_unfinished", "4_truncated",
                                      "5_failed"]
    assert find_runs([sweep / "0_a"]) == [sweep / "0_a"]
    rows = {Path(r["run"]).name: r for r in map(read_run, runs)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "0_a": "finished", "1_a": "finished", "2_b": "finished", "3_unfinished": "unfinished",
        "4_truncated": "unfinished", "5_failed": "failed"}
    a = rows["0_a"]
    assert (a["algo"], a["data"], a["backbone"], a["ways"], a["shots"], a["seed"]) == (
        "protonet", "synthetic", "conv4", 5, 1, 0)
    assert a["metric"] == "accuracy" and a["test_mean"] == 0.90 and a["best_val"] == 0.88
    assert a["val_curve"] == [(10, 0.80), (20, 0.88)]
    t = rows["4_truncated"]
    assert t["val_curve"] == [(10, 0.40), (20, 0.55)] and t["best_val"] == 0.55
    assert t["test_mean"] is None and t["seconds"] is None


def test_read_run_regression_and_broken_files(tmp_path: Path):
    run = make_run(tmp_path, "reg", kind="mse", summary=False,
                   metrics=[{"step": 10, "val/loss": 0.5}, {"step": 20, "val/loss": 0.3},
                            {"step": 30, "val/loss": 0.4}])
    (run / "summary.json").write_text('{"finished": tr')  # half-written: counts as missing
    r = read_run(run)
    assert r["status"] == "unfinished" and r["metric"] == "mse" and r["best_val"] == 0.3
    (run / "config.yaml").write_text(": : [")
    assert read_run(run)["algo"] is None


def test_aggregate_numbers(sweep: Path):
    groups = aggregate([read_run(r) for r in find_runs([sweep])])
    done = [g for g in groups if g["status"] == "finished"]
    assert [(g["shots"], g["seeds"]) for g in done] == [(1, 2), (5, 1)]
    one, five = done
    assert one["test_mean"] == pytest.approx(0.85)
    assert one["test_std"] == pytest.approx(statistics.stdev([0.9, 0.8]))
    assert one["test_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert one["test_ci95"] == pytest.approx(0.03)
    assert one["best_val"] == pytest.approx((0.88 + 0.86) / 2)
    assert five["test_mean"] == pytest.approx(0.95) and five["test_std"] is None  # one seed
    pending = {Path(g["runs"][0]["run"]).name: g["status"] for g in groups
               if g["status"] not in ("finished", "untested")}
    assert pending == {"3_unfinished": "unfinished", "4_truncated": "unfinished",
                       "5_failed": "failed"}


def test_write_report(sweep: Path, tmp_path: Path):
    rows = [read_run(r) for r in find_runs([sweep])]
    md, csv_path = write_report(rows, aggregate(rows), tmp_path / "out")
    table = list(csv.DictReader(csv_path.open()))
    assert len(table) == 6 and table[0]["run"].endswith("0_a")
    status = {Path(r["run"]).name: r["status"] for r in table}
    assert status["3_unfinished"] == "unfinished" and status["5_failed"] == "failed"
    text = md.read_text()
    assert "| 85.00% +- 3.00% | 7.07% |" in text
    assert "3_unfinished | unfinished" in text and "5_failed | failed" in text


def metabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "150"}
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli(sweep: Path, tmp_path: Path):
    r = metabench("report", str(sweep), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "metabench report" in r.stdout and "test mean +- 95% CI" in r.stdout
    assert "85.00% +- 3.00%" in r.stdout and "95.00% +- 1.00%" in r.stdout
    assert "unfinished" in r.stdout and "failed" in r.stdout
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    out = tmp_path / "elsewhere"
    r = metabench("report", str(sweep / "0_a"), str(sweep / "2_b"), "--out", str(out),
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list(csv.DictReader((out / "report.csv").open()))) == 2

    empty = tmp_path / "empty"
    empty.mkdir()
    r = metabench("report", str(empty), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    assert "Traceback" not in r.stderr and not (empty / "report.md").exists()


def test_mean_curve_averages_seeds_at_common_steps():
    from metabench.figures import mean_curve

    runs = [{"val_curve": [(10, 0.5), (20, 0.7), (30, 0.9)]},
            {"val_curve": [(10, 0.3), (20, 0.5)]}, {"val_curve": []}]
    assert mean_curve(runs) == [(10, pytest.approx(0.4)), (20, pytest.approx(0.6))]
    assert mean_curve([{"val_curve": []}]) == []


def test_figures_are_images_one_panel_per_metric(sweep: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from metabench.figures import CURVES, TESTS, write_figures

    rows = [read_run(r) for r in find_runs([sweep])]
    paths = write_figures(aggregate(rows), tmp_path / "one")
    assert [p.name for p in paths] == [CURVES, TESTS]
    sizes = [Image.open(p).size for p in paths]
    assert sizes == [(704, 462), (704, 462)]  # 6.4 x 4.2 inches at 110 dpi, one panel

    make_run(sweep, "6_reg", kind="mse", test=0.2, metrics=[{"step": 10, "val/loss": 0.3}])
    rows = [read_run(r) for r in find_runs([sweep])]
    (tmp_path / "two").mkdir()
    paths = write_figures(aggregate(rows), tmp_path / "two")
    assert [Image.open(p).size for p in paths] == [(1408, 462), (1408, 462)]  # acc + MSE
    assert write_figures(aggregate([r for r in rows if r["status"] == "failed"]),
                         tmp_path) == []  # nothing finished: nothing drawn


def test_cli_writes_figures_or_says_why_not(sweep: Path, tmp_path: Path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from metabench import cli, figures

    assert cli.main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "val_curves.png" in out and (sweep / "val_curves.png").stat().st_size > 10_000
    (sweep / "val_curves.png").unlink()
    monkeypatch.setattr(figures, "available", lambda: False)
    assert cli.main(["report", str(sweep)]) == 0
    assert "figures skipped: matplotlib is not installed" in capsys.readouterr().out
    assert not (sweep / "val_curves.png").exists() and (sweep / "report.md").exists()


def test_rows_of_different_protocols_are_kept_apart_and_flagged(tmp_path: Path):
    root = tmp_path / "runs"
    for i, (norm, transductive) in enumerate([("batch", True), ("batch", True),
                                              ("running", False)]):
        make_run(root, f"{i}_{norm}", seed=i, test=0.9 + 0.01 * i, metrics=curve(0.9),
                 protocol={"transductive": transductive, "norm": norm})
    rows = [read_run(r) for r in find_runs([root])]
    groups = aggregate(rows)
    assert sorted((g["protocol"], g["seeds"]) for g in groups) == [
        ("non-transductive (norm=running)", 1), ("transductive (norm=batch)", 2)]
    md = write_report(rows, groups, tmp_path / "out")[0].read_text()
    assert "| protocol |" in md.splitlines()[6]
    assert "Protocols differ within synthetic 5-way 1-shot" in md
    same = [r for r in rows if r["norm"] == "batch"]
    md = write_report(same, aggregate(same), tmp_path / "same")[0].read_text()
    assert "Protocols differ" not in md


def rel(count: list[int], acc: list, conf: list) -> dict:
    return {"bins": len(count), "count": count, "accuracy": acc, "confidence": conf,
            "ece": 0.0}


A_BINS = rel([0, 2, 2], [None, 0.5, 1.0], [None, 0.6, 0.9])
B_BINS = rel([1, 0, 2], [1.0, None, 0.5], [0.3, None, 0.8])


def test_pool_reliability_sums_counts_and_weights_by_count():
    pooled = pool_reliability([A_BINS, None, B_BINS])
    assert pooled["count"] == [1, 2, 4] and pooled["queries"] == 7 and pooled["runs"] == 2
    assert pooled["accuracy"] == [1.0, 0.5, pytest.approx(0.75)]
    assert pooled["confidence"] == [0.3, 0.6, pytest.approx(0.85)]
    assert pooled["ece"] == pytest.approx((1 * 0.7 + 2 * 0.1 + 4 * 0.1) / 7)
    assert pool_reliability([None]) is None
    assert pool_reliability([A_BINS, rel([5], [1.0], [0.9])])["runs"] == 1  # other bins: left out
    empty = pool_reliability([rel([0, 0], [None, None], [None, None])])
    assert empty["accuracy"] == [None, None] and empty["ece"] is None


def test_pooled_bins_of_two_runs_are_the_bins_of_all_their_queries():
    """Pooling two runs' results.json bins (rounded floats) gives what the shared scoring
    (metabench/uncertainty.py) computes over both runs' episodes at once."""
    import torch

    from metabench.uncertainty import calibration, pooled_reliability

    g = torch.Generator().manual_seed(0)
    runs = []
    for _ in range(2):
        probs = torch.softmax(3 * torch.randn(6, 20, 5, generator=g, dtype=torch.float64), -1)
        target = torch.randint(0, 5, (6, 20), generator=g)
        runs.append(calibration(probs, target))
    both = pooled_reliability({k: torch.cat([r[k] for r in runs]) for k in runs[0]})
    mine = pool_reliability(json.loads(json.dumps(pooled_reliability(r))) for r in runs)
    assert mine["count"] == both["count"] and sum(both["count"]) == 240
    for key in ("accuracy", "confidence"):
        assert [a is None for a in mine[key]] == [b is None for b in both[key]]
        assert [a for a in mine[key] if a is not None] == pytest.approx(
            [b for b in both[key] if b is not None], abs=1e-12)
    assert mine["ece"] == pytest.approx(both["ece"], abs=1e-12)


def uncertain(nll: float, second: str, value: float, reliability: dict | None = None) -> dict:
    out = {"nll": nll, "nll_ci95": abs(nll) / 10, second: value, f"{second}_ci95": value / 10}
    return {**out, "reliability": reliability} if reliability else out


@pytest.fixture
def uncertainty_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "0_cls", seed=0, test=0.9, metrics=curve(0.9),
             extra=uncertain(0.30, "ece", 0.04, A_BINS))
    make_run(root, "1_cls", seed=1, test=0.8, metrics=curve(0.8),
             extra=uncertain(0.50, "ece", 0.08, B_BINS))
    make_run(root, "2_old", shots=5, seed=0, test=0.95, metrics=curve(0.9))  # before NLL/ECE
    make_run(root, "3_old", shots=5, seed=1, test=0.97, metrics=curve(0.9),
             extra=uncertain(0.10, "ece", 0.02))  # one seed of two has them
    make_run(root, "4_var", kind="mse", algo="alpaca", test=0.2,
             metrics=[{"step": 10, "val/loss": 0.3}], extra=uncertain(-0.25, "coverage90", 0.875))
    make_run(root, "5_maml", kind="mse", algo="maml", test=0.3,
             metrics=[{"step": 10, "val/loss": 0.3}])  # no predictive variance
    return root


def test_uncertainty_values_per_run_and_setting(uncertainty_runs: Path):
    rows = {Path(r["run"]).name: r for r in map(read_run, find_runs([uncertainty_runs]))}
    assert (rows["0_cls"]["nll"], rows["0_cls"]["ece"], rows["0_cls"]["coverage90"]) == (
        0.30, 0.04, None)
    assert rows["0_cls"]["reliability"]["count"] == [0, 2, 2]
    assert rows["2_old"]["nll"] is None and rows["2_old"]["reliability"] is None
    assert (rows["4_var"]["nll"], rows["4_var"]["coverage90"], rows["4_var"]["ece"]) == (
        -0.25, 0.875, None)
    assert rows["5_maml"]["nll"] is None and rows["5_maml"]["coverage90"] is None
    groups = {(g["algo"], g["shots"]): g for g in aggregate(list(rows.values()))}
    one = groups[("protonet", 1)]
    assert one["nll"] == pytest.approx(0.40) and one["ece"] == pytest.approx(0.06)
    assert one["nll_ci95"] == pytest.approx(0.04) and one["nll_seeds"] == 2
    assert one["reliability"]["count"] == [1, 2, 4]  # the seeds' bins pooled
    five = groups[("protonet", 5)]
    assert five["nll"] == pytest.approx(0.10) and (five["nll_seeds"], five["tested"]) == (1, 2)
    assert five["reliability"] is None
    broken = {"nll": "nan?", "ece": float("inf"), "reliability": {**A_BINS, "count": [0, 2]}}
    bad = read_run(make_run(uncertainty_runs, "6_bad", test=0.9, extra=broken))
    assert (bad["nll"], bad["ece"], bad["reliability"]) == (None, None, None)
    no_acc = {"reliability": {**A_BINS, "accuracy": [None, None, 1.0]}}  # a full bin without
    assert read_run(make_run(uncertainty_runs, "7_bad", test=0.9, extra=no_acc))[
        "reliability"] is None


def test_uncertainty_columns_in_report_md_csv_and_table(uncertainty_runs: Path, tmp_path: Path):
    from rich.console import Console

    from metabench.report import print_report

    rows = [read_run(r) for r in find_runs([uncertainty_runs])]
    groups = aggregate(rows)
    md, csv_path = write_report(rows, groups, tmp_path / "out")
    text = md.read_text()
    assert "| NLL +- 95% CI | ECE / cov90 +- 95% CI |" in text
    assert "| 85.00% +- 1.00% | 7.07% | 0.4000 +- 0.0400 | ECE 6.00% +- 0.60% |" in text
    assert "| 0.1000 +- 0.0100 (1/2) | ECE 2.00% +- 0.20% (1/2) |" in text  # 5-shot setting
    assert "| 0.2000 +- 0.0100 | - | -0.2500 +- 0.0250 | cov 87.50% +- 8.75% |" in text
    assert "| 0.3000 +- 0.0100 | - | - | - |" in text  # MAML: no variance, no NLL
    assert "2_old | finished |" in text and text.split("2_old | finished |")[1].splitlines()[
        0].endswith("| 95.00% +- 1.00% | - | - |")
    table = {Path(r["run"]).name: r for r in csv.DictReader(csv_path.open())}
    assert float(table["0_cls"]["nll"]) == 0.30 and float(table["0_cls"]["ece_ci95"]) == 0.004
    assert table["0_cls"]["coverage90"] == "" and table["2_old"]["nll"] == ""
    assert float(table["4_var"]["coverage90"]) == 0.875 and table["4_var"]["ece"] == ""
    console = Console(record=True, width=250)
    print_report(rows, groups, console=console)
    lines = console.export_text().splitlines()
    header = next(ln for ln in lines if "test mean +- 95% CI" in ln)
    assert "NLL" in header and "ECE / cov90" in header
    cells = {(c[0], c[4]): c[-2:] for c in ([x.strip() for x in ln.split("│")[1:-1]]
                                            for ln in lines if ln.startswith("│"))}
    assert cells == {("protonet", "1"): ["0.4000", "ECE 6.00%"],
                     ("protonet", "5"): ["0.1000 (1/2)", "ECE 2.00% (1/2)"],
                     ("alpaca", "1"): ["-0.2500", "cov 87.50%"], ("maml", "1"): ["-", "-"]}

def test_reliability_figure_is_written_for_classification_settings(uncertainty_runs: Path,
                                                                   tmp_path: Path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from metabench import cli
    from metabench.figures import RELIABILITY, write_reliability

    assert cli.main(["report", str(uncertainty_runs)]) == 0
    figures = capsys.readouterr().out.split("figures: ")[1].split(", ")
    assert figures[-1].strip() == str(uncertainty_runs / RELIABILITY)
    assert Image.open(figures[-1].strip()).size == (462, 484)  # one setting with bins: 4.2 x 4.4 in
    rows = [read_run(r) for r in find_runs([uncertainty_runs])]
    two = [*rows, {**read_run(uncertainty_runs / "0_cls"), "shots": 3}]
    assert Image.open(write_reliability(aggregate(two), tmp_path)).size == (924, 484)
    old = [r for r in rows if r["reliability"] is None]
    assert write_reliability(aggregate(old), tmp_path / "old") is None


def test_inner_step_results_table_and_figure(tmp_path: Path):
    """Learners trained from scratch: step<t> results averaged over seeds at the steps every
    seed has, a report.md table, and inner_steps.png; other learners have none."""
    root = tmp_path / "arms"
    make_run(root, "0_sgd", algo="sgd_scratch", seed=0, test=0.7, metrics=curve(0.6),
             extra={"step1": 0.3, "step10": 0.7, "step200": 0.8, "step1_ci95": 0.01})
    make_run(root, "1_sgd", algo="sgd_scratch", seed=1, test=0.8, metrics=curve(0.6),
             extra={"step1": 0.5, "step10": 0.8})
    make_run(root, "2_proto", test=0.9, metrics=curve(0.9))
    rows = [read_run(r) for r in find_runs([root])]
    assert next(r for r in rows if r["run"].endswith("0_sgd"))["inner_steps"] == {
        1: 0.3, 10: 0.7, 200: 0.8}
    groups = aggregate(rows)
    sgd = next(g for g in groups if g["algo"] == "sgd_scratch")
    assert sgd["inner_steps"] == {1: pytest.approx(0.4), 10: pytest.approx(0.75)}
    assert next(g for g in groups if g["algo"] == "protonet")["inner_steps"] == {}
    md = write_report(rows, groups, tmp_path / "out")[0].read_text()
    assert "## After each inner step" in md
    assert "| sgd_scratch | synthetic | 5w1s | 40.00% | 75.00% |" in md
    if importlib.util.find_spec("matplotlib") is None:
        return
    from metabench.figures import INNER_STEPS, write_figures

    assert INNER_STEPS in [p.name for p in write_figures(groups, tmp_path / "figs")]
