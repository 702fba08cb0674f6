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
