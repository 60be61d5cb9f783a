"""How an image of any size becomes a square of the recipe's resolution: the short side
resized to ``size``, then the centre cropped (no stretching). One function, used by every
dataset kind, so that the same picture gives the same pixels whichever way it was read."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["decode", "fit_square", "to_rgb_array"]


def fit_square(image: Image.Image, size: int | None) -> Image.Image:
    """``image`` in RGB with its short side resized to ``size`` and its centre cropped to
    ``size`` x ``size``; as it is when ``size`` is None."""
    image = image.convert("RGB")
    if size is None or image.size == (size, size):
        return image
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.BILINEAR, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def decode(blob: bytes, size: int | None) -> np.ndarray:
    """An encoded image as ``size`` x ``size`` x 3 uint8 (as it is without ``size``). A JPEG
    much larger than ``size`` is decoded at a reduced scale first (libjpeg's DCT scaling: a
    quarter of a photograph's pixels cost a sixteenth), never below ``size`` on its short
    side. Raises OSError or ValueError for what is not an image."""
    image = Image.open(io.BytesIO(blob))
    if size is not None and image.format == "JPEG":
        image.draft("RGB", (size, size))
    image.load()
    return np.asarray(fit_square(image, size), dtype=np.uint8)


def to_rgb_array(image: Any, size: int | None = None) -> np.ndarray:
    """A PIL image, an H x W (x C) array or a C x H x W tensor as H x W x 3 uint8, fitted to
    ``size`` if given."""
    if not hasattr(image, "convert"):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = np.moveaxis(array, 0, -1)  # C x H x W tensors
        if array.dtype != np.uint8:
            array = np.clip(np.rint(array * 255 if array.max() <= 1.0 else array), 0, 255)
        array = array.astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    return np.asarray(fit_square(image, size), dtype=np.uint8)
