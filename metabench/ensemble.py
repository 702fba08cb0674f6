"""The top-k validation checkpoints of a run (``train.keep_top``) and their ensemble at test
(``metabench evaluate ... eval.ensemble_top=K``): MAML++'s authors test the mean prediction
of their five best validation checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metabench.algorithms.base import MetaLearner
from metabench.checkpoint import save_checkpoint
from metabench.episodes import Episode
from metabench.errors import ConfigError
from metabench.files import atomic_write_json

INDEX = "index.json"


def top_index(top_dir: Path) -> list[dict[str, Any]]:
    """The kept checkpoints, best first: [{step, score, file}]."""
    path = top_dir / INDEX
    return json.loads(path.read_text()) if path.is_file() else []


def keep_top(ckpt_dir: Path, k: int, step: int, score: float, state: dict[str, Any]) -> None:
    """Keep ``state`` in ``checkpoints/top/`` if its validation score is among the best ``k``
    so far (ties: the earlier step stays); drop the one it displaces."""
    top_dir = ckpt_dir / "top"
    entries = [e for e in top_index(top_dir) if e["step"] != step]  # a resumed step again
    if len(entries) >= k and score <= entries[-1]["score"]:
        return
    top_dir.mkdir(parents=True, exist_ok=True)
    name = f"step{step:08d}.pt"
    save_checkpoint(top_dir / name, state)
    entries.append({"step": step, "score": score, "file": name})
    entries.sort(key=lambda e: (-e["score"], e["step"]))
    for gone in entries[k:]:
        (top_dir / gone["file"]).unlink(missing_ok=True)
    atomic_write_json(entries[:k], top_dir / INDEX)


def top_checkpoints(ckpt_dir: Path, k: int) -> list[Path]:
    """The ``k`` best kept checkpoints next to ``ckpt_dir``'s best.pt, or the one-line error."""
    entries = top_index(ckpt_dir / "top")
    if len(entries) < k:
        raise ConfigError(
            f"eval.ensemble_top={k}: {ckpt_dir / 'top'} holds {len(entries)} checkpoint(s); "
            f"train with train.keep_top={k} or more (algo=mamlpp keeps 5)")
    return [ckpt_dir / "top" / e["file"] for e in entries[:k]]


class Ensemble(MetaLearner):
    """Members' predictions averaged: class probabilities for classification (returned as
    their log, so the scored loss is the ensemble's NLL), values for regression."""

    def __init__(self, members: list[MetaLearner]):
        first = members[0]
        super().__init__(first.backbone, first.kind, first.ways)
        self.members = nn.ModuleList(members)
        self.any_ways = first.any_ways

    @property
    def norm(self) -> str:
        return self.members[0].norm

    def transductive(self) -> bool:
        return self.members[0].transductive()

    def predict(self, episode: Episode) -> Tensor:
        preds = [m.predict(episode) for m in self.members]
        if episode.is_classification:
            probs = torch.stack([m.probabilities(p) for m, p in zip(self.members, preds,
                                                                    strict=True)])
            return probs.mean(0).clamp_min(1e-12).log()
        return torch.stack([m.point_prediction(p) for m, p in zip(self.members, preds,
                                                                  strict=True)]).mean(0)
