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
                 "time",
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
          "CIs; sd: the sample standard deviation of the test means across seeds. Protocol: "
          "transductive when a query's prediction depends on the other queries of its "
          "episode (batch statistics), with the norm mode.", ""]
    warning = protocol_warning(complete)
    if warning:
        md += [f"**{warning}**", ""]
    if pending:
        md += ["## Unfinished or failed runs", "",
               _md_table(("run", "status", "why"),
                         ([g["runs"][0]["run"], g["status"], g["runs"][0].get("error") or ""]
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
