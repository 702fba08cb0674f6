"""PNG figures for `metabench report`: validation curves per setting, test results with their
95% CIs, and the reliability diagram of the classification settings. matplotlib is optional
(the `report` extra); without it the report skips the figures and says so, and nothing else
changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metabench.report import COMPLETE

CURVES, TESTS, RELIABILITY = "val_curves.png", "test_results.png", "reliability.png"
INNER_STEPS = "inner_steps.png"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def setting_label(g: dict[str, Any]) -> str:
    """``protonet conv4 5w1s`` (the data name is added when a report mixes datasets)."""
    shape = f"{g['ways']}w{g['shots']}s" if g.get("metric") == "accuracy" else f"{g['shots']}shot"
    return " ".join(str(v) for v in (g["algo"], g["backbone"], shape) if v is not None)


def _labels(groups: list[dict[str, Any]]) -> list[str]:
    many_data = len({g["data"] for g in groups}) > 1
    return [(f"{g['data']} " if many_data else "") + setting_label(g) for g in groups]


def mean_curve(runs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """The seeds' validation curves averaged at the steps every seed logged."""
    curves = [dict(r["val_curve"]) for r in runs if r["val_curve"]]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(s, sum(c[s] for c in curves) / len(curves)) for s in steps]


def _axis_name(metric: str | None) -> tuple[str, float]:
    return ("accuracy (%)", 100.0) if metric == "accuracy" else ("MSE", 1.0)


def _draw_curves(ax, chosen: list[dict[str, Any]], metric: str) -> None:
    name, scale = _axis_name(metric)
    for g, label in zip(chosen, _labels(chosen), strict=True):
        steps, values = zip(*mean_curve(g["runs"]), strict=True)
        seeds = f" ({g['seeds']} seeds)" if g["seeds"] > 1 else ""
        ax.plot(steps, [scale * v for v in values], marker="o", markersize=3, label=label + seeds)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"validation {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _draw_tests(ax, chosen: list[dict[str, Any]], metric: str) -> None:
    name, scale = _axis_name(metric)
    ys = [scale * g["test_mean"] for g in chosen]
    errs = [scale * (g["test_ci95"] or 0.0) for g in chosen]
    xs = range(len(chosen))
    ax.errorbar(xs, ys, yerr=errs, fmt="o", capsize=5)
    for x, y, e in zip(xs, ys, errs, strict=True):
        ax.annotate(f"{y:.2f} ± {e:.2f}", (x, y + e), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xticks(list(xs), _labels(chosen), rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(chosen) - 0.4)
    ax.margins(y=0.15)  # room for the value labels above the bars
    ax.set_ylabel(f"test {name}")
    ax.grid(axis="y", alpha=0.3)


def _draw_reliability(ax, hist, g: dict[str, Any], label: str) -> None:
    """Accuracy against confidence per bin (bars on the bin, a dot at the bin's mean
    confidence) with the diagonal of perfect calibration; below, the share of queries per bin
    (what each bin's accuracy rests on)."""
    rel = g["reliability"]
    n, total = rel["bins"], rel["queries"]
    full = [i for i in range(n) if rel["count"][i]]
    centres, width = [(i + 0.5) / n for i in full], 1.0 / n
    ax.bar(centres, [rel["accuracy"][i] for i in full], width=width, color="tab:blue",
           alpha=0.6, edgecolor="tab:blue", label="accuracy")
    ax.plot([rel["confidence"][i] for i in full], [rel["accuracy"][i] for i in full], "o",
            color="tab:red", markersize=3, label="at mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.tick_params(labelbottom=False)
    seeds = f", {rel['runs']} seeds" if rel["runs"] > 1 else ""
    ax.set_title(f"{label}\nECE {100 * rel['ece']:.2f}% ({total} queries{seeds})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    hist.bar(centres, [rel["count"][i] / total for i in full], width=width, color="0.6")
    hist.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)",
             ylabel="share")


def write_reliability(groups: list[dict[str, Any]], out_dir: str | Path) -> Path | None:
    """``reliability.png``: one panel per finished setting with reliability bins (the
    classification runs' test queries, seeds pooled: report.pool_reliability), titled with
    the pooled ECE; None when no setting has bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [g for g in groups if g["status"] in COMPLETE and g.get("reliability")
             and g["reliability"]["queries"]]
    if not shown:
        return None
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] * rows})
    for k, (g, label) in enumerate(zip(shown, _labels(shown), strict=True)):
        r, c = divmod(k, cols)
        _draw_reliability(axes[2 * r, c], axes[2 * r + 1, c], g, label)
    for k in range(len(shown), rows * cols):
        r, c = divmod(k, cols)
        axes[2 * r, c].set_visible(False)
        axes[2 * r + 1, c].set_visible(False)
    fig.suptitle("test reliability (15 bins, seeds pooled)", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / RELIABILITY
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_inner_steps(ax, chosen: list[dict[str, Any]], metric: str) -> None:
    name, scale = _axis_name(metric)
    for g, label in zip(chosen, _labels(chosen), strict=True):
        steps = g["inner_steps"]
        ax.plot(list(steps), [scale * v for v in steps.values()], marker="o", markersize=3,
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("inner step t (a fresh learner)")
    ax.set_ylabel(f"test {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_figures(groups: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Draw ``val_curves.png`` (one line per setting, seeds averaged) and ``test_results.png``
    (test mean per setting with its 95% CI as an error bar) under ``out_dir``, and
    ``inner_steps.png`` (test metric against inner step, one line per setting trained from
    scratch) when there is one; one panel per
    metric (accuracy, MSE) present; and ``reliability.png`` (write_reliability) when a setting
    has reliability bins. Returns the files written (none when nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [g for g in groups if g["status"] in COMPLETE]
    metrics = sorted({g["metric"] for g in complete if g["metric"]}, key=str)
    out_dir = Path(out_dir)
    written: list[Path] = []
    figures = (
        (CURVES, [g for g in complete if mean_curve(g["runs"])], _draw_curves,
         "validation during meta-training"),
        (TESTS, [g for g in complete if g["test_mean"] is not None], _draw_tests,
         "test: mean over episodes (and seeds), 95% CI"),
        (INNER_STEPS, [g for g in complete if g.get("inner_steps")], _draw_inner_steps,
         "test after each inner step (learners trained from scratch)"),
    )
    for filename, shown, draw, title in figures:
        panels = [m for m in metrics if any(g["metric"] == m for g in shown)]
        if not panels:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2),
                                 squeeze=False)
        for ax, metric in zip(axes[0], panels, strict=True):
            draw(ax, [g for g in shown if g["metric"] == metric], metric)
        fig.suptitle(title)
        fig.tight_layout()
        written.append(out_dir / filename)
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    reliability = write_reliability(groups, out_dir)
    return written + ([reliability] if reliability else [])
