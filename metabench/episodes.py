"""Episodes: a batch of few-shot tasks with a leading task dimension.

Classification episodes are class-major: support labels are ``arange(ways)`` repeated
``shots`` times, query labels likewise with ``queries``. Regression episodes carry float
targets of shape ``[tasks, points, 1]`` and ``ways == 0``. Image episodes also say which
classes of the split each task drew (``classes[t, y]`` is label ``y``'s class in task ``t``), for
learners that train on global labels (the pretrain + finetune baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class EpisodeSpec:
    """How many classes (ways), support shots and query examples per class a task has."""

    ways: int
    shots: int
    queries: int


@dataclass
class Episode:
    x_support: Tensor  # [T, ways*shots, *input_shape]
    y_support: Tensor  # [T, ways*shots] int64, or [T, shots, 1] float for regression
    x_query: Tensor  # [T, ways*queries, *input_shape]
    y_query: Tensor  # [T, ways*queries] int64, or [T, queries, 1] float for regression
    ways: int  # 0 for regression
    classes: Tensor | None = None  # [T, ways] int64 class indices of the split, or None

    @property
    def tasks(self) -> int:
        return self.x_support.shape[0]

    @property
    def is_classification(self) -> bool:
        return self.ways > 0

    def select(self, tasks: slice) -> Episode:
        """The tasks in ``tasks`` (a slice of the task dimension), every per-task field alike."""
        return Episode(self.x_support[tasks], self.y_support[tasks], self.x_query[tasks],
                       self.y_query[tasks], self.ways,
                       None if self.classes is None else self.classes[tasks])

    def task(self, t: int) -> Episode:
        """The t-th task alone, keeping a task dimension of 1."""
        return self.select(slice(t, t + 1))

    def to(self, device: torch.device | str) -> Episode:
        return Episode(self.x_support.to(device), self.y_support.to(device),
                       self.x_query.to(device), self.y_query.to(device), self.ways,
                       None if self.classes is None else self.classes.to(device))
