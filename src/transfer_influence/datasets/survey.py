"""What a dataset holds, found without decoding it: ``run --dry-run`` says what a run costs
before the first decode, which reads every image (for ImageNet, 140 GB)."""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from .cache import SUFFIXES

__all__ = ["DatasetSurvey", "first_image_side", "npy_shape", "npz_member_shape"]


@dataclass(frozen=True)
class DatasetSurvey:
    """``count`` images of ``side`` (height, width) pixels once decoded; ``decoded``: whether
    they already are (in the cache, or held as arrays)."""

    count: int
    side: tuple[int, int]
    decoded: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images (uint8 RGB), on disk in the cache and on a device."""
        return self.count * self.side[0] * self.side[1] * 3


def _array_header(handle: IO[bytes]) -> tuple[int, ...]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape)


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` file's header (None where it is not one)."""
    try:
        with open(path, "rb") as handle:
            return _array_header(handle)
    except (OSError, ValueError):
        return None


def npz_member_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` of an ``.npz``, from its header alone."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            return _array_header(handle)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: no readable array {key!r} ({error})") from None


def first_image_side(source: Path, name: str) -> tuple[int, int]:
    """(height, width) of the image ``name`` of a folder, or of an archive's first image (its
    header only: images kept at their own size all have one)."""
    try:
        if source.is_dir():
            with Image.open(source / name) as image:
                width, height = image.size
                return height, width
        with tarfile.open(source) as archive:
            for member in archive:
                if member.isfile() and Path(member.name).suffix.lower() in SUFFIXES:
                    handle = archive.extractfile(member)
                    with Image.open(handle) as image:
                        width, height = image.size
                        return height, width
    except (OSError, tarfile.TarError) as error:
        raise ValueError(f"{source}: cannot read the size of {name} ({error})") from None
    raise ValueError(f"no images found in {source}")
