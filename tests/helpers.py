"""Test helpers: Omniglot-layout archives built on the fly."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
from PIL import Image


def png_bytes(seed: int, size: int = 20) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = ((torch.rand(size, size, generator=g) > 0.5).to(torch.uint8) * 255).tolist()
    img = Image.new("L", (size, size))
    img.putdata([v for row in pixels for v in row])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_omniglot_zip(path: Path, archive: str, alphabets: dict[str, int],
                       images: int = 20, seed: int = 0) -> Path:
    """An archive in the official layout: archive/<Alphabet>/characterNN/NNNN_MM.png."""
    with zipfile.ZipFile(path, "w") as z:
        for a, (alphabet, chars) in enumerate(sorted(alphabets.items())):
            for c in range(1, chars + 1):
                for i in range(1, images + 1):
                    name = f"{archive}/{alphabet}/character{c:02d}/{a:02d}{c:02d}_{i:02d}.png"
                    z.writestr(name, png_bytes(seed + 1000 * a + 50 * c + i))
    return path


def write_png(path: Path, pixels: torch.Tensor) -> None:
    """uint8 [1, H, W] or [3, H, W] as a PNG (lossless: the pixels read back exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = pixels.permute(1, 2, 0).squeeze(-1).contiguous()
    mode = "L" if pixels.shape[0] == 1 else "RGB"
    Image.frombytes(mode, (arr.shape[1], arr.shape[0]), bytes(arr.flatten().tolist())).save(path)


def write_class_folders(root: Path, splits: dict[str, int], per_class: int = 10,
                        size: int = 28, seed: int = 0) -> Path:
    """``root/<split>/c<k>/NN.png`` grayscale images: per class a random pattern, each image
    that pattern with 10% of its pixels flipped."""
    g = torch.Generator().manual_seed(seed)
    for split, classes in splits.items():
        for c in range(classes):
            pattern = torch.rand(1, size, size, generator=g) > 0.5
            for i in range(per_class):
                noise = torch.rand(1, size, size, generator=g) < 0.1
                write_png(root / split / f"c{c}" / f"{i:02d}.png",
                          ((pattern ^ noise) * 255).to(torch.uint8))
    return root


def gaussian_episode(ways: int, shots: int, queries: int, d_in: int, tasks: int = 2):
    """A float64 episode of standard normal vectors, labels in class order (seeded)."""
    from metabench.episodes import Episode

    g = torch.Generator().manual_seed(1)
    xs = torch.randn(tasks, ways * shots, d_in, generator=g, dtype=torch.float64)
    xq = torch.randn(tasks, ways * queries, d_in, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat(queries).repeat(tasks, 1)
    return Episode(xs, ys, xq, yq, ways)
