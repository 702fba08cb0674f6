"""CIFAR-FS and FC100, the few-shot splits of CIFAR-100 (32x32 RGB, 600 images a class: each
class pools CIFAR-100's 500 train and 100 test images, train first, in file order).

- CIFAR-FS (Bertinetto et al. 2019): 64/16/20 classes, listed in splits/cifarfs/*.txt.
- FC100 (Oreshkin et al. 2018): 12/4/4 superclasses = 60/20/20 classes, listed in
  splits/fc100/*.txt; a split holds every class of its superclasses, in fine-label order.

Both are built from the official python archive ``cifar-100-python.tar.gz``, whose
``cifar-100-python/{train,test,meta}`` pickles ``root`` may hold extracted. torchvision's
CIFAR100 names the files, the URL and the archive's md5; the archive is extracted only after
that md5 check, and the pickles are read with the restricted unpickler (torchvision's own reader
calls plain pickle.load), so nothing in them can run code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torchvision.datasets import CIFAR100

from metabench.data.arrays import (
    Classes,
    cached,
    check_counts,
    check_settings,
    from_hwc,
    smallest_class,
    stats,
    unpack,
)
from metabench.data.safe_pickle import safe_load
from metabench.data.sampler import SPLITS, ImageClasses
from metabench.data.splits import read_split
from metabench.errors import DataError

FOLDER = CIFAR100.base_folder  # cifar-100-python
FILES = ("train", "test", "meta")
LAYOUT = f"{CIFAR100.filename} or its extracted {FOLDER}/{{train,test,meta}}"
SIZE = 32


def _extracted(root: Path, download: bool, md5: str) -> Path:
    folder = root / FOLDER
    if not all((folder / f).is_file() for f in FILES):
        unpack(root, CIFAR100.filename, md5, CIFAR100.url, download,
               f"CIFAR-100 not found: place {LAYOUT} (www.cs.toronto.edu/~kriz/cifar.html, the "
               f"python version) in {root}, or set data.download=true")
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{root / CIFAR100.filename} holds no {FOLDER}/{missing[0]}")
    return folder


def _field(blob: object, key: str, path: Path) -> object:
    if not isinstance(blob, dict) or key not in blob:
        raise DataError(f"{path} is not a CIFAR-100 pickle: it has no {key}")
    return blob[key]


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Images [N, 32, 32, 3] (train then test), fine and coarse labels, and their names."""
    meta = safe_load(folder / "meta")
    fine_names = [str(n) for n in _field(meta, "fine_label_names", folder / "meta")]
    coarse_names = [str(n) for n in _field(meta, "coarse_label_names", folder / "meta")]
    images, fine, coarse = [], [], []
    for name in ("train", "test"):
        path = folder / name
        blob = safe_load(path)
        data = np.asarray(_field(blob, "data", path))
        labels = [np.asarray(_field(blob, k, path)).reshape(-1).astype(np.int64)
                  for k in ("fine_labels", "coarse_labels")]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE \
                or any(len(v) != len(data) for v in labels):
            raise DataError(f"{path}: data must be uint8 [N, 3072] with one fine and one coarse "
                            f"label per row, found {data.dtype} {list(data.shape)}")
        for v, names, what in ((labels[0], fine_names, "fine"), (labels[1], coarse_names,
                                                                  "coarse")):
            if len(v) and (v.min() < 0 or v.max() >= len(names)):
                raise DataError(f"{path}: a {what} label is outside the {len(names)} names in "
                                f"{folder / 'meta'}")
        images.append(data.reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1))
        fine.append(labels[0])
        coarse.append(labels[1])
    return (np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names,
            coarse_names)


def _split_classes(kind: str, fine: np.ndarray, coarse: np.ndarray, fine_names: list[str],
                   coarse_names: list[str]) -> tuple[Classes, str]:
    """split -> fine class names present in the data, and what the split files list that the
    data lacks (for the error message)."""
    present = {fine_names[k] for k in np.unique(fine).tolist()}
    lists = {s: read_split(kind, s) for s in SPLITS}
    if kind == "cifarfs":
        classes = {s: [c for c in lists[s] if c in present] for s in SPLITS}
        absent = [c for s in SPLITS for c in lists[s] if c not in present]
        return classes, ", ".join(absent)
    parents: dict[str, set[str]] = {}  # fine name -> the superclasses its images carry
    for k, c in zip(fine.tolist(), coarse.tolist(), strict=True):
        parents.setdefault(fine_names[k], set()).add(coarse_names[c])
    mixed = sorted(n for n, p in parents.items() if len(p) > 1)
    if mixed:
        raise DataError(f"CIFAR-100 class {mixed[0]} carries several coarse labels: "
                        f"{sorted(parents[mixed[0]])}")
    owner = {n: next(iter(p)) for n, p in parents.items()}
    classes = {s: [n for n in fine_names if n in owner and owner[n] in lists[s]] for s in SPLITS}
    absent = [sup for s in SPLITS for sup in lists[s] if sup not in owner.values()]
    return classes, ", ".join(f"superclass {a}" for a in absent)


def _load(kind: str, paper: str, root: str | None, dataset: str, image_size: int,
          channels: int, cache_dir: str | None, expect_classes: Sequence[int] | None,
          download: bool, md5: str | None) -> ImageClasses:
    root_path = check_settings(dataset, root, image_size, channels, LAYOUT)
    folder = _extracted(root_path, download, md5 or CIFAR100.tgz_md5)
    where = f"{root_path} ({paper} split, metabench/data/splits/{kind}/)"

    def check(classes: Classes, absent: str = "") -> None:
        check_counts([len(classes[s]) for s in SPLITS], expect_classes, where,
                     f"; not in {FOLDER}: {absent}" if absent else "")

    def build() -> tuple[Classes, dict[str, Tensor]]:
        images, fine, coarse, fine_names, coarse_names = _read(folder)
        classes, absent = _split_classes(kind, fine, coarse, fine_names, coarse_names)
        check(classes, absent)
        index = {n: np.flatnonzero(fine == k) for k, n in enumerate(fine_names)}
        splits = {}
        for s in SPLITS:
            rows = {c: index[c].tolist() for c in classes[s]}
            per = smallest_class(rows, f"{folder} ({s} split)")
            picked = np.stack([index[c][:per] for c in classes[s]]).reshape(-1)
            x = from_hwc(images[picked], image_size, channels)
            splits[s] = x.view(len(classes[s]), per, channels, image_size, image_size)
        return classes, splits

    lists = [read_split(kind, s) for s in SPLITS]
    fingerprint = (stats([folder / f for f in FILES], root_path), lists)
    _, splits = cached(dataset, kind, root_path, cache_dir, image_size, channels, fingerprint,
                       check, build)
    return ImageClasses(dataset, splits)


def load_cifarfs(root: str | None, dataset: str = "cifarfs", image_size: int = SIZE,
                 channels: int = 3, cache_dir: str | None = None,
                 expect_classes: Sequence[int] | None = (64, 16, 20), download: bool = False,
                 md5: str | None = None) -> ImageClasses:
    """CIFAR-FS from CIFAR-100 (see the module); ``md5``: the archive's (None: the official)."""
    return _load("cifarfs", "Bertinetto et al.", root, dataset, image_size, channels,
                 cache_dir, expect_classes, download, md5)


def load_fc100(root: str | None, dataset: str = "fc100", image_size: int = SIZE,
               channels: int = 3, cache_dir: str | None = None,
               expect_classes: Sequence[int] | None = (60, 20, 20), download: bool = False,
               md5: str | None = None) -> ImageClasses:
    """FC100 from CIFAR-100 (see the module); ``md5``: the archive's (None: the official)."""
    return _load("fc100", "Oreshkin et al.", root, dataset, image_size, channels, cache_dir,
                 expect_classes, download, md5)
