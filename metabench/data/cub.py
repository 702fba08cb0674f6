"""CUB-200-2011 (Wah et al. 2011) in the 100/50/50 class split of Chen et al. 2019 ("A Closer
Look at Few-shot Classification"; splits/cub/*.txt: of the 200 class folders in sorted order,
the i-th is train when i % 2 == 0, val when i % 4 == 1, test when i % 4 == 3).

Reads the official archive ``CUB_200_2011.tgz`` (extracted once into ``root`` after its md5
check) or its extracted ``CUB_200_2011/images/<NNN.Class_name>/*.jpg``. Images are converted
to RGB and resized to ``image_size`` with PIL's Lanczos filter like any image folder, ignoring
the bounding boxes. Classes hold different numbers of photos: every class of a split keeps its
first ``per_class`` = the split's smallest count, in sorted file-name order (Chen et al. use
them all; a class-major tensor needs one count).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from metabench.data.arrays import (
    Classes,
    cached,
    check_counts,
    check_settings,
    smallest_class,
    stats,
    unpack,
)
from metabench.data.folder import SUFFIXES, _decode_split, visible
from metabench.data.sampler import SPLITS, ImageClasses
from metabench.data.splits import read_split
from metabench.errors import DataError

ARCHIVE = "CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
LAYOUT = f"{ARCHIVE} or its extracted CUB_200_2011/images/<NNN.Class_name>/*.jpg"


def _images_folder(root: Path, download: bool, md5: str) -> Path:
    for folder in (root / "CUB_200_2011" / "images", root / "images"):
        if folder.is_dir():
            return folder
    unpack(root, ARCHIVE, md5, URL, download,
           f"CUB-200-2011 not found: place {LAYOUT} in {root} (www.vision.caltech.edu/datasets/"
           "cub_200_2011), or set data.download=true")
    folder = root / "CUB_200_2011" / "images"
    if not folder.is_dir():
        raise DataError(f"{root / ARCHIVE} holds no CUB_200_2011/images/ folder")
    return folder


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and visible(p)
                  and p.suffix.lower() in SUFFIXES)


def load_cub(root: str | None, dataset: str = "cub", image_size: int = 84, channels: int = 3,
             cache_dir: str | None = None,
             expect_classes: Sequence[int] | None = (100, 50, 50), download: bool = False,
             md5: str | None = None) -> ImageClasses:
    """CUB-200-2011 in Chen et al.'s split (see the module); ``md5``: the archive's (None: the
    official)."""
    root_path = check_settings(dataset, root, image_size, channels, LAYOUT)
    images = _images_folder(root_path, download, md5 or MD5)
    present = {p.name for p in images.iterdir() if p.is_dir()}
    lists = {s: read_split("cub", s) for s in SPLITS}
    classes: Classes = {s: [c for c in lists[s] if c in present] for s in SPLITS}
    absent = [c for s in SPLITS for c in lists[s] if c not in present]
    more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
    check_counts([len(classes[s]) for s in SPLITS], expect_classes,
                 f"{images} (Chen et al. split, metabench/data/splits/cub/)",
                 f"; missing class folders: {', '.join(absent[:3])}{more}" if absent else "")
    index = {s: {c: _photos(images / c) for c in classes[s]} for s in SPLITS}
    per_class = {s: smallest_class(index[s], f"{images} ({s} split)") for s in SPLITS}

    def build() -> tuple[Classes, dict[str, Tensor]]:
        return classes, {s: _decode_split(index[s], per_class[s], image_size, channels)
                         for s in SPLITS}

    files = [f for s in SPLITS for fs in index[s].values() for f in fs]
    _, splits = cached(dataset, "images", root_path, cache_dir, image_size, channels,
                       (stats(files, root_path), [lists[s] for s in SPLITS]),
                       lambda _: None, build)
    return ImageClasses(dataset, splits)
