"""The class splits the project ships: ``<dataset>/{train,val,test}.txt``, one name a line,
``#`` comment lines naming the paper and the official file each list matches."""

from __future__ import annotations

from importlib import resources


def read_split(dataset: str, split: str) -> list[str]:
    """The names listed in ``<dataset>/<split>.txt``, in file order."""
    text = resources.files(__name__).joinpath(dataset, f"{split}.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
