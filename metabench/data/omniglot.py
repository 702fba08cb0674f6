"""Omniglot (Lake et al. 2015) under the standard few-shot protocol.

Reads the official layout (``images_background.zip`` / ``images_evaluation.zip`` or their
extracted folders) under ``root``, checks its structure, decodes every PNG once to 28x28 uint8
(strokes bright) and caches the result; each character's 90/180/270-degree rotations become
extra classes.

Splits:
- ``vinyals`` (Vinyals et al. 2016, the ProtoNet lists): characters in sorted order;
  val = the Hebrew, Mkhedruli (Georgian), Armenian, Early Aramaic and Bengali alphabets
  (172 characters), test = the last 423 characters of ``images_evaluation`` (from
  Gurmukhi/character42 on), train = the other 1028.
- ``background`` (Lake et al.): test = ``images_evaluation``; val = the last sixth of the
  background alphabets (at least one), train = the rest of ``images_background``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from metabench.data.cache import cache_folder, load_cache, save_cache
from metabench.data.download import announce_line, content_length, fetch, say_stderr
from metabench.data.sampler import ImageClasses
from metabench.errors import DataError
from metabench.preprocess import pil_image

ARCHIVES = ("images_background", "images_evaluation")
OFFICIAL_MD5 = {  # of the zips in github.com/brendenlake/omniglot's python/ folder
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
IMAGES_PER_CHARACTER = 20
VINYALS_VAL = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
VINYALS_COUNTS = {"images_background": 964, "images_evaluation": 659}
VINYALS_TEST = 423
CACHE_VERSION = 1


@dataclass
class Character:
    archive: str  # images_background | images_evaluation
    alphabet: str
    name: str  # characterNN

    @property
    def key(self) -> str:
        return f"{self.archive}/{self.alphabet}/{self.name}"


def _source(root: Path, archive: str) -> Path | None:
    folder, zipped = root / archive, root / f"{archive}.zip"
    if folder.is_dir():
        return folder
    if zipped.is_file():
        return zipped
    return None


def _list_pngs(src: Path, archive: str) -> dict[tuple[str, str], list[str]]:
    """Map (alphabet, character) to its PNG paths (inside the zip or on disk), sorted."""
    out: dict[tuple[str, str], list[str]] = {}
    if src.suffix == ".zip":
        try:
            with zipfile.ZipFile(src) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{src} is not a readable zip archive ({e})") from None
    else:
        names = [p.relative_to(src.parent).as_posix() for p in src.rglob("*.png")]
    for n in names:
        parts = n.split("/")
        if n.endswith(".png") and len(parts) == 4 and parts[0] == archive:
            out.setdefault((parts[1], parts[2]), []).append(n)
    if not out:
        raise DataError(f"{src} holds no {archive}/<Alphabet>/<characterNN>/*.png files")
    return {k: sorted(v) for k, v in sorted(out.items())}


def _check_structure(index: dict[tuple[str, str], list[str]], src: Path) -> None:
    bad = [f"{a}/{c} has {len(v)} images" for (a, c), v in index.items()
           if len(v) != IMAGES_PER_CHARACTER]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DataError(f"{src}: every character needs {IMAGES_PER_CHARACTER} images, but "
                        + "; ".join(bad[:3]) + more)


def _decode(src: Path, index: dict[tuple[str, str], list[str]], size: int) -> torch.Tensor:
    out = torch.empty(len(index), IMAGES_PER_CHARACTER, 1, size, size, dtype=torch.uint8)
    zf = zipfile.ZipFile(src) if src.suffix == ".zip" else None
    try:
        for c, paths in enumerate(index.values()):
            for i, p in enumerate(paths):
                raw = zf.read(p) if zf else (src.parent / p).read_bytes()
                with Image.open(io.BytesIO(raw)) as img:  # strokes bright, background 0
                    out[c, i] = 255 - pil_image(img, size, channels=1)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"{src}: could not decode {p}: {e}") from None
    finally:
        if zf:
            zf.close()
    return out


def _fingerprint(sources: dict[str, Path], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{size}".encode())
    for archive, src in sorted(sources.items()):
        files = [src] if src.is_file() else sorted(src.rglob("*.png"))
        st = [(f.relative_to(src.parent).as_posix(), f.stat().st_size) for f in files]
        h.update(repr((archive, src.suffix, st)).encode())
    return h.hexdigest()[:16]


def _load_cache(path: Path, keys: list[str], size: int) -> torch.Tensor | None:
    """The cached images if the file is intact and matches; None means rebuild."""

    def valid(blob: dict) -> bool:
        images = blob["images"]
        return (blob.get("version") == CACHE_VERSION and blob.get("keys") == keys
                and tuple(images.shape) == (len(keys), IMAGES_PER_CHARACTER, 1, size, size)
                and images.dtype == torch.uint8)

    blob = load_cache(path, valid)
    return None if blob is None else blob["images"]


def _md5_table(md5: dict[str, str | None] | None) -> dict[str, str | None]:
    """data.md5 by archive name (``images_background`` or ``images_background.zip``); a key
    that names no archive is refused rather than silently leaving a download unchecked."""
    table: dict[str, str | None] = {a: OFFICIAL_MD5[a] for a in ARCHIVES}
    for key, value in (md5 or {}).items():
        archive = str(key).removesuffix(".zip")
        if archive not in ARCHIVES:
            raise DataError(f"data.md5.{key} names no Omniglot archive "
                            f"(known: {', '.join(ARCHIVES)})")
        table[archive] = None if value is None else str(value)
    return table


def _ensure_sources(root: Path, download: bool, url: str, md5: dict[str, str | None],
                    say: Callable[[str], None]) -> dict[str, Path]:
    """The two archives (zip or folder) under ``root``; the missing ones fetched when
    ``download`` is set, announced in one line first."""
    sources = {a: _source(root, a) for a in ARCHIVES}
    missing = [a for a, s in sources.items() if s is None]
    names = " and ".join(f"{a}.zip" for a in missing)
    if missing and download is not True:
        if download is not False:
            raise DataError(f"data.download={download} must be true or false")
        raise DataError(f"Omniglot not found: place {names} (github.com/brendenlake/omniglot, "
                        f"python/ folder) in {root}, or set data.download=true")
    if not missing:
        return sources  # type: ignore[return-value]
    hint = (f"; without network, place {names} (github.com/brendenlake/omniglot, python/ "
            f"folder) in {root} by hand (data.download=false never fetches)")
    urls = [f"{url.rstrip('/')}/{a}.zip" for a in missing]
    sizes = [content_length(u, hint=hint) for u in urls]
    say(announce_line("Omniglot", urls, root, sizes))
    for a, u in zip(missing, urls, strict=True):
        sources[a] = fetch(u, root / f"{a}.zip", md5[a], hint=hint)
    return sources  # type: ignore[return-value]


def load_omniglot(root: str, split: str = "vinyals", image_size: int = 28,
                  rotations: bool = True, download: bool = False, url: str = OFFICIAL_URL,
                  md5: dict[str, str | None] | None = None, cache_dir: str | None = None,
                  say: Callable[[str], None] = say_stderr,
                  episode_classes: str = "random") -> ImageClasses:
    """Omniglot from ``root``; with ``download`` the missing official zips are fetched first
    (``md5`` by archive name, default OFFICIAL_MD5; ``say`` takes the announcement).
    ``episode_classes=within_alphabet`` draws each task's classes from one alphabet (a
    character's rotations stay in its alphabet)."""
    root_path = Path(root).expanduser().resolve()
    if split not in ("vinyals", "background"):
        raise DataError(f"data.split={split} is not one of: vinyals, background")
    sources = _ensure_sources(root_path, download, url, _md5_table(md5), say)
    indices = {a: _list_pngs(src, a) for a, src in sources.items()}
    for a, idx in indices.items():
        _check_structure(idx, sources[a])
    chars = [Character(a, al, ch) for a in ARCHIVES for (al, ch) in indices[a]]
    keys = [c.key for c in chars]

    cache_root = cache_folder(cache_dir, root_path)
    cache = cache_root / f"omniglot-{image_size}-{_fingerprint(sources, image_size)}.pt"
    images = _load_cache(cache, keys, image_size)
    if images is None:
        images = torch.cat([_decode(sources[a], indices[a], image_size) for a in ARCHIVES])
        save_cache({"version": CACHE_VERSION, "keys": keys, "images": images}, cache)

    parts = _split_indices(chars, split)
    alphabet_ids = {a: i for i, a in enumerate(sorted({(c.archive, c.alphabet) for c in chars}))}
    out, groups = {}, {}
    for name, idx in parts.items():
        x = images[torch.tensor(idx, dtype=torch.long)]
        g = torch.tensor([alphabet_ids[chars[i].archive, chars[i].alphabet] for i in idx],
                         dtype=torch.long)
        if rotations:  # each rotation is a class of its own: [chars*4, 20, 1, H, W]
            x = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=1)
            x = x.flatten(0, 1)
            g = g.repeat_interleave(4)
        out[name], groups[name] = x.contiguous(), g
    return ImageClasses("omniglot", out, groups, episode_classes)


def _split_indices(chars: list[Character], split: str) -> dict[str, list[int]]:
    if split == "vinyals":
        counts = {a: sum(c.archive == a for c in chars) for a in ARCHIVES}
        if counts != VINYALS_COUNTS:
            raise DataError(
                f"data.split=vinyals needs the complete Omniglot (964 + 659 characters); found "
                f"{counts['images_background']} + {counts['images_evaluation']}: use "
                "data.split=background for partial archives")
        n = len(chars)
        test = list(range(n - VINYALS_TEST, n))
        val = [i for i, c in enumerate(chars[: n - VINYALS_TEST]) if c.alphabet in VINYALS_VAL]
        train = [i for i in range(n - VINYALS_TEST) if chars[i].alphabet not in VINYALS_VAL]
        return {"train": train, "val": val, "test": test}
    bg_alphabets = sorted({c.alphabet for c in chars if c.archive == ARCHIVES[0]})
    val_alphabets = set(bg_alphabets[len(bg_alphabets) - max(1, len(bg_alphabets) // 6):])
    if len(bg_alphabets) < 2:
        raise DataError("data.split=background needs at least 2 background alphabets")
    bg = [(i, c) for i, c in enumerate(chars) if c.archive == ARCHIVES[0]]
    return {"train": [i for i, c in bg if c.alphabet not in val_alphabets],
            "val": [i for i, c in bg if c.alphabet in val_alphabets],
            "test": [i for i, c in enumerate(chars) if c.archive == ARCHIVES[1]]}
