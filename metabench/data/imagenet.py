"""miniImageNet and tieredImageNet in the files they are distributed as, read with the
restricted unpickler (safe_pickle.py) and decoded once into the uint8 cache (arrays.py).

miniImageNet (Vinyals et al. 2016, the Ravi & Larochelle 64/16/20 split, 600 images a class):
``root`` holds either ``{train,val,test}/<class>/*.jpg`` folders (folder.py) or the pickles
``mini-imagenet-cache-{train,validation,test}.pkl`` (as learn2learn distributes them), each a
dict with ``image_data`` uint8 [N, 84, 84, 3] and ``class_dict`` {class: [row indices]}.
Folders win when both are there. Classes in sorted name order, images in listed order.

tieredImageNet (Ren et al. 2018, 351/97/160 classes of 84x84 RGB): per split
``{split}_labels.pkl`` (``label_specific``: one class index per image, ``label_specific_str``:
the class names) with either ``{split}_images_png.pkl`` (one PNG-encoded byte array per image,
the few-shot-ssl-public release) or ``{split}_images.npz`` (key ``images``, uint8
[N, 84, 84, 3], the decompressed variant MetaOptNet reads). Ren et al.'s code decodes with
OpenCV, so that .npz holds BGR pixels: they are flipped to RGB (``npz_bgr``) and match the PNGs.
The files may also sit in ``root/tiered-imagenet/``. Classes hold different numbers of images:
every class of a split keeps its first ``per_class`` = the split's smallest count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metabench.data.arrays import (
    Classes,
    cached,
    check_counts,
    check_settings,
    decode_bytes,
    from_hwc,
    smallest_class,
    stats,
    threaded,
)
from metabench.data.folder import load_folder
from metabench.data.safe_pickle import safe_load
from metabench.data.sampler import SPLITS, ImageClasses
from metabench.errors import DataError

MINI_PICKLES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
MINI_LAYOUT = ("either train/ val/ test/ class folders or the pickles "
               "mini-imagenet-cache-{train,validation,test}.pkl")
TIERED_LAYOUT = ("{train,val,test}_labels.pkl with {train,val,test}_images_png.pkl or "
                 "{train,val,test}_images.npz")


def _mini_pickle(root: Path, split: str) -> Path | None:
    for name in MINI_PICKLES[split]:
        if (p := root / f"mini-imagenet-cache-{name}.pkl").is_file():
            return p
    return None


def load_miniimagenet(root: str | None, dataset: str = "miniimagenet", image_size: int = 84,
                      channels: int = 3, cache_dir: str | None = None,
                      expect_classes: Sequence[int] | None = (64, 16, 20)) -> ImageClasses:
    """Image folders or the three cache pickles, whichever ``root`` holds (see the module)."""
    root_path = check_settings(dataset, root, image_size, channels, MINI_LAYOUT)
    pickles = {s: _mini_pickle(root_path, s) for s in SPLITS}
    folders = [s for s in SPLITS if (root_path / s).is_dir()]
    if len(folders) == len(SPLITS) or (folders and not any(pickles.values())):
        # the folder layout (folder.py names a missing split folder)
        return load_folder(root, dataset, image_size, channels, cache_dir, expect_classes)
    missing = [f"mini-imagenet-cache-{MINI_PICKLES[s][0]}.pkl" for s, p in pickles.items()
               if p is None]
    if len(missing) == len(SPLITS):
        raise DataError(f"{dataset} not found in {root_path}: expected {MINI_LAYOUT}")
    if missing:
        raise DataError(f"{root_path} holds miniImageNet pickles but not {', '.join(missing)}")
    sources = [pickles[s] for s in SPLITS]

    def check(classes: Classes) -> None:
        check_counts([len(classes[s]) for s in SPLITS], expect_classes, str(root_path))

    def build() -> tuple[Classes, dict[str, Tensor]]:
        parts = {s: _mini_split(pickles[s], image_size, channels) for s in SPLITS}
        classes = {s: parts[s][0] for s in SPLITS}
        check(classes)
        return classes, {s: parts[s][1] for s in SPLITS}

    _, splits = cached(dataset, "pkl", root_path, cache_dir, image_size, channels,
                       stats(sources, root_path), check, build)
    return ImageClasses(dataset, splits)


def _mini_split(path: Path, size: int, channels: int) -> tuple[list[str], Tensor]:
    blob = safe_load(path)
    if not isinstance(blob, dict) or not {"image_data", "class_dict"} <= blob.keys():
        raise DataError(f"{path} is not a miniImageNet cache pickle (expected a dict with "
                        "image_data and class_dict)")
    images, class_dict = blob["image_data"], blob["class_dict"]
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: class_dict is not a non-empty dict of class -> row indices")
    _check_images(images, path, "image_data")
    names = sorted(class_dict)
    try:
        rows = {str(c): [int(i) for i in class_dict[c]] for c in names}
    except (TypeError, ValueError):
        raise DataError(f"{path}: class_dict must map each class to row indices") from None
    per = smallest_class(rows, str(path))
    idx = np.array([r[:per] for r in rows.values()], dtype=np.int64)
    if idx.min() < 0 or idx.max() >= len(images):
        raise DataError(f"{path}: class_dict refers to row {int(idx.max())} but image_data "
                        f"holds {len(images)} images")
    x = from_hwc(images[idx.reshape(-1)], size, channels)
    return list(rows), x.view(len(names), per, channels, size, size)


def _check_images(images: object, path: Path, key: str) -> None:
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[-1] == 3):
        got = (f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise DataError(f"{path}: {key} must be uint8 [N, H, W, 3] images, found {got}")


def _tiered_sources(root: Path) -> dict[str, tuple[Path, Path]] | None:
    """split -> (labels file, images file) in root or root/tiered-imagenet; None if absent."""
    for base in (root, root / "tiered-imagenet"):
        found = {}
        for s in SPLITS:
            images = [p for p in (base / f"{s}_images_png.pkl", base / f"{s}_images.npz")
                      if p.is_file()]
            if (base / f"{s}_labels.pkl").is_file() and images:
                found[s] = (base / f"{s}_labels.pkl", images[0])
        if found:
            return found
    return None


def load_tieredimagenet(root: str | None, dataset: str = "tieredimagenet", image_size: int = 84,
                        channels: int = 3, cache_dir: str | None = None,
                        expect_classes: Sequence[int] | None = (351, 97, 160),
                        npz_bgr: bool = True) -> ImageClasses:
    """The three splits from their label and image files (see the module)."""
    root_path = check_settings(dataset, root, image_size, channels, TIERED_LAYOUT)
    sources = _tiered_sources(root_path)
    if sources is None:
        raise DataError(f"{dataset} not found in {root_path}: expected {TIERED_LAYOUT}")
    missing = [s for s in SPLITS if s not in sources]
    if missing:
        raise DataError(f"{root_path}: no {' or '.join(f'{s}_labels.pkl' for s in missing)} "
                        f"with its images (expected {TIERED_LAYOUT})")

    def check(classes: Classes) -> None:
        check_counts([len(classes[s]) for s in SPLITS], expect_classes, str(root_path))

    def build() -> tuple[Classes, dict[str, Tensor]]:
        index = {s: _tiered_labels(sources[s][0]) for s in SPLITS}
        classes = {s: list(index[s]) for s in SPLITS}
        check(classes)  # before the images, which are large
        return classes, {s: _tiered_images(sources[s][1], index[s], image_size, channels,
                                           npz_bgr) for s in SPLITS}

    files = [f for s in SPLITS for f in sources[s]]
    _, splits = cached(dataset, "files", root_path, cache_dir, image_size, channels,
                       (stats(files, root_path), bool(npz_bgr)), check, build)
    return ImageClasses(dataset, splits)


def _tiered_labels(path: Path) -> dict[str, list[int]]:
    """Class name -> its image indices, classes in label order."""
    blob = safe_load(path)
    key = next((k for k in ("label_specific", "labels") if isinstance(blob, dict) and k in blob),
               None)
    if key is None:
        raise DataError(f"{path} is not a tieredImageNet labels pickle (expected a dict with "
                        "label_specific)")
    try:
        labels = np.asarray(blob[key]).reshape(-1).astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {key} must hold one integer class per image") from None
    out: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        out.setdefault(c, []).append(i)
    if not out:
        raise DataError(f"{path}: {key} is empty")
    names = blob.get("label_specific_str")
    if names is not None and (min(out) < 0 or max(out) >= len(names)):
        raise DataError(f"{path}: label_specific has {len(out)} classes but label_specific_str "
                        f"names {len(names)}")
    keys = [str(names[c]) if names is not None else str(c) for c in sorted(out)]
    if len(set(keys)) < len(keys):  # repeated names: number the classes instead
        keys = [str(c) for c in sorted(out)]
    return {k: out[c] for k, c in zip(keys, sorted(out), strict=True)}


def _tiered_images(path: Path, index: dict[str, list[int]], size: int, channels: int,
                   npz_bgr: bool) -> Tensor:
    per = smallest_class(index, str(path))
    rows = [i for members in index.values() for i in members[:per]]
    n = sum(len(m) for m in index.values())  # one label per image
    if path.suffix == ".npz":
        try:
            with np.load(path) as z:
                images = z["images"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path} is not a readable .npz with key images ({e})") from None
        _check_images(images, path, "images")
        _check_length(len(images), n, path)
        picked = images[rows]
        x = from_hwc(np.ascontiguousarray(picked[..., ::-1]) if npz_bgr else picked, size,
                     channels)
    else:
        encoded = safe_load(path)
        if not isinstance(encoded, list | tuple | np.ndarray):
            raise DataError(f"{path}: expected a list of PNG-encoded images, found "
                            f"{type(encoded).__name__}")
        _check_length(len(encoded), n, path)
        x = torch.empty(len(rows), channels, size, size, dtype=torch.uint8)

        def one(j: int) -> None:
            what = f"image {rows[j]} of {path}"
            x[j] = decode_bytes(_as_bytes(encoded[rows[j]], what), size, channels, what)

        threaded(one, range(len(rows)))
    return x.view(len(index), per, channels, size, size)


def _check_length(found: int, labels: int, path: Path) -> None:
    if found != labels:
        raise DataError(f"{path} holds {found} images but its labels file lists {labels}")


def _as_bytes(item: object, what: str) -> bytes:
    """One encoded image: a uint8 array (cv2.imencode's), bytes, or a Python-2 str."""
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str):  # a Python-2 str, decoded as latin1 by safe_load
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise DataError(f"{what} is a {type(item).__name__}, not PNG bytes")
