"""scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 images of
8x8, 10 classes, UCI's optdigits test set) as a few-shot dataset that needs no download: a
first run on any machine, and a second real dataset for cross-dataset tests.

Pixels 0..16 (ink bright) become uint8 0..255, each image resized to ``image_size`` with PIL's
Lanczos filter (28 by default, Omniglot's size, so a Conv-4 and an Omniglot-trained model take
them). Split by class: train 0-4, val and test both 5-9 (10 classes cannot give three
disjoint 5-way splits; val and test draw different episodes by their seeds). Every class keeps
its first 174 images (the smallest class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from metabench.data.sampler import SPLITS, ImageClasses
from metabench.errors import DataError
from metabench.preprocess import ImagePreprocess

DEFAULT_CLASSES = {"train": [0, 1, 2, 3, 4], "val": [5, 6, 7, 8, 9], "test": [5, 6, 7, 8, 9]}


def load_digits(image_size: int = 28,
                classes: dict[str, Sequence[int]] | None = None) -> ImageClasses:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("data=digits needs scikit-learn: pip install 'metabench[digits]'"
                        ) from None
    classes = {s: [int(c) for c in v] for s, v in (classes or DEFAULT_CLASSES).items()}
    bad = [f"{s}: {c}" for s in SPLITS for c in classes.get(s, []) if not 0 <= c <= 9]
    if set(classes) != set(SPLITS) or bad or any(len(classes[s]) < 2 for s in SPLITS):
        raise DataError(f"data.source.classes={classes} must give train, val and test at "
                        "least 2 digit classes each, from 0-9")
    try:
        resize = ImagePreprocess(image_size, channels=1)
    except ValueError as e:
        raise DataError(str(e).replace("preprocess.size", "image_size")) from None
    bunch = sklearn_digits()
    pixels = (torch.from_numpy(bunch.images) * (255 / 16)).round().to(torch.uint8)
    target = torch.from_numpy(bunch.target)
    per_class = int(torch.bincount(target).min())
    by_class = []
    for c in range(10):
        rows = pixels[target == c][:per_class]
        by_class.append(torch.stack([resize(Image.fromarray(r.numpy(), mode="L"))
                                     for r in rows]))
    images = torch.stack(by_class)  # [10, 174, 1, size, size]
    return ImageClasses("digits", {s: images[classes[s]].contiguous() for s in SPLITS})
