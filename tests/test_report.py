"""`metabench report` on run directories written by hand: discovery, status, seed grouping
(mean, sample std), report.md / report.csv, and the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metabench.report import aggregate, find_runs, read_run, write_report


def make_run(root: Path, name: str, *, shots: int = 1, seed: int = 0, kind: str = "accuracy",
             summary: bool = True, test: float | None = None, ci: float = 0.01,
             metrics: list[dict] | None = None, tail: str = "",
             protocol: dict | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    classification = kind == "accuracy"
    cfg = {"algo": {"name": "protonet"},
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
             "shots": shots, **(protocol or {})}))
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
