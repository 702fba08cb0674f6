"""`metabench report`: find finished runs and sweeps on disk, read what each run wrote, group
the seeds of one setting, and show or write the comparison (rich table, report.md, report.csv).

Reading never fails on a partial run: an unreadable or half-written file counts as missing.
A sweep's planned jobs come from its own records (multirun.yaml, each job's .hydra/overrides.yaml),
so a job that wrote nothing (killed at start) or never ran is listed too, with its status."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from metabench.locking import owner_alive, read_owner
from metabench.reliability import reliability_from_sums

SKIP_DIRS = {".hydra", "wandb", ".submitit"}
KEY = ("algo", "data", "backbone", "ways", "shots", "protocol")
COMPLETE = ("finished", "untested")  # training finished: aggregated by setting
#: uncertainty metrics a results.json may hold (metabench/uncertainty.py), each with ``_ci95``;
#: classification: nll, ece; a regression learner with a predictive variance: nll, coverage90
UNCERTAINTY = ("nll", "ece", "coverage90")
CSV_FIELDS = ("run", "status", "algo", "data", "backbone", "ways", "shots", "seed", "iterations",
              "seconds", "metric", "best_val", "test_mean", "test_ci95", "nll", "nll_ci95", "ece",
              "ece_ci95", "coverage90", "coverage90_ci95", "episodes", "protocol",
              "transductive", "norm", "test_seed", "error")


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


def protocol_label(results: dict[str, Any]) -> str:
    """``transductive (norm=batch)`` / ``non-transductive (norm=running)``, with
    ``, within-alphabet`` for within-alphabet test episodes; ``-`` for a result written before
    the protocol was recorded."""
    if not isinstance(results.get("transductive"), bool):
        return "-"
    kind = "transductive" if results["transductive"] else "non-transductive"
    within = ", within-alphabet" if results.get("episode_classes") == "within_alphabet" else ""
    return f"{kind} (norm={results.get('norm', '?')}){within}"


def _uncertainty(results: dict[str, Any] | None) -> dict[str, float | None]:
    """``nll``, ``ece``, ``coverage90`` and their ``_ci95`` from a result; None where it has
    none (a result from before they were recorded, a learner without a predictive variance)."""
    keys = [k + s for k in UNCERTAINTY for s in ("", "_ci95")]
    return {k: _number(results.get(k)) if results else None for k in keys}


def _reliability(results: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result's reliability bins ({bins, count, accuracy, confidence}), None when missing or
    malformed: lists of ``bins`` entries, counts whole and >= 0, a number where a bin is full."""
    r = results.get("reliability") if results else None
    if not isinstance(r, dict) or not isinstance(r.get("bins"), int) or r["bins"] < 1:
        return None
    lists = [r.get(k) for k in ("count", "accuracy", "confidence")]
    if not all(isinstance(v, list) and len(v) == r["bins"] for v in lists):
        return None
    count, acc, conf = lists
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in count):
        return None
    if any(c > 0 and (_number(a) is None or _number(f) is None)
           for c, a, f in zip(count, acc, conf, strict=True)):
        return None
    return {"bins": r["bins"], "count": count, "accuracy": acc, "confidence": conf}


def pool_reliability(bins: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The reliability diagram of several runs' test queries together (a setting's seeds):
    per bin the summed count and the count-weighted accuracy and confidence (None for an empty
    bin), and the ECE of the pooled bins (sum of count x |accuracy - confidence| over all
    queries). Runs whose bin count differs from the first one's are left out; None for none."""
    given = [b for b in bins if b is not None]
    if not given:
        return None
    n = given[0]["bins"]
    given = [b for b in given if b["bins"] == n]
    count = [sum(b["count"][i] for b in given) for i in range(n)]

    def summed(key: str) -> list[float]:  # back to per-bin sums: count x mean
        return [sum(b["count"][i] * b[key][i] for b in given if b["count"][i])
                for i in range(n)]

    pooled = reliability_from_sums(count, summed("accuracy"), summed("confidence"))
    return {**pooled, "queries": sum(count), "runs": len(given)}


def read_run(path: str | Path) -> dict[str, Any]:
    """One run directory as a flat row: setting, status, time, best val, test result, val curve."""
    path = Path(path)
    cfg = _load_yaml(path / "config.yaml")
    algo, data = cfg.get("algo") or {}, cfg.get("data") or {}
    backbone, train = cfg.get("backbone") or {}, cfg.get("train") or {}
    summary = _load_json(path / "summary.json")
    stopped = summary if summary is not None and summary.get("finished") is False else None
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
        status = live_status(path) or (stopped or {}).get("status") or (
            "unfinished" if has_metrics else "failed")
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
        **_uncertainty(results), "reliability": _reliability(results),
        "episodes": results.get("episodes") if results else None,
        "protocol": protocol_label(results) if results else "-",
        "transductive": results.get("transductive") if results else None,
        "norm": results.get("norm") if results else None,
        "test_seed": results.get("test_seed") if results else None,
        "val_curve": curve, "inner_steps": inner_step_results(results),
        "error": (stopped or {}).get("error"),
    }


def inner_step_results(results: dict[str, Any] | None) -> dict[int, float]:
    """A learner trained from scratch records its test metric after inner step t as
    ``step<t>``: {t: value}, empty for every other learner."""
    out = {}
    for k, v in (results or {}).items():
        if k.startswith("step") and k[4:].isdigit() and _number(v) is not None:
            out[int(k[4:])] = float(v)
    return dict(sorted(out.items()))


def live_status(run_dir: Path) -> str | None:
    """From the run's lock record: ``running`` while its process lives, ``killed`` when the
    process died holding it (SIGKILL, out of memory), None when no process holds it."""
    owner = read_owner(run_dir)
    if owner is None:
        return None
    return "killed" if owner_alive(owner) is False else "running"


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The jobs a grid sweep planned, expanded from its multirun.yaml as Hydra's basic sweeper
    expands them (its ``params`` and the command line's overrides); None for other sweepers
    (Optuna proposes its jobs as it goes) or when the file is missing."""
    hydra = _load_yaml(sweep_dir / "multirun.yaml").get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith(("BasicSweeper", "MetabenchSweeper")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    task = list((hydra.get("overrides") or {}).get("task") or [])
    try:
        parsed = OverridesParser.create().parse_overrides([*params, *task])
        return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]
    except Exception:  # an unreadable record: list what is on disk only
        return None


def missing_jobs(sweep_dir: Path, found: set[Path]) -> list[dict[str, Any]]:
    """Rows for the planned jobs of ``sweep_dir`` that left no run folder with a config.yaml:
    ``not started`` (no folder), or its lock's status, else ``failed`` (crashed at start)."""
    jobs = planned_jobs(sweep_dir)
    if not jobs:
        return []
    dirs = {}
    for hydra_dir in sweep_dir.glob("*/.hydra"):
        overrides = _load_yaml_list(hydra_dir / "overrides.yaml")
        if overrides is not None:
            dirs[tuple(overrides)] = hydra_dir.parent
    master = _load_yaml(sweep_dir / "multirun.yaml")
    given = set((master.get("hydra") or {}).get("overrides", {}).get("task") or [])
    rows = []
    for num, job in enumerate(jobs):
        folder = dirs.get(tuple(job))
        if folder is not None and folder in found:
            continue
        label = " ".join(o for o in job if o not in given)
        status = "not started" if folder is None else live_status(folder) or "failed"
        rows.append(_job_row(master, job, num, label, folder or sweep_dir, status))
    return rows


def _load_yaml_list(path: Path) -> list[str] | None:
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(x) for x in d] if isinstance(d, list) else None


def _job_row(master: dict[str, Any], job: list[str], num: int, label: str, where: Path,
             status: str) -> dict[str, Any]:
    """A run row for a job known only from its overrides (its setting as far as they say)."""
    data = master.get("data") or {}
    setting = {"algo": (master.get("algo") or {}).get("name"), "data": data.get("name"),
               "backbone": (master.get("backbone") or {}).get("name"), "ways": data.get("ways"),
               "shots": data.get("shots"), "seed": master.get("seed")}
    keys = {"algo": "algo", "data": "data", "backbone": "backbone", "data.ways": "ways",
            "data.shots": "shots", "seed": "seed"}
    for o in job:
        key, _, value = o.partition("=")
        if key in keys:
            setting[keys[key]] = int(value) if value.isdigit() else value
    run = f"{where} (job {num}{': ' + label if label else ''})"
    return {"run": run, "status": status, **setting, "iterations": None, "seconds": None,
            "metric": None, "best_val": None, "test_mean": None, "test_ci95": None,
            **_uncertainty(None), "reliability": None, "episodes": None, "protocol": "-",
            "transductive": None, "norm": None, "test_seed": None, "val_curve": [], "error": None}


def collect(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every run under ``paths`` as a row, and every planned job of each sweep found there that
    left no run of its own."""
    paths = [Path(p) for p in paths]
    runs = find_runs(paths)
    rows = [read_run(r) for r in runs]
    sweeps = {m.parent for p in paths if p.is_dir() for m in p.rglob("multirun.yaml")
              if not SKIP_DIRS & set(m.parts)}
    for sweep_dir in sorted(sweeps, key=_natural):
        rows += missing_jobs(sweep_dir, set(runs))
    return rows


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _sort_key(values: Iterable[Any]) -> tuple:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in values)


def _uncertainty_means(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per uncertainty metric: the mean over the seeds that recorded it, the mean of their
    CIs, and how many seeds that was (``<key>_seeds``); the seeds' pooled reliability bins."""
    out: dict[str, Any] = {}
    for k in UNCERTAINTY:
        have = [r for r in runs if r.get(k) is not None]
        out[k] = _mean([r[k] for r in have])
        out[f"{k}_ci95"] = _mean([r[f"{k}_ci95"] for r in have if r.get(f"{k}_ci95") is not None])
        out[f"{k}_seeds"] = len(have)
    out["reliability"] = pool_reliability(r.get("reliability") for r in runs)
    return out


def mean_inner_steps(runs: list[dict[str, Any]]) -> dict[int, float]:
    """The seeds' per-inner-step test metrics averaged at the steps every tested seed has."""
    have = [r["inner_steps"] for r in runs if r.get("inner_steps")]
    steps = sorted(set.intersection(*(set(h) for h in have))) if have else []
    return {t: sum(h[t] for h in have) / len(have) for t in steps}


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (algo, data, backbone, ways, shots) over runs whose training finished:
    seed count, mean test mean and its sample std across seeds, mean CI95, mean best val, the
    uncertainty metrics' means over seeds and the seeds' pooled reliability bins.
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
            "test_ci95": _mean(cis), **_uncertainty_means(runs),
            "inner_steps": mean_inner_steps(runs), "runs": runs,
        })
    for r in rows:
        if r["status"] not in COMPLETE:
            out.append({**{k: r.get(k) for k in KEY}, "status": r["status"], "metric": r["metric"],
                        "seeds": 1, "tested": 0, "iterations": [r["iterations"]],
                        "seconds": r["seconds"], "best_val": r["best_val"], "test_mean": None,
                        "test_std": None, "test_ci95": None, **_uncertainty_means([]),
                        "inner_steps": {}, "runs": [r]})
    return out


from metabench.report_tables import (  # noqa: E402, F401  (the rendering half; callers import it from here)
    fmt_value,
    print_report,
    protocol_warning,
    write_report,
)
