"""Episode sampling by indexing a class-major uint8 tensor that lives on the training device.

Indices are drawn on the CPU from a seeded ``torch.Generator`` (a few hundred integers), so a
seed gives the same episodes on every device; the images never leave the device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metabench.episodes import Episode, EpisodeSpec
from metabench.errors import DataError

SPLITS = ("train", "val", "test")
EPISODE_CLASSES = ("random", "within_alphabet")


class ImageEpisodeSampler:
    """Samples N-way K-shot Q-query tasks from ``images`` of shape [classes, per_class, C, H, W].

    With ``groups`` (a group id per class, e.g. Omniglot's alphabets) every task draws all its
    classes from one group, picked uniformly among the groups with at least ``ways`` classes."""

    def __init__(self, images: Tensor, spec: EpisodeSpec, channels_last: bool = False,
                 groups: Tensor | None = None):
        self.images = images
        self.spec = spec
        self.channels_last = channels_last
        self._item_weights = torch.ones(images.shape[1])
        self._members: Tensor | None = None
        if groups is None:
            self._weights = torch.ones(images.shape[0])
        else:  # membership [G, classes]; the groups that can fill a task, equally likely
            ids = torch.unique(groups)
            self._members = (groups.cpu()[None] == ids.cpu()[:, None]).float()
            self._weights = (self._members.sum(1) >= spec.ways).float()

    def _classes(self, tasks: int, generator: torch.Generator) -> Tensor:
        ways = self.spec.ways
        if self._members is None:
            return torch.multinomial(self._weights.expand(tasks, -1), ways, generator=generator)
        group = torch.multinomial(self._weights.expand(tasks, -1), 1, generator=generator)
        return torch.multinomial(self._members[group[:, 0]], ways, generator=generator)

    def sample(self, tasks: int, generator: torch.Generator) -> Episode:
        ways, shots, queries = self.spec.ways, self.spec.shots, self.spec.queries
        n = shots + queries
        classes = self._classes(tasks, generator)
        items = torch.multinomial(self._item_weights.expand(tasks * ways, -1), n,
                                  generator=generator).view(tasks, ways, n)
        device = self.images.device
        classes = classes.to(device, non_blocking=True)
        items = items.to(device, non_blocking=True)
        x = self.images[classes[:, :, None], items].float().div_(255.0)  # [T, W, n, C, H, W]
        shape = x.shape[3:]
        x_support = x[:, :, :shots].reshape(tasks, ways * shots, *shape)
        x_query = x[:, :, shots:].reshape(tasks, ways * queries, *shape)
        if self.channels_last:
            x_support, x_query = _channels_last(x_support), _channels_last(x_query)
        labels = torch.arange(ways, device=device)
        y_support = labels.repeat_interleave(shots).expand(tasks, -1)
        y_query = labels.repeat_interleave(queries).expand(tasks, -1)
        return Episode(x_support, y_support, x_query, y_query, ways, classes)


def _channels_last(x: Tensor) -> Tensor:
    """[T, N, C, H, W] with each task's [N, C, H, W] batch in channels_last strides."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


class ImageClasses:
    """A classification dataset: one uint8 tensor [classes, per_class, C, H, W] per split;
    optionally a group id per class (``groups``: Omniglot's alphabets), which
    ``episode_classes=within_alphabet`` draws every task's classes from."""

    kind = "classification"

    def __init__(self, name: str, splits: dict[str, Tensor],
                 groups: dict[str, Tensor] | None = None, episode_classes: str = "random"):
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"{name}: splits {missing} are missing")
        if episode_classes not in EPISODE_CLASSES:
            raise DataError(f"data.episode_classes={episode_classes} is not one of: "
                            + ", ".join(EPISODE_CLASSES))
        if episode_classes == "within_alphabet" and groups is None:
            raise DataError(f"data.episode_classes=within_alphabet needs alphabets, which "
                            f"{name} does not have (omniglot does)")
        self.name = name
        self.splits = splits
        self.groups = groups
        self.episode_classes = episode_classes
        self.input_shape = tuple(splits["train"].shape[2:])
        self._on_device: dict[tuple[str, str], Tensor] = {}

    def classes(self, split: str) -> int:
        return self.splits[split].shape[0]

    def per_class(self, split: str) -> int:
        return self.splits[split].shape[1]

    def problems(self, split: str, spec: EpisodeSpec, prefix: str = "data.") -> list[str]:
        out = []
        if spec.ways > self.classes(split):
            out.append(f"{prefix}ways={spec.ways} exceeds the {self.classes(split)} classes of "
                       f"the {self.name} {split} split")
        if spec.shots + spec.queries > self.per_class(split):
            out.append(f"{prefix}shots + {prefix}queries = {spec.shots + spec.queries} exceeds "
                       f"the {self.per_class(split)} images per class of {self.name}")
        if self.episode_classes == "within_alphabet" and spec.ways <= self.classes(split):
            largest = int(torch.unique(self.groups[split], return_counts=True)[1].max())
            if spec.ways > largest:
                out.append(f"{prefix}ways={spec.ways} exceeds the largest alphabet ({largest} "
                           f"classes) of the {self.name} {split} split: "
                           "data.episode_classes=within_alphabet draws a task from one alphabet")
        return out

    def sampler(self, split: str, spec: EpisodeSpec, device: torch.device,
                channels_last: bool = False) -> ImageEpisodeSampler:
        key = (split, str(device))
        if key not in self._on_device:  # move each split to the device once
            self._on_device[key] = self.splits[split].to(device)
        groups = self.groups[split] if self.episode_classes == "within_alphabet" else None
        return ImageEpisodeSampler(self._on_device[key], spec, channels_last, groups)
