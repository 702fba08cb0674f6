"""What the loaders of the distributed formats share (pickled arrays, PNG bytes, CIFAR-100
rows): images become one uint8 tensor [classes, per_class, C, size, size] per split, resized
with PIL's Lanczos filter like image folders, and the result is cached once. The cache is
keyed by the source files' names, sizes and modification times, so a second load opens no
source file at all: a 5 GB pickle is read once, not on every run."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.datasets.utils import (
    check_integrity,
    download_and_extract_archive,
    extract_archive,
)

from metabench.data.cache import cache_folder, digest, load_cache, save_cache
from metabench.data.sampler import SPLITS
from metabench.errors import DataError
from metabench.preprocess import pil_image

CACHE_VERSION = 1
MIN_PER_CLASS = 2
Classes = dict[str, list[str]]  # split -> its class names, in tensor order
T = TypeVar("T")


def check_settings(dataset: str, root: str | None, image_size: int, channels: int,
                   layout: str) -> Path:
    """The resolved root folder, after the checks every loader makes first."""
    if not root:
        raise DataError(f"data={dataset} needs data.root=<folder holding {layout}>")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise DataError(f"data.image_size={image_size} must be a positive integer")
    if channels not in (1, 3):
        raise DataError(f"data.channels={channels} is not one of: 1, 3")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"{dataset} not found: {path} is not a folder (expected {layout}; "
                        "set data.root)")
    return path


def check_counts(found: Sequence[int], expect: Sequence[int] | None, where: str,
                 detail: str = "") -> None:
    """One line when the train/val/test class counts differ from ``expect`` (None: any)."""
    if expect is None:
        return
    expect = [int(n) for n in expect]
    if list(found) != expect:
        raise DataError(f"{where}: expected {'/'.join(map(str, expect))} classes in "
                        f"train/val/test, found {'/'.join(map(str, found))}{detail}")


def smallest_class(rows: dict[str, list[Any]], what: str) -> int:
    """The images every class of a split keeps: its smallest class's count (at least 2)."""
    name, members = min(rows.items(), key=lambda kv: len(kv[1]))
    if len(members) < MIN_PER_CLASS:
        raise DataError(f"{what}: class {name} holds {len(members)} image(s); a class needs at "
                        f"least {MIN_PER_CLASS} (a support and a query example)")
    return len(members)


def decode_bytes(data: bytes, size: int, channels: int, what: str) -> Tensor:
    """An encoded image (PNG, JPEG) held in memory; a DataError naming ``what`` if broken."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return pil_image(img, size, channels)
    except UnidentifiedImageError:
        raise DataError(f"could not decode {what}: not an image PIL reads") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"could not decode {what}: {e}") from None


def from_hwc(images: np.ndarray, size: int, channels: int) -> Tensor:
    """uint8 [N, H, W, 3] as the pickles hold it -> [N, channels, size, size]: the pixels as they
    are when the size and channels already match (PIL's resize would copy them unchanged),
    else through PIL like any image file."""
    n, h, w = images.shape[:3]
    if (h, w) == (size, size) and channels == 3:
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    out = torch.empty(n, channels, size, size, dtype=torch.uint8)

    def one(i: int) -> None:
        out[i] = pil_image(Image.fromarray(images[i]), size, channels)

    threaded(one, range(n))
    return out


def threaded(fn: Callable[[T], None], jobs: Iterable[T]) -> None:
    """``fn`` over ``jobs`` on a few threads (PIL releases the GIL); the first error raised."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(fn, jobs):
            pass
    finally:  # after an error, skip the jobs not yet started
        pool.shutdown(cancel_futures=True)


def stats(paths: Iterable[Path], root: Path) -> list[tuple[str, int, int]]:
    """Names (relative to root), sizes and modification times: an edit changes them."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p),
                    st.st_size, st.st_mtime_ns))
    return out


def cached(dataset: str, fmt: str, root: Path, cache_dir: str | None, image_size: int,
           channels: int, fingerprint: Any, check: Callable[[Classes], None],
           build: Callable[[], tuple[Classes, dict[str, Tensor]]]
           ) -> tuple[Classes, dict[str, Tensor]]:
    """The cached (classes, splits) for this fingerprint (the sources' ``stats`` and every
    setting that changes the result), else ``build()``'s, saved for next time. ``check`` runs
    on cached classes too, so a changed ``expect_classes`` still applies."""

    def valid(blob: dict) -> bool:
        classes, splits = blob.get("classes"), blob.get("splits")
        return (blob.get("version") == CACHE_VERSION and isinstance(classes, dict)
                and all(isinstance(classes.get(s), list) and splits[s].dtype == torch.uint8
                        and splits[s].dim() == 5 and splits[s].shape[0] == len(classes[s])
                        and tuple(splits[s].shape[2:]) == (channels, image_size, image_size)
                        for s in SPLITS))

    stem = f"{dataset}-{fmt}-{digest(str(root))[:8]}-{image_size}px-{channels}ch"
    path = cache_folder(cache_dir, root) / f"{stem}-{digest(CACHE_VERSION, fingerprint)}.pt"
    blob = load_cache(path, valid)
    if blob is not None:
        check(blob["classes"])
        return blob["classes"], blob["splits"]
    classes, splits = build()
    save_cache({"version": CACHE_VERSION, "classes": classes, "splits": splits}, path,
               replaces=f"{stem}-*.pt")
    return classes, splits


def unpack(root: Path, filename: str, md5: str, url: str, download: bool, missing: str) -> None:
    """Extract ``root/filename`` into ``root`` once torchvision's md5 check passes (an archive
    that fails it is never opened); without the archive, download it when allowed, else raise
    ``missing``."""
    archive = root / filename
    if not archive.is_file():
        if not download:
            raise DataError(missing)
        try:
            download_and_extract_archive(url, str(root), filename=filename, md5=md5)
        except (OSError, RuntimeError, tarfile.TarError) as e:
            raise DataError(f"could not download {url} to {root}: {e}") from None
        return
    if not check_integrity(str(archive), md5):
        raise DataError(f"{archive} fails its md5 check (expected {md5}, the official archive's); "
                        "not extracted: replace it, or extract it yourself")
    try:
        extract_archive(str(archive), str(root))
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"could not extract {archive}: {e}") from None
