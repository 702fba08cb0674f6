"""Checkpoints as W&B model artifacts: ``logger.log_model=best|last`` uploads one at the end of
training (``model-<run id>``, offline staged for ``wandb sync``), and ``metabench evaluate
checkpoint=wandb:<entity>/<project>/<artifact>:<alias>`` fetches one, so a model trained on a
cluster can be tested anywhere without copying run folders around."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from metabench.checkpoint import load_checkpoint
from metabench.errors import CheckpointError, UserError
from metabench.loggers import Logger

PREFIX = "wandb:"
SPEC = "wandb:<entity>/<project>/<artifact>:<alias> (e.g. wandb:me/metabench/model-1a2b3c:best)"
API_TIMEOUT = 30  # seconds per W&B API request (the client retries for 20 s on top)


def log_model(cfg: DictConfig, logger: Logger, ckpt_dir: Path, best_val: float,
              test: dict[str, Any] | None = None) -> None:
    """Upload ``checkpoints/<logger.log_model>.pt`` through ``logger`` (W&B only) with what a
    reader of the artifact needs to pick it: step, best val, algorithm, data, test result."""
    which = cfg.logger.get("log_model", False)
    if cfg.logger.name != "wandb" or which not in ("best", "last"):
        return
    path = ckpt_dir / f"{which}.pt"
    try:
        step = int(load_checkpoint(path)["step"])
    except UserError as e:  # missing or unreadable: training itself is done, say so and go on
        warnings.warn(f"W&B model upload skipped: {e}", stacklevel=2)
        return
    metadata: dict[str, Any] = {"step": step, "best_val": best_val, "algo": cfg.algo.name,
                                "data": cfg.data.name, "backbone": cfg.backbone.name,
                                "ways": int(cfg.data.ways), "shots": int(cfg.data.shots)}
    if test:
        metadata[f"test_{test['metric']}"] = test["mean"]
        metadata[f"test_{test['metric']}_ci95"] = test["ci95"]
    logger.log_model(path, [which, "latest"], metadata)


def cache_root() -> Path:
    """Downloaded artifacts live beside the decoded datasets ($METABENCH_CACHE)."""
    return Path(os.environ.get("METABENCH_CACHE", "~/.cache/metabench")).expanduser() / "wandb"


def _parse(spec: str) -> tuple[str, str]:
    """``wandb:e/p/a:alias`` -> (``e/p/a:alias``, a folder name per entity/project/artifact)."""
    name = spec[len(PREFIX):]
    path, _, alias = name.rpartition(":")
    parts = path.split("/")
    if not alias or len(parts) != 3 or not all(parts):
        raise CheckpointError(f"checkpoint={spec}: expected {SPEC}")
    return name, "/".join(re.sub(r"[^\w.-]", "_", p) for p in parts)


def resolve_checkpoint(spec: str, say: Callable[[str], None] = print,
                       root: Path | None = None) -> Path:
    """The local file of ``checkpoint=...``: a path as given, or for a ``wandb:`` spec the one
    ``.pt`` in the artifact, downloaded into ``root`` (default the cache) per version, so a
    moved alias never mixes two versions and results.json lands beside its checkpoint."""
    if not spec.startswith(PREFIX):
        return Path(spec)
    name, folder = _parse(spec)
    try:
        import wandb

        artifact = wandb.Api(timeout=API_TIMEOUT).artifact(name, type="model")
        target = (root or cache_root()) / folder / str(artifact.version)
        downloaded = Path(artifact.download(root=str(target)))
    except Exception as e:  # offline, no login, unknown artifact, wrong type, disk full
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot fetch checkpoint {spec} from W&B: {text[:200]} (this "
                              "needs network and a W&B login: WANDB_API_KEY or `wandb login`)"
                              ) from None
    found = sorted(downloaded.rglob("*.pt"))
    if len(found) != 1:
        held = ", ".join(p.name for p in found) or "no .pt file"
        raise CheckpointError(f"W&B artifact {name} holds {held}: expected one metabench "
                              "checkpoint (.pt)")
    say(f"fetched {spec} ({artifact.version}) into {found[0]}")
    return found[0]
