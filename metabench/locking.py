"""One writer per run directory. A run holds a lock (``filelock``, an OS lock that dies with its
process) on ``<run dir>/.metabench.lock`` while it trains, and records who holds it beside it,
so a second ``metabench train`` into the same folder (a resume typed twice, a SLURM requeue
while the first job lives) stops with one line naming the holder instead of interleaving
checkpoints and metrics. A record left by a killed process is taken over with a warning."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metabench.errors import RunDirBusy

LOCK_NAME = ".metabench.lock"
OWNER_NAME = ".metabench.lock.json"  # apart from the lock: opening the lock file truncates it
_held: dict[Path, RunDirLock] = {}


def read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((Path(run_dir) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid')} on host {owner.get('host')} (since {since})"


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """Whether the recorded holder still runs: known on its own host only (else None)."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


class RunDirLock:
    """The lock of one run directory, held by this process."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()
        self._lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=0, thread_local=False)

    def acquire(self, warn: Callable[[str], None]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunDirBusy(
                f"run directory {self.run_dir} is in use by {describe(read_owner(self.run_dir))}"
                ": wait for that run to end, stop it, or choose another hydra.run.dir"
            ) from None
        stale = read_owner(self.run_dir)
        if stale is not None:
            warn(f"took over the lock of {self.run_dir} from {describe(stale)}, which ended "
                 "without releasing it (killed?)")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        (self.run_dir / OWNER_NAME).write_text(json.dumps(owner) + "\n")
        _held[self.run_dir] = self
        atexit.register(self.release)

    def release(self) -> None:
        if _held.get(self.run_dir) is not self:
            return
        del _held[self.run_dir]
        with contextlib.suppress(OSError):
            (self.run_dir / OWNER_NAME).unlink()
        with contextlib.suppress(OSError):
            self._lock.release()


def hold(run_dir: str | Path, warn: Callable[[str], None]) -> RunDirLock:
    """Lock ``run_dir`` for this process (a no-op if it already holds it); RunDirBusy if a live
    process does. Released at exit, or with ``release``."""
    path = Path(run_dir).resolve()
    if path in _held:
        return _held[path]
    lock = RunDirLock(path)
    lock.acquire(warn)
    return lock


class LockRunDir(Callback):
    """Hydra callback (configs/train.yaml): a single run takes its lock before Hydra writes
    ``.hydra/`` into the folder, so a refused second writer changes none of the first's files.
    (Sweep jobs take theirs at the start of the task; see cli.py.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        from metabench.console import report_error, warn
        from metabench.distributed import from_env

        if not from_env().is_main:  # torchrun: rank 0 writes the run dir
            return
        try:
            hold(str(config.hydra.run.dir), warn)
        except RunDirBusy as e:
            report_error(e)
            sys.exit(e.exit_code)
