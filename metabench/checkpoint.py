"""Checkpoints: a plain dict of state_dicts, the step, RNG states and the resolved config,
tagged with a format name and version, written atomically and loaded without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metabench.errors import CheckpointError
from metabench.files import atomic_torch_save

FORMAT = "metabench-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, empty file, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or unreadable ({reason[:120]})"
                              ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a metabench checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {blob.get('version')}, "
                              f"this metabench reads version {VERSION}")
    return blob
