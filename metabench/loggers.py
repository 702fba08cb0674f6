"""Where metrics go: always a local ``metrics.jsonl``; W&B behind a lazy import, offline when no
credentials exist, and never allowed to stop or stall training."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from metabench.files import storage_error


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def log_model(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """One JSON object per logged point, flushed at once, so a killed run keeps its history."""

    def __init__(self, path: Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")

    def log(self, metrics: dict[str, float], step: int) -> None:
        try:
            self._f.write(json.dumps({"step": step, **metrics}) + "\n")
            self._f.flush()
        except OSError as e:
            raise storage_error(self.path, e) from None

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_model(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        pass  # the checkpoint is already in the run dir

    def close(self) -> None:
        self._f.close()


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """A W&B run; any failure turns it into a no-op with one warning."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, name: str,
                 group: str | None, tags: list[str], mode: str = "auto",
                 entity: str | None = None, run_id: str | None = None,
                 job_type: str = "train", say: Callable[[str], None] = print):
        self.run = None
        self.say = say
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials()
                                                    else "offline")
        try:
            import wandb

            self.run = wandb.init(
                project=project, entity=entity, name=name, group=group, tags=tags,
                config=config, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
                job_type=job_type, reinit="create_new",
                settings=wandb.Settings(init_timeout=60, silent=True, console="off",
                                        x_disable_stats=True, x_disable_meta=True),
            )
        except Exception as e:  # no network, bad key, service crash: keep training
            warnings.warn(f"W&B disabled for this run: {str(e).splitlines()[0]}", stacklevel=2)
            self.run = None
            return
        self.id = self.run.id
        if mode == "offline":
            say(f"W&B: offline run in {self.run.dir.rsplit('/files', 1)[0]}; "
                f"upload it later with `wandb sync {run_dir}/wandb/offline-run-*`")

    def _guard(self, fn: Callable[[], None]) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as e:
            warnings.warn(f"W&B logging failed, continuing without it: {e}", stacklevel=3)
            self.run = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._guard(lambda: self.run.log(metrics, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        self._guard(lambda: self.run.summary.update(values))

    def log_model(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        """``path`` as version of the run's ``model-<run id>`` artifact (type "model"): uploaded
        online, staged for ``wandb sync`` offline. A failure warns and keeps the run (its
        metrics still finish); the checkpoint stays in the run dir either way."""
        if self.run is None:
            return
        try:
            import wandb

            name = f"model-{self.run.id}"
            artifact = wandb.Artifact(name, type="model", metadata=metadata)
            artifact.add_file(str(path), name=Path(path).name)
            self.run.log_artifact(artifact, aliases=aliases)
            where = f"{self.run.entity or '<entity>'}/{self.run.project}/{name}:{aliases[0]}"
            later = " (offline: uploaded by wandb sync)" if self.run.offline else ""
            self.say(f"W&B: {path} logged as model artifact {where}{later}; evaluate it "
                     f"anywhere with checkpoint=wandb:{where}")
        except Exception as e:
            warnings.warn(f"W&B model upload failed, {path} stays local: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                          stacklevel=2)

    def close(self) -> None:
        self._guard(lambda: self.run.finish())


class MultiLogger:
    def __init__(self, *loggers: Logger):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(values)

    def log_model(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_model(path, aliases, metadata)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
