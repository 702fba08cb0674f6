"""Sweeps that check before they start and account for every job. Hydra's basic sweeper
(used by the basic, joblib and submitit launchers) finds a bad job only when it reaches it; this
one composes every job's config first and runs the checks a single run makes (config, device,
data), printing one line per problem, ``error: job 1 (data.ways=5000): ...``, and exiting 2
before any job starts or any folder is made. After the jobs it says how many failed. The Optuna
sweeper gets the same check for each batch of trials. The plugin classes themselves live in
hydra_plugins/metabench_sweepers (Hydra takes sweepers from there only)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

SPLITS = ("train", "val", "test")


def job_label(num: int, job: Sequence[str], master: DictConfig) -> str:
    """``job N (the overrides that set it apart)``: those not on the sweep's command line as
    given (a comma list's value, an Optuna trial's parameters)."""
    given = set(OmegaConf.to_container(master.hydra.overrides.task, resolve=False))
    shown = [o for o in job if o not in given]
    return f"job {num} ({' '.join(shown)})" if shown else f"job {num}"


def check_jobs(config_loader: Any, master: DictConfig, jobs: Sequence[Sequence[str]],
               first_num: int = 0) -> list[str]:
    """Compose each job as its launcher will, then ``checks.job_problems``; problem lines."""
    from metabench.checks import job_problems

    datasets: dict[str, Any] = {}  # jobs on the same data load it once
    problems = []
    for num, job in enumerate(jobs, first_num):
        try:
            cfg = config_loader.load_sweep_config(master_config=master, sweep_overrides=list(job))
            with read_write(cfg), open_dict(cfg):
                task = copy.deepcopy(cfg)
                del task["hydra"]
            found = job_problems(task, SPLITS, datasets)
        except Exception as e:  # a job Hydra cannot compose (unknown option, bad value)
            found = [str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__]
        problems += [f"{job_label(num, job, master)}: {p}" for p in found]
    return problems


def refuse(problems: list[str]) -> None:
    """One line per problem and exit code 2: nothing has started."""
    from metabench.console import report_error

    if problems:
        report_error("\n".join(problems))
        sys.exit(2)


class CheckedLauncher(Launcher):
    """Wraps a sweeper's launcher: each batch is checked before it is launched (for sweepers
    that choose jobs as they go, like Optuna)."""

    def __init__(self, inner: Launcher, config_loader: Any, master: DictConfig):
        self.inner, self.config_loader, self.master = inner, config_loader, master

    def setup(self, **kwargs: Any) -> None:  # the inner launcher is set up already
        pass

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        refuse(check_jobs(self.config_loader, self.master, job_overrides, initial_job_idx))
        return self.inner.launch(job_overrides, initial_job_idx)


class CheckedSweep:
    """Mixed into Hydra's basic sweeper: the same jobs, batches and launch calls, plus the check
    of every job before the first starts and a closing line counting the jobs that failed; a
    failed job never stops the others. (Not a BasicSweeper subclass here: Hydra's plugin scan
    re-executes that module, and a class made before the scan would be stale.)"""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        self.overrides = self.split_arguments(
            parser.parse_overrides([*self._parse_config(), *arguments]), self.max_batch_size)
        jobs = [job for batch in self.overrides for job in batch]
        refuse(check_jobs(loader, self.config, jobs))

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, failed, num = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            try:
                results = self.launcher.launch(batch, initial_job_idx=num)
            except Exception as e:  # e.g. submitit: a job's process died (killed, OOM)
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self._close(len(jobs), failed, sweep_dir,
                            f"the launcher stopped at a job that did not return ({why}); "
                            f"jobs already started may still run: `metabench report "
                            f"{sweep_dir}` lists every job with its status")
            for i, r in enumerate(results):
                if r.status == JobStatus.FAILED:
                    label = job_label(num + i, batch[i], self.config)
                    failed.append(f"{label}: {r._return_value}")
            num += len(batch)
            returns.append(results)
        self._close(len(jobs), failed, sweep_dir)
        return returns

    @staticmethod
    def _close(total: int, failed: list[str], sweep_dir: Path, stopped: str | None = None
               ) -> None:
        """The sweep's last line; exit 1 when a job failed or the launcher stopped."""
        from metabench.console import console, report_error

        if stopped is None and not failed:
            console.print(f"sweep: all {total} jobs finished; compare them with `metabench "
                          f"report {sweep_dir}`", highlight=False, soft_wrap=True)
            return
        for line in failed:
            report_error(line)
        report_error(stopped or f"{len(failed)} of {total} jobs failed; `metabench report "
                     f"{sweep_dir}` lists every job with its status")
        raise SweepFailed(1)


class SweepFailed(SystemExit):
    """Exit code 1 at the end of a sweep in which a job failed (not Hydra's exit 1 for a config
    it cannot compose, which the CLI turns into 2)."""


def register_plugins() -> None:
    """Register metabench's sweepers with Hydra by hand: its plugin scan does not see packages
    installed in editable mode (``pip install -e``), so discovery alone is not enough."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # the scan first: it re-executes the modules it finds
    import hydra_plugins.metabench_sweepers as ours

    for name in ("MetabenchSweeper", "MetabenchOptunaSweeper"):
        if hasattr(ours, name):
            plugins.register(getattr(ours, name))
