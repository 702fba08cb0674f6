"""How a raw image becomes a model input, as the training data did it: the data config's
``preprocess`` node (size, channels, inversion) travels in every checkpoint's config, so a
trained model is fed its own users' images exactly as it was fed its training images."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from metabench.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def pil_image(img: Image.Image, size: int, channels: int) -> Tensor:
    """uint8 [channels, size, size]: converted to RGB or grayscale and resized with PIL's
    Lanczos filter, the one conversion every image loader and the API share."""
    img = img.convert("RGB" if channels == 3 else "L").resize((size, size), Image.LANCZOS)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.view(size, size, channels).permute(2, 0, 1)


def decode_image(path: Path, size: int, channels: int) -> Tensor:
    """One image file as ``pil_image``; a DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            return pil_image(img, size, channels)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"could not decode image {path}: {reason}") from None


class ImagePreprocess:
    """A file or PIL image -> uint8 [channels, size, size]: converted to RGB or grayscale,
    resized with PIL's Lanczos filter, and for Omniglot inverted (strokes bright, as in its
    cache)."""

    def __init__(self, size: int, channels: int = 3, invert: bool = False):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"data.preprocess.size={size} must be a positive integer")
        if channels not in (1, 3):
            raise ValueError(f"data.preprocess.channels={channels} is not one of: 1, 3")
        self.size, self.channels, self.invert = size, channels, bool(invert)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def __call__(self, image: str | Path | Image.Image) -> Tensor:
        if isinstance(image, Image.Image):
            t = pil_image(image, self.size, self.channels)
        else:
            t = decode_image(Path(image), self.size, self.channels)
        return 255 - t if self.invert else t.contiguous()
