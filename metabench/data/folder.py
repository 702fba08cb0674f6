"""Few-shot classification from image folders: ``root/<split>/<class>/*.{png,jpg,jpeg}`` for
the splits train, val and test (e.g. miniImageNet in the Ravi & Larochelle 64/16/20 split).

Every image is converted to RGB (or grayscale with ``channels=1``), resized to a square
``image_size`` with PIL's Lanczos filter and decoded once into a uint8 tensor
[classes, per_class, C, H, W] per split, cached on disk. Classes are the sub-folders in sorted
order; within a class, files are taken in sorted name order. When the classes of a split hold
different numbers of images, every class of that split keeps its first ``per_class`` = the
smallest count (a class needs at least 2). Files with other suffixes and hidden entries are
ignored. Nothing downloads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from metabench.data.arrays import check_settings
from metabench.data.cache import cache_folder, digest, load_cache, save_cache
from metabench.data.sampler import SPLITS, ImageClasses
from metabench.errors import DataError
from metabench.preprocess import IMAGE_SUFFIXES as SUFFIXES
from metabench.preprocess import decode_image

CACHE_VERSION = 1
MIN_PER_CLASS = 2


def visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _list_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for one split folder."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"image folder {root} has no {split}/ folder (expected "
                        f"{root}/{{train,val,test}}/<class>/*.png|jpg)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and visible(p))
    if not classes:
        raise DataError(f"{folder} holds no class folders (expected {folder}/<class>/*.png|jpg)")
    out = {}
    for c in classes:
        files = sorted(p for p in c.iterdir()
                       if p.is_file() and visible(p) and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"class folder {c} holds no .png/.jpg/.jpeg images")
        if len(files) < MIN_PER_CLASS:
            raise DataError(f"class folder {c} holds {len(files)} image; a class needs at "
                            f"least {MIN_PER_CLASS} (a support and a query example)")
        out[c.name] = files
    return out


def _check_counts(index: dict[str, dict[str, list[Path]]], expect: Sequence[int] | None,
                  root: Path) -> None:
    if expect is None:
        return
    expect = [int(n) for n in expect]
    found = [len(index[s]) for s in SPLITS]
    if found != expect:
        raise DataError(f"{root}: expected {'/'.join(map(str, expect))} classes in "
                        f"train/val/test, found {'/'.join(map(str, found))}")


def _decode_split(classes: dict[str, list[Path]], per_class: int, size: int,
                  channels: int) -> torch.Tensor:
    """[classes, per_class, C, size, size], decoded on a few threads (PIL releases the GIL)."""
    out = torch.empty(len(classes), per_class, channels, size, size, dtype=torch.uint8)
    jobs = [(c, i, f) for c, files in enumerate(classes.values())
            for i, f in enumerate(files[:per_class])]

    def one(job: tuple[int, int, Path]) -> None:
        c, i, f = job
        out[c, i] = decode_image(f, size, channels)

    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(one, jobs):  # re-raises the first DataError
            pass
    finally:  # after an error, skip the images not yet started
        pool.shutdown(cancel_futures=True)
    return out


def _fingerprint(index: dict[str, dict[str, list[Path]]], root: Path) -> str:
    """Paths, sizes and modification times of every listed file: an edit changes it."""
    stats = []
    for split in SPLITS:
        for files in index[split].values():
            for f in files:
                st = f.stat()
                stats.append((f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return digest(CACHE_VERSION, stats)


def load_folder(root: str | None, dataset: str = "folder", image_size: int = 84,
                channels: int = 3, cache_dir: str | None = None,
                expect_classes: Sequence[int] | None = None) -> ImageClasses:
    """``dataset`` names the data in messages and cache files; ``expect_classes``: the
    [train, val, test] class counts to insist on (None: any)."""
    root_path = check_settings(dataset, root, image_size, channels,
                               "train/ val/ test/ with <class>/*.png|jpg folders")
    index = {s: _list_split(root_path, s) for s in SPLITS}
    _check_counts(index, expect_classes, root_path)
    per_class = {s: min(len(f) for f in index[s].values()) for s in SPLITS}
    classes = {s: list(index[s]) for s in SPLITS}

    def valid(blob: dict) -> bool:
        return (blob.get("version") == CACHE_VERSION and blob.get("classes") == classes
                and all(blob["splits"][s].dtype == torch.uint8 and tuple(blob["splits"][s].shape)
                        == (len(classes[s]), per_class[s], channels, image_size, image_size)
                        for s in SPLITS))

    stem = f"{dataset}-{digest(str(root_path))[:8]}-{image_size}px-{channels}ch"
    cache = cache_folder(cache_dir, root_path) / f"{stem}-{_fingerprint(index, root_path)}.pt"
    blob = load_cache(cache, valid)
    if blob is None:
        splits = {s: _decode_split(index[s], per_class[s], image_size, channels)
                  for s in SPLITS}
        blob = {"version": CACHE_VERSION, "classes": classes, "splits": splits}
        save_cache(blob, cache, replaces=f"{stem}-*.pt")
    return ImageClasses(dataset, blob["splits"])
