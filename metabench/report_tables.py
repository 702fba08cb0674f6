"""Rendering a comparison: the settings table and the unfinished runs for the terminal (rich),
``report.md`` and ``report.csv``. Reading runs and grouping them lives in report.py."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from metabench.report import COMPLETE, CSV_FIELDS, KEY


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


GROUP_COLUMNS = ("algo", "data", "backbone", "ways", "shots", "protocol", "seeds", "iterations",
                 "time", "best val", "test mean +- 95% CI", "NLL", "ECE / cov90")
#: report.md's uncertainty columns, with their (mean) 95% CIs
MD_UNCERTAINTY = ("NLL +- 95% CI", "ECE / cov90 +- 95% CI")


def _metric_cell(x: dict[str, Any], key: str, fmt: str, prefix: str, show_ci: bool) -> str:
    if x.get(key) is None:
        return "-"
    cell = prefix + fmt.format(x[key])
    if show_ci and x.get(f"{key}_ci95") is not None:
        cell += " +- " + fmt.format(x[f"{key}_ci95"])
    if x.get(f"{key}_seeds", 0) < x.get("tested", 0):  # a setting some seeds of which lack it
        cell += f" ({x[f'{key}_seeds']}/{x['tested']})"
    return cell


def _uncertainty_cells(x: dict[str, Any], show_ci: bool) -> list[str]:
    """``NLL`` and ``ECE / cov90`` of a run or a setting: the test NLL (4 decimals); the ECE
    (classification) or the 90% interval's coverage (a regression learner with a predictive
    variance) in percent; ``-`` where not recorded. A setting whose seeds did not all record
    a metric says over how many of its tested seeds the mean is, e.g. ``(2/3)``."""
    second = ("ece", "ECE ") if x.get("ece") is not None else ("coverage90", "cov ")
    return [_metric_cell(x, "nll", "{:.4f}", "", show_ci),
            _metric_cell(x, second[0], "{:.2%}", second[1], show_ci)]


def _group_cells(g: dict[str, Any]) -> list[str]:
    return [*(_s(g[k]) for k in KEY), str(g["seeds"]), _iters(g), _secs(g["seconds"]),
            fmt_value(g["best_val"], g["metric"]), _test_cell(g)]


def _run_cells(r: dict[str, Any]) -> list[str]:
    m = r["metric"]
    test = ("-" if r["test_mean"] is None
            else f"{fmt_value(r['test_mean'], m)} +- {fmt_value(r['test_ci95'], m)}")
    return [r["run"], r["status"], *(_s(r[k]) for k in KEY), _s(r["seed"]),
            _s(r["iterations"]), _secs(r["seconds"]), fmt_value(r["best_val"], m), test,
            *_uncertainty_cells(r, show_ci=True)]


def protocol_warning(groups: list[dict[str, Any]]) -> str | None:
    """A line when tested settings of one dataset and episode size were measured under
    different protocols (their numbers are not directly comparable)."""
    seen: dict[tuple, set[str]] = {}
    for g in groups:
        if g.get("test_mean") is not None:
            seen.setdefault((g["data"], g["ways"], g["shots"]), set()).add(g["protocol"])
    mixed = [f"{d} {w}-way {s}-shot" for (d, w, s), p in seen.items() if len(p) > 1]
    if not mixed:
        return None
    return ("Protocols differ within " + ", ".join(mixed) + ": transductive and "
            "non-transductive numbers (or unrecorded ones, -) are not directly comparable.")


def _md_table(header: Iterable[str], lines: Iterable[list[str]]) -> str:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in lines]
    return "\n".join(out)


def inner_step_table(groups: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns (setting, t = ...) and one row per setting with per-inner-step results."""
    shown = [g for g in groups if g.get("inner_steps")]
    steps = sorted({t for g in shown for t in g["inner_steps"]})
    header = ["algo", "data", "setting", *[f"t = {t}" for t in steps]]
    lines = [[_s(g["algo"]), _s(g["data"]), f"{g['ways']}w{g['shots']}s",
              *[fmt_value(g["inner_steps"].get(t), g["metric"]) for t in steps]]
             for g in shown]
    return header, lines


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
          _md_table((*GROUP_COLUMNS[:-2], "test sd across seeds", *MD_UNCERTAINTY),
                    ([*_group_cells(g), fmt_value(g["test_std"], g["metric"]),
                      *_uncertainty_cells(g, show_ci=True)] for g in complete)), "",
          "Test mean: the mean over seeds of each run's test mean; 95% CI: the mean of their "
          "CIs; sd: the sample standard deviation of the test means across seeds. Protocol: "
          "transductive when a query's prediction depends on the other queries of its "
          "episode (batch statistics), with the norm mode. NLL: the test negative "
          "log-likelihood per query; ECE (classification): the expected calibration error "
          "over 15 confidence bins, per episode; cov (regression with a predictive variance): "
          "the share of queries inside the 90% predictive interval (90% when calibrated). "
          "Each is averaged over episodes, then over the seeds that recorded it ((n/m): n of "
          "m tested seeds), with the mean of the seeds' CIs; `-`: not recorded (an older "
          "result, a learner without a predictive variance). The reliability diagram "
          "(reliability.png) pools the bins of every episode and seed; its ECE is usually "
          "lower than the per-episode mean, which a few queries per episode bias upwards.",
          ""]
    warning = protocol_warning(complete)
    if warning:
        md += [f"**{warning}**", ""]
    header, lines = inner_step_table(complete)
    if lines:
        md += ["## After each inner step (learners trained from scratch)", "",
               _md_table(header, lines), "",
               "Test metric after t inner steps of a fresh learner (results.json step<t>), "
               "mean over seeds (inner_steps.png draws it).", ""]
    if pending:
        md += ["## Unfinished or failed runs", "",
               _md_table(("run", "status", "why"),
                         ([g["runs"][0]["run"], g["status"], g["runs"][0].get("error") or ""]
                          for g in pending)), ""]
    md += ["## All runs", "",
           _md_table(("run", "status", *KEY, "seed", "iterations", "time", "best val",
                      "test mean +- 95% CI", *MD_UNCERTAINTY), map(_run_cells, rows)), ""]
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
                  caption="test: mean over seeds, +- mean 95% CI; NLL, ECE / cov90: mean "
                          "over seeds; their CIs and the seed sd in report.md")
    for col in GROUP_COLUMNS:
        table.add_column(col, justify="right" if col in ("ways", "shots", "seeds") else "left")
    for g in groups:
        if g["status"] in COMPLETE:
            table.add_row(*_group_cells(g), *_uncertainty_cells(g, show_ci=False))
    console.print(table)
    header, lines = inner_step_table([g for g in groups if g["status"] in COMPLETE])
    if lines:
        steps = Table(title="test after each inner step (trained from scratch)", pad_edge=False)
        for col in header:
            steps.add_column(col)
        for line in lines:
            steps.add_row(*line)
        console.print(steps)
    warning = protocol_warning([g for g in groups if g["status"] in COMPLETE])
    if warning:
        console.print(f"note: {warning}", highlight=False, soft_wrap=True)
    pending = [g for g in groups if g["status"] not in COMPLETE]
    if pending:
        console.print(f"{len(pending)} run(s) not finished:", highlight=False)
        for g in pending:
            r = g["runs"][0]
            why = f": {r['error']}" if r.get("error") else ""
            console.print(f"  {r['status']:11s} {r['run']}  (best val "
                          f"{fmt_value(r['best_val'], r['metric'])}){why}", highlight=False,
                          soft_wrap=True)
