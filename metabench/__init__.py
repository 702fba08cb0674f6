"""metabench: a fast, paper-faithful meta-learning experiment runner.

``metabench.load(checkpoint)`` gives a trained model to adapt and predict with (metabench/api.py);
it is imported on first use, so the command line starts without it."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from metabench.api import load

        return load
    raise AttributeError(f"module 'metabench' has no attribute {name!r}")
