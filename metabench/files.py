"""Crash-safe writes: temp file in the same folder, fsync, then rename over the target, so a
reader sees the old file or the new one, never half of one. A write the disk refuses (full,
read-only, quota) becomes one StorageError line; the old file stays as it was."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from metabench.errors import StorageError


def storage_error(path: Path, e: OSError) -> StorageError:
    """One line for a refused write: the path, the reason, and that nothing older was lost."""
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    reason = e.strerror or str(e) or type(e).__name__
    return StorageError(f"cannot write {path}: {reason}{f' ({code})' if code else ''}; "
                        "stopped, the previous version of the file is kept")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        raise storage_error(path, e) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Serialised in memory first: torch.save into a file turns a refused write into an opaque
    RuntimeError, and the OSError is what says "disk full"."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
