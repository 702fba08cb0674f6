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


# pytest-xdist runs one worker per core (pyproject: -n auto); each worker's torch (and every
# subprocess a test starts) gets its share of the cores, so workers never oversubscribe them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("METABENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    # never the network: data.download reads this (a download test passes data.download=true
    # and a 127.0.0.1 url); W&B's artifact staging and cache stay in the test's folders
    monkeypatch.setenv("METABENCH_DOWNLOAD", "false")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path_factory.getbasetemp() / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "wandb-cache"))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, str(THREADS))
    torch.set_num_threads(THREADS)


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
