"""A small synthetic image dataset for fast tests: each class is a random low-resolution
pattern, each image that pattern shifted by up to a pixel plus noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metabench.data.sampler import ImageClasses


def make_synthetic(classes: tuple[int, int, int] = (64, 16, 20), per_class: int = 20,
                   image_size: int = 28, channels: int = 1, noise: float = 0.35,
                   seed: int = 0) -> ImageClasses:
    g = torch.Generator().manual_seed(seed)
    total = sum(classes)
    low = max(image_size // 4, 2)
    patterns = (torch.rand(total, channels, low, low, generator=g) > 0.5).float()
    patterns = F.interpolate(patterns, size=(image_size, image_size), mode="nearest")
    x = patterns[:, None].expand(total, per_class, channels, image_size, image_size).clone()
    shifts = torch.randint(-1, 2, (total, per_class, 2), generator=g)
    for c in range(total):  # once at build time, not in the training loop
        for i in range(per_class):
            x[c, i] = torch.roll(x[c, i], shifts=tuple(shifts[c, i].tolist()), dims=(-2, -1))
    x = x + noise * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    a, b, _ = classes
    return ImageClasses("synthetic", {"train": images[:a], "val": images[a:a + b],
                                      "test": images[a + b:]})
