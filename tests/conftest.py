"""Shared fixtures: configs composed through Hydra's Compose API, small Omniglot archives
built on the fly, the real Omniglot when present, and an environment where W&B stays offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import write_omniglot_zip
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
REAL_OMNIGLOT = Path(os.environ.get("METABENCH_OMNIGLOT", REPO.parent / "shared/data/omniglot"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("METABENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


def make_cfg(*overrides: str):
    with initialize_config_module("metabench.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture
def small_omniglot(tmp_path) -> Path:
    """3 background alphabets (2 train, 1 val) and 1 evaluation alphabet, 20 images each."""
    root = tmp_path / "omniglot"
    root.mkdir()
    write_omniglot_zip(root / "images_background.zip", "images_background",
                       {"Alpha": 3, "Beta": 2, "Gamma": 2})
    write_omniglot_zip(root / "images_evaluation.zip", "images_evaluation", {"Delta": 3}, seed=7)
    return root


@pytest.fixture
def real_omniglot() -> Path:
    if not (REAL_OMNIGLOT / "images_background.zip").exists():
        pytest.skip(f"real Omniglot not found at {REAL_OMNIGLOT} (set METABENCH_OMNIGLOT)")
    return REAL_OMNIGLOT
