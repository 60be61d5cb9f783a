"""The dataset interface of the built-in trainer: decoded images, labels and names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ImageDataset", "fingerprint_arrays", "fingerprint_header", "fingerprint_update"]


def fingerprint_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """What a fingerprint hashes before an array's bytes: a digest fed an array in pieces
    (a cache being built) starts with it to match :func:`fingerprint_arrays`."""
    return f"{np.dtype(dtype).str}{tuple(int(n) for n in shape)}".encode()


def fingerprint_update(digest: Any, array: np.ndarray) -> None:
    """Add one whole array to a running fingerprint."""
    array = np.ascontiguousarray(array)
    digest.update(fingerprint_header(array.dtype, array.shape))
    digest.update(array.tobytes())


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A short content hash that identifies a dataset's pixels, labels and ids."""
    digest = hashlib.sha256()
    for array in arrays:
        fingerprint_update(digest, array)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ImageDataset:
    """N images as an N x H x W x 3 uint8 array (possibly memory-mapped) with labels.

    ``class_names`` are the folder-style names (label = index); ``display_names`` the words a
    person reads (e.g. WordNet ids mapped to words); ``example_ids`` are stable per image.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    example_ids: np.ndarray
    display_names: tuple[str, ...] | None = None
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be N x H x W x 3 uint8, got {self.images.shape} {self.images.dtype}"
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.example_ids.shape != (n,):
            raise ValueError("images, labels and example_ids must have the same length")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError("labels must index class_names")
        if self.display_names is not None and len(self.display_names) != len(self.class_names):
            raise ValueError("display_names must match class_names")
        if not self.fingerprint:
            object.__setattr__(
                self, "fingerprint", fingerprint_arrays(self.images, self.labels, self.example_ids)
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        return self.display_names or self.class_names

    def subset(self, indices: np.ndarray) -> ImageDataset:
        indices = np.asarray(indices)
        return ImageDataset(
            np.asarray(self.images[indices]),
            self.labels[indices],
            self.class_names,
            self.example_ids[indices],
            self.display_names,
        )
