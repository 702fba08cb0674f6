"""The on-disk cache of decoded datasets: images are decoded once into uint8 tensors and saved
as one torch file whose name carries a fingerprint of the source files, so a changed source
gets a new file; a truncated, foreign or stale file is rebuilt, never trusted."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metabench.files import atomic_torch_save

DEFAULT_SUBDIR = ".metabench-cache"


def cache_folder(cache_dir: str | None, root: Path) -> Path:
    """``cache_dir`` (data.cache_dir, from METABENCH_CACHE in the configs), else a hidden
    folder in the dataset's root."""
    return Path(cache_dir).expanduser() if cache_dir else root / DEFAULT_SUBDIR


def digest(*parts: Any) -> str:
    """A short stable hash of ``repr(parts)``, for cache file names."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def load_cache(path: Path, valid: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The cached blob if the file exists, loads and passes ``valid``; None means rebuild."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob if isinstance(blob, dict) and valid(blob) else None
    except Exception:  # truncated, foreign or stale: rebuilt by the caller
        return None


def save_cache(blob: dict[str, Any], path: Path, replaces: str | None = None) -> None:
    """Write ``blob`` atomically; then delete the older files of its folder that match the
    glob ``replaces`` (earlier versions of the same dataset, which can be large)."""
    atomic_torch_save(blob, path)
    if replaces:
        for old in path.parent.glob(replaces):
            if old != path:
                old.unlink(missing_ok=True)
