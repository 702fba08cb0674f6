"""`metabench report`: find finished runs and sweeps on disk, read what each run wrote, group
the seeds of one setting, and show or write the comparison (rich table, report.md, report.csv).

Reading never fails on a partial run: an unreadable or half-written file counts as missing."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

SKIP_DIRS = {".hydra", "wandb", ".submitit"}
KEY = ("algo", "data", "backbone", "ways", "shots")
COMPLETE = ("finished", "untested")  # training finished: aggregated by setting
CSV_FIELDS = ("run", "status", "algo", "data", "backbone", "ways", "shots", "seed", "iterations",
              "seconds", "metric", "best_val", "test_mean", "test_ci95", "episodes")


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every directory at or below ``paths`` holding a ``config.yaml`` (not .hydra/, wandb/)."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == "config.yaml":
            p = p.parent
        if not p.is_dir() or p.name in SKIP_DIRS:
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            if "config.yaml" in files:
                found.add(Path(root))
    return sorted(found, key=_natural)


def _natural(p: Path) -> list[Any]:
    """Sort key that puts ``2_run`` before ``10_run``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t)
            for t in str(p).replace("_", "/").split("/")]


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return d if isinstance(d, dict) else {}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged points; lines that do not parse (e.g. cut short by a kill) are skipped."""
    points = []
    try:
        text = path.read_text()
    except OSError:
        return points
    for line in text.splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            points.append(d)
    return points


def read_run(path: str | Path) -> dict[str, Any]:
    """One run directory as a flat row: setting, status, time, best val, test result, val curve."""
    path = Path(path)
    cfg = _load_yaml(path / "config.yaml")
    algo, data = cfg.get("algo") or {}, cfg.get("data") or {}
    backbone, train = cfg.get("backbone") or {}, cfg.get("train") or {}
    summary = _load_json(path / "summary.json")
    if summary is not None and summary.get("finished") is not True:
        summary = None
    results = _load_json(path / "checkpoints" / "results.json")
    has_metrics = (path / "metrics.jsonl").is_file()
    points = _read_metrics(path / "metrics.jsonl") if has_metrics else []

    metric = results.get("metric") if results else None
    if metric is None and isinstance(data, dict) and data.get("kind"):
        metric = "accuracy" if data.get("kind") == "classification" else "mse"
    if metric is None and points:
        metric = "accuracy" if any("val/acc" in p for p in points) else "mse"
    val_key = "val/acc" if metric != "mse" else "val/loss"
    curve = [(int(p["step"]), float(p[val_key])) for p in points
             if _number(p.get("step")) is not None and _number(p.get(val_key)) is not None]

    if summary is not None:
        status = "finished" if results is not None else "untested"
    else:
        status = "unfinished" if has_metrics else "failed"
    best = _number(summary.get("best_val")) if summary else None
    if best is None and curve:
        values = [v for _, v in curve]
        best = max(values) if metric != "mse" else min(values)
    iterations = summary.get("iterations") if summary else None
    if not isinstance(iterations, int):
        iterations = train.get("iterations") if isinstance(train, dict) else None

    def field(node: Any, key: str) -> Any:
        return node.get(key) if isinstance(node, dict) else None

    return {
        "run": str(path), "status": status,
        "algo": field(algo, "name"), "data": field(data, "name"),
        "backbone": field(backbone, "name"), "ways": field(data, "ways"),
        "shots": field(data, "shots"), "seed": cfg.get("seed"), "iterations": iterations,
        "seconds": _number(summary.get("seconds")) if summary else None,
        "metric": metric, "best_val": best,
        "test_mean": _number(results.get("mean")) if results else None,
        "test_ci95": _number(results.get("ci95")) if results else None,
        "episodes": results.get("episodes") if results else None,
        "val_curve": curve,
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _sort_key(values: Iterable[Any]) -> tuple:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in values)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (algo, data, backbone, ways, shots) over runs whose training finished:
    seed count, mean test mean and its sample std across seeds, mean CI95, mean best val.
    Unfinished and failed runs each get their own entry (``runs`` = that one run)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] in COMPLETE:
            groups.setdefault(tuple(r[k] for k in KEY), []).append(r)
    out = []
    for key in sorted(groups, key=_sort_key):
        runs = sorted(groups[key], key=lambda r: _sort_key((r["seed"], r["run"])))
        tests = [r["test_mean"] for r in runs if r["test_mean"] is not None]
        cis = [r["test_ci95"] for r in runs if r["test_ci95"] is not None]
        bests = [r["best_val"] for r in runs if r["best_val"] is not None]
        secs = [r["seconds"] for r in runs if r["seconds"] is not None]
        out.append({
            **dict(zip(KEY, key, strict=True)),
            "status": "finished" if tests else "untested",
            "metric": next((r["metric"] for r in runs if r["metric"]), None),
            "seeds": len(runs), "tested": len(tests),
            "iterations": sorted({r["iterations"] for r in runs}, key=str),
            "seconds": _mean(secs), "best_val": _mean(bests),
            "test_mean": _mean(tests),
            "test_std": statistics.stdev(tests) if len(tests) > 1 else None,  # one seed: no sd
            "test_ci95": _mean(cis), "runs": runs,
        })
    for r in rows:
        if r["status"] not in COMPLETE:
            out.append({**{k: r[k] for k in KEY}, "status": r["status"], "metric": r["metric"],
                        "seeds": 1, "tested": 0, "iterations": [r["iterations"]],
                        "seconds": r["seconds"], "best_val": r["best_val"], "test_mean": None,
                        "test_std": None, "test_ci95": None, "runs": [r]})
    return out


def fmt_value(v: float | None, metric: str | None) -> str:
    """Accuracy as a percent with 2 decimals, MSE (or unknown) with 4; ``-`` when missing."""
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.4f}"


def _test_cell(g: dict[str, Any]) -> str:
    if g["test_mean"] is None:
        return "-"
    return f"{fmt_value(g['test_mean'], g['metric'])} +- {fmt_value(g['test_ci95'], g['metric'])}"


def _iters(g: dict[str, Any]) -> str:
    return ",".join("-" if i is None else str(i) for i in g["iterations"])


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}s"


def _s(v: Any) -> str:
    return "-" if v is None else str(v)


GROUP_COLUMNS = ("algo", "data", "backbone", "ways", "shots", "seeds", "iterations", "time",
                 "best val", "test mean +- 95% CI")


def _group_cells(g: dict[str, Any]) -> list[str]:
    return [*(_s(g[k]) for k in KEY), str(g["seeds"]), _iters(g), _secs(g["seconds"]),
            fmt_value(g["best_val"], g["metric"]), _test_cell(g)]


def _run_cells(r: dict[str, Any]) -> list[str]:
    m = r["metric"]
    test = ("-" if r["test_mean"] is None
            else f"{fmt_value(r['test_mean'], m)} +- {fmt_value(r['test_ci95'], m)}")
    return [r["run"], r["status"], *(_s(r[k]) for k in KEY), _s(r["seed"]),
            _s(r["iterations"]), _secs(r["seconds"]), fmt_value(r["best_val"], m), test]


def _md_table(header: Iterable[str], lines: Iterable[list[str]]) -> str:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines]
    return "\n".join(out)


def write_report(rows: list[dict[str, Any]], groups: list[dict[str, Any]],
                 out_dir: str | Path) -> list[Path]:
    """Write ``report.md`` (settings table, then every run with its status) and ``report.csv``
    (one line per run, raw numbers) under ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [g for g in groups if g["status"] in COMPLETE]
    pending = [g for g in groups if g["status"] not in COMPLETE]
    md = ["# metabench report", "",
          f"{len(rows)} runs: {len(complete)} settings with finished training, "
          f"{len(pending)} runs unfinished or failed.", "", "## Settings", "",
          _md_table((*GROUP_COLUMNS, "test sd across seeds"),
                    ([*_group_cells(g), fmt_value(g["test_std"], g["metric"])]
                     for g in complete)), "",
          "Test mean: the mean over seeds of each run's test mean; 95% CI: the mean of their "
          "CIs; sd: the sample standard deviation of the test means across seeds.", ""]
    if pending:
        md += ["## Unfinished or failed runs", "",
               _md_table(("run", "status"), ([g["runs"][0]["run"], g["status"]]
                                             for g in pending)), ""]
    md += ["## All runs", "",
           _md_table(("run", "status", *KEY, "seed", "iterations", "time", "best val",
                      "test mean +- 95% CI"), map(_run_cells, rows)), ""]
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    md_path.write_text("\n".join(md))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in CSV_FIELDS}
                         for r in rows)
    return [md_path, csv_path]


def print_report(rows: list[dict[str, Any]], groups: list[dict[str, Any]],
                 console: Console | None = None, title: str = "metabench report") -> None:
    """A rich table of the settings, then the unfinished/failed runs with their status."""
    console = console or Console()
    table = Table(title=title, pad_edge=False,
                  caption="test: mean over seeds, +- mean 95% CI; seed sd in report.md")
    for col in GROUP_COLUMNS:
        table.add_column(col, justify="right" if col in ("ways", "shots", "seeds") else "left")
    for g in groups:
        if g["status"] in COMPLETE:
            table.add_row(*_group_cells(g))
    console.print(table)
    pending = [g for g in groups if g["status"] not in COMPLETE]
    if pending:
        console.print(f"{len(pending)} run(s) not finished:", highlight=False)
        for g in pending:
            r = g["runs"][0]
            console.print(f"  {r['status']:10s} {r['run']}  (best val "
                          f"{fmt_value(r['best_val'], r['metric'])})", highlight=False,
                          soft_wrap=True)
