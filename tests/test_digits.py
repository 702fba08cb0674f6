"""data=digits: scikit-learn's bundled digits as a few-shot dataset (no download)."""

from __future__ import annotations

import pytest
import torch

from metabench.data.digits import load_digits
from metabench.errors import DataError


def test_split_sizes_and_pixels():
    from sklearn.datasets import load_digits as sklearn_digits

    data = load_digits(image_size=8)
    assert [data.classes(s) for s in ("train", "val", "test")] == [5, 5, 5]
    assert data.splits["train"].shape == (5, 174, 1, 8, 8)
    assert data.splits["train"].dtype == torch.uint8
    # at the native size the pixels are scikit-learn's, 0..16 scaled to 0..255
    bunch = sklearn_digits()
    first_three = torch.from_numpy(bunch.images[bunch.target == 3][0])
    expected = (first_three * 255 / 16).round().to(torch.uint8)
    assert torch.equal(data.splits["train"][3, 0, 0], expected)
    assert torch.equal(data.splits["val"], data.splits["test"])  # same classes 5-9


def test_resized_for_conv4_and_composed(cfg_factory):
    from metabench.build import build_data

    data = build_data(cfg_factory("data=digits", "logger=none"))
    assert data.input_shape == (1, 28, 28) and data.splits["test"].float().max() > 200


def test_bad_class_lists_are_one_line():
    with pytest.raises(DataError, match="must give train, val and test at least 2 digit"):
        load_digits(classes={"train": [0, 1], "val": [2, 3], "test": [12, 13]})
