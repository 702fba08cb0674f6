"""`metabench train|evaluate ...`: a thin layer that composes configs with Hydra, shows
progress with rich, and turns user errors into one line and exit code 2."""

from __future__ import annotations

import shutil
import signal
import sys
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from metabench.console import console, err_console, report_error, warn
from metabench.errors import ConfigError, UserError
from metabench.report import inner_step_results, protocol_label

GROUPS = ("algo", "data", "backbone", "logger", "experiment", "search")


def group_options(group: str) -> list[str]:
    """A config group's options; nested groups (experiment/paper/...) as ``sub/name``."""
    folder = resources.files("metabench.configs") / group
    out = []
    for p in folder.iterdir():
        if p.name.endswith(".yaml"):
            out.append(p.name[:-5])
        elif p.is_dir():
            out += [f"{p.name}/{q.name[:-5]}" for q in p.iterdir() if q.name.endswith(".yaml")]
    return sorted(out)


def load_group_option(group: str, name: str) -> DictConfig:
    """A group option's YAML (``logger=none``, ``data=digits`` for evaluate), its own defaults
    list dropped; an unknown name is the one-line error."""
    options = group_options(group)
    if name not in options:
        raise ConfigError(f"{group}={name} is not one of: {', '.join(options)}")
    node = OmegaConf.load(resources.files("metabench.configs") / group / f"{name}.yaml")
    node.pop("defaults", None)
    return node


def experiment_summary() -> list[str]:
    """The presets as help lines: quick/ by name, paper/ as one pattern per algorithm."""
    options = group_options("experiment")
    quick = [o for o in options if o.startswith("quick/")]
    paper = [o.removeprefix("paper/") for o in options if o.startswith("paper/")]
    grid = sorted({o.split("_omniglot_")[0] for o in paper if "_omniglot_" in o})
    other = [o for o in paper if "_omniglot_" not in o]
    return [f"  experiment: {', '.join(quick)}",
            f"              paper/<algo>_omniglot_<5|20>w<1|5>s for {', '.join(grid)}; "
            + ", ".join(f"paper/{o}" for o in other),
            "              (flat names such as quick_protonet_omniglot are aliases kept for "
            "one release)"]


HELP = """usage: metabench <command> [key=value ...]

commands:
  train [overrides]                      meta-train; -m/--multirun sweeps comma lists
  evaluate checkpoint=PATH [overrides]   test a checkpoint: mean accuracy (or MSE) +- 95% CI
  predict checkpoint=PATH support=DIR query=DIR_OR_FILES
                                         classify images, support as DIR/<class>/*.png
  report PATH... [--out DIR]             compare runs and sweeps (report.md, .csv, .png)

examples:
  metabench train experiment=quick/protonet_digits    (a first run: no download, ~20 s on a CPU)
  metabench train algo=maml data=omniglot data.ways=5 data.shots=1
  metabench train experiment=quick/protonet_omniglot data.root=../shared/data/omniglot
  metabench train algo=maml data=sinusoid             (per-pair defaults: MAML's sinusoid setting)
  metabench train -m algo=maml,protonet data.ways=5,20 data.shots=1,5
  metabench train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 data.shots=1,5
  torchrun --nproc_per_node=2 -m metabench train algo=maml train.meta_batch=32
  metabench evaluate checkpoint=outputs/<run>/checkpoints/best.pt data.ways=20
  metabench predict checkpoint=outputs/<run>/checkpoints/best.pt support=DIR query=DIR

`metabench train --help` shows Hydra's view of the whole composed config.

config groups (choose with group=option):"""


def print_help() -> None:
    print(HELP)
    for g in GROUPS:
        if g == "experiment":
            print("\n".join(experiment_summary()))
        else:
            print(f"  {g + ':':12s}{', '.join(group_options(g))}")
    print("  hydra/launcher: joblib, submitit_local, slurm (with -m; pip install "
          "'metabench[sweeps]')")


def _fmt(point: dict[str, float]) -> str:
    parts = []
    for k, v in point.items():
        if k.endswith(("_ci95", "/lr", "/best")) or "pre_" in k:
            continue
        parts.append(f"{k} {v:.2%}" if k.endswith("/acc") else f"{k} {v:.4f}")
    return "  ".join(parts)


def plain(line: str) -> None:
    """A line of plain text, never wrapped or cut: what `grep result:` finds in a log."""
    console.print(line, highlight=False, soft_wrap=True, markup=False)


def _remove_if_empty(run_dir: Path) -> None:
    """A run stopped by validation leaves no folder behind, unless it already held results."""
    if run_dir.is_dir() and not any((run_dir / n).exists() for n in ("checkpoints",
                                                                     "metrics.jsonl")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _remove_if_bare(run_dir: Path) -> None:
    """A torchrun rank > 0 removes the folder Hydra made for it only if nothing is in it (it may
    be rank 0's run dir)."""
    try:
        run_dir.rmdir()
    except OSError:
        pass


_task_started = False


def _train_task(cfg: DictConfig) -> float:
    """One training run; returns the best validation score (accuracy, or MSE for regression)
    for sweepers that optimise it (hydra/sweeper=optuna)."""
    global _task_started
    _task_started = True
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metabench import locking, run
    from metabench.distributed import from_env

    lock = None
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    main_rank = from_env().is_main  # under torchrun only rank 0 prints and writes
    multirun = hc.mode == RunMode.MULTIRUN
    group = Path(hc.sweep.dir).name if multirun else None
    if cfg.data.get("root"):
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
               TextColumn("{task.fields[metrics]}")]
    shown: dict[str, float] = {}
    # the bar starts with the first step, after validation and data loading
    progress = Progress(*columns, console=console if main_rank else Console(quiet=True),
                        transient=False)
    task = progress.add_task(run.run_name(cfg), total=cfg.train.iterations, metrics="")

    def on_step(step: int, point: dict[str, float]) -> None:
        if not progress.live.is_started:
            progress.start()
        if any(k.startswith("val/") for k in point):
            progress.console.print(f"step {step:>6}  {_fmt(point)}", highlight=False)
        shown.update(point)
        progress.update(task, completed=step, metrics=_fmt(
            {k: v for k, v in shown.items() if k.startswith("train/")}))

    if main_rank:  # one writer per run dir (a single run took it before Hydra wrote .hydra/)
        try:
            lock = locking.hold(run_dir, warn)
        except UserError as e:  # the folder is another process's: touch nothing in it
            report_error(e)
            if multirun:
                raise
            sys.exit(e.exit_code)
    try:
        out = run.train(cfg, run_dir, say=progress.console.print, on_step=on_step, group=group)
    except UserError as e:
        if progress.live.is_started:
            progress.stop()
        if main_rank:
            report_error(e)
            _remove_if_empty(run_dir)
        else:
            _remove_if_bare(run_dir)
        if multirun:
            raise
        sys.exit(e.exit_code)
    finally:
        if progress.live.is_started:
            progress.stop()
        if main_rank and lock is not None:
            lock.release()  # a sweep's next job may run in this process
    if not main_rank:
        _remove_if_bare(run_dir)  # Hydra made it; rank 0's run dir holds the run
        return float(out.get("best_val", float("nan")))
    table = Table(title=f"metabench train: {run.run_name(cfg)}")
    for col in ("run dir", "iterations", "time", "best val", "test (95% CI)"):
        table.add_column(col)
    test = out.get("test")
    acc = cfg.data.kind == "classification"
    fmt = (lambda v: f"{v:.2%}") if acc else (lambda v: f"{v:.4f}")
    tested = f"{fmt(test['mean'])} +- {fmt(test['ci95'])}" if test else "-"
    table.add_row(str(run_dir), str(cfg.train.iterations), f"{out['seconds']:.0f}s",
                  fmt(out["best_val"]), tested)
    console.print(table)
    test_part = (f"test {test['metric']} {tested} over {test['episodes']} episodes" if test
                 else "not tested")
    plain(f"result: {run.run_name(cfg)}: {test_part}; best val {fmt(out['best_val'])}; "
          f"{cfg.train.iterations} iterations in {out['seconds']:.0f}s; run dir {run_dir}")
    return float(out["best_val"])


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler's time limit, ``kill``) stops training as Ctrl-C does: the last
    finished step is saved to last.pt, ready for ``train.resume=true``."""
    raise KeyboardInterrupt


def train_cmd(args: list[str]) -> int:
    import hydra

    global _task_started
    _task_started = False  # (main() may be called more than once in one process)

    app = hydra.main(version_base="1.3", config_path="pkg://metabench.configs",
                     config_name="train")(_train_task)
    from metabench.sweeps import SweepFailed, register_plugins

    register_plugins()
    from metabench.distributed import from_env

    if not from_env().is_main:  # torchrun rank > 0: Hydra writes no .hydra/ or train.log
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=none",
                "hydra/hydra_logging=none"]
    argv = sys.argv
    sys.argv = ["metabench train", *args]
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        app()
    except SystemExit as e:
        # Hydra reports a config it cannot compose (unknown option or key, bad override
        # syntax) and exits 1 before our task starts: that is bad input, exit code 2
        if e.code == 1 and not _task_started and not isinstance(e, SweepFailed):
            return 2
        raise
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, previous)
    return 0


def evaluate_cmd(args: list[str]) -> int:
    from metabench import run
    from metabench.artifacts import resolve_checkpoint
    from metabench.checkpoint import load_checkpoint
    from metabench.evaluation_config import evaluation_config

    try:
        bad = [a for a in args if "=" not in a]
        if bad:
            raise ConfigError(f"expected key=value overrides, got: {' '.join(bad)}")
        choices = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args
                   if a.split("=", 1)[0] in ("data", "logger")}  # group options, not keys
        try:
            overrides = OmegaConf.from_dotlist([a for a in args
                                                if a.split("=", 1)[0] not in choices])
        except OmegaConfBaseException as e:
            raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
        base = OmegaConf.load(resources.files("metabench.configs") / "evaluate.yaml")
        # logger=none|wandb picks a group option; data=NAME tests on another dataset
        logger = load_group_option("logger", choices["logger"]) if "logger" in choices else None
        data = load_group_option("data", choices["data"]) if "data" in choices else None
        settings = OmegaConf.merge(base, overrides)
        if OmegaConf.is_missing(settings, "checkpoint"):
            raise ConfigError("evaluate needs checkpoint=PATH (e.g. outputs/<run>/checkpoints/"
                              "best.pt)")
        checkpoint = resolve_checkpoint(str(settings.pop("checkpoint")), say=plain)  # wandb:...
        blob = load_checkpoint(checkpoint)
        cfg = evaluation_config(blob["config"], settings, data)
        if logger is not None:
            with open_dict(cfg):
                cfg.logger = logger
        if cfg.data.get("root"):
            cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
        with console.status("evaluating"):
            results = run.evaluate(cfg, checkpoint, blob, say=console.print)
    except UserError as e:
        report_error(e)
        return e.exit_code
    acc = results["metric"] == "accuracy"
    fmt = (lambda v: f"{100 * v:.2f}%") if acc else (lambda v: f"{v:.4f}")
    table = Table(title=f"metabench evaluate: {checkpoint}")
    for col in ("algo", "data", "setting", "protocol", "episodes", results["metric"], "95% CI"):
        table.add_column(col)
    setting = (f"{results['ways']}-way {results['shots']}-shot" if acc
               else f"{results['shots']}-shot")
    proto = protocol_label(results)
    table.add_row(results["algo"], results["data"], setting, proto, str(results["episodes"]),
                  fmt(results["mean"]), f"+- {fmt(results['ci95'])}")
    if "pre_adaptation_mean" in results:
        table.add_row("", "", "before adaptation", "", "", fmt(results["pre_adaptation_mean"]),
                      f"+- {fmt(results['pre_adaptation_ci95'])}")
    console.print(table)
    plain(f"result: {results['algo']} {results['data']} {setting}: {results['metric']} "
          f"{fmt(results['mean'])} +- {fmt(results['ci95'])} over {results['episodes']} "
          f"episodes, {proto}; checkpoint {checkpoint}")
    steps = inner_step_results(results)
    if steps:  # a learner trained from scratch: the test metric after each inner step
        plain("after inner step " + ", ".join(f"{t}: {fmt(v)} +- {fmt(results[f'step{t}_ci95'])}"
                                              for t, v in steps.items()))
    if "ensemble" in results:
        plain(f"ensemble of the {len(results['ensemble'])} best kept checkpoints: "
              + ", ".join(Path(p).name for p in results["ensemble"]))
    plain(f"results written to {checkpoint.parent / run.results_name(cfg, blob)}")
    return 0


def report_cmd(args: list[str]) -> int:
    """`metabench report PATH... [--out DIR]`: compare the runs found under PATHs."""
    import argparse

    from metabench import report

    parser = argparse.ArgumentParser(
        prog="metabench report",
        description="Compare finished runs and sweeps: one row per setting (seeds grouped), "
                    "unfinished or failed runs listed below; writes report.md, report.csv "
                    "and the figures val_curves.png, test_results.png, reliability.png and "
                    "(learners trained from scratch) inner_steps.png.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="run directories or folders of them (sweeps)")
    parser.add_argument("--out", metavar="DIR",
                        help="where the report files go (default: the first PATH)")
    ns = parser.parse_args(args)
    missing = [p for p in ns.paths if not Path(p).exists()]
    rows = report.collect(ns.paths)
    if not rows:
        report_error(ConfigError(f"no such path: {', '.join(missing)}" if missing else
                                 f"no runs found under: {' '.join(ns.paths)} (a run directory "
                                 "holds config.yaml)"))
        return 2
    first = Path(ns.paths[0])
    out_dir = Path(ns.out) if ns.out else (first if first.is_dir() else first.parent)
    groups = report.aggregate(rows)
    report.print_report(rows, groups, console=console)
    try:
        paths = report.write_report(rows, groups, out_dir)
    except OSError as e:
        report_error(ConfigError(f"cannot write the report to {out_dir}: {e.strerror or e}"))
        return 2
    console.print(f"report written to {paths[0]} and {paths[1]}", highlight=False,
                  soft_wrap=True)
    from metabench import figures

    if not figures.available():
        console.print("figures skipped: matplotlib is not installed (pip install "
                      "'metabench[report]')", highlight=False)
        return 0
    pngs = figures.write_figures(groups, out_dir)
    if pngs:
        console.print(f"figures: {', '.join(map(str, pngs))}", highlight=False, soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print_help()
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        return train_cmd(rest)
    if command == "evaluate":
        if rest and rest[0] in ("-h", "--help"):
            print(HELP.split("\n\n")[0])
            return 0
        return evaluate_cmd(rest)
    if command == "report":
        return report_cmd(rest)
    if command == "predict":
        from metabench.predict_cmd import predict_cmd

        return predict_cmd(rest)
    err_console.print(f"[bold red]error:[/] unknown command {command!r} "
                      "(commands: train, evaluate, predict, report)", highlight=False)
    return 2
