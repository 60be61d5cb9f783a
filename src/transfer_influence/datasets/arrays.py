"""Datasets held as numpy arrays in an ``.npz`` file (read without pickle).

Keys: ``<split>_images`` (N x H x W x 3 uint8), ``<split>_labels`` (N ints), optional
``<split>_ids`` (N stable example ids; default ``<split>/<index>``) and ``class_names``.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from .base import ImageDataset
from .folder import expand_path

__all__ = ["load_features", "load_npz", "save_npz"]


def _read(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{file}: not a readable .npz without pickled objects ({error})") from None


def load_features(path: str, example_ids: np.ndarray) -> np.ndarray:
    """Rows of an ``.npz`` with ``example_ids`` (N) and ``features`` (N x D), in the order of
    ``example_ids`` — e.g. embeddings of the source images by a model of your own."""
    file = Path(expand_path(path))
    if not file.is_file():
        raise ValueError(f"features not found: {file} (an .npz with example_ids and features)")
    arrays = _read(file)
    for key in ("example_ids", "features"):
        if key not in arrays:
            raise ValueError(f"{file}: no array {key!r} (has {', '.join(sorted(arrays))})")
    features, ids = arrays["features"], arrays["example_ids"].astype(str)
    if features.ndim != 2 or features.shape[0] != ids.shape[0]:
        raise ValueError(f"{file}: features must be one row per example id, got {features.shape}")
    row = {i: r for r, i in enumerate(ids.tolist())}
    wanted = [str(i) for i in example_ids]
    missing = [i for i in wanted if i not in row]
    if missing:
        raise ValueError(f"{file}: no features for {len(missing)} image(s), first {missing[0]!r}")
    return features[[row[i] for i in wanted]].astype(np.float32)


def load_npz(path: str, split: str) -> ImageDataset:
    file = Path(expand_path(path))
    if not file.is_file():
        raise ValueError(
            f"dataset not found: {file} (an .npz with {split}_images and {split}_labels arrays)"
        )
    arrays = _read(file)
    for key in (f"{split}_images", f"{split}_labels"):
        if key not in arrays:
            raise ValueError(f"{file}: no array {key!r} (has {', '.join(sorted(arrays))})")
    images = np.ascontiguousarray(arrays[f"{split}_images"])
    labels = arrays[f"{split}_labels"].astype(np.int64)
    if images.ndim == 3:  # grey: repeat into three channels
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.dtype != np.uint8:
        raise ValueError(f"{file}: {split}_images must be uint8 (0-255), got {images.dtype}")
    classes = arrays.get("class_names")
    classes = (
        tuple(str(c) for c in classes)
        if classes is not None
        else tuple(f"class{c}" for c in range(int(labels.max()) + 1))
    )
    ids = arrays.get(f"{split}_ids")
    ids = (
        ids.astype(str)
        if ids is not None
        else np.array([f"{split}/{i}" for i in range(len(labels))])
    )
    digest = (
        hashlib.sha256(images.tobytes()).hexdigest()[:8]
        + hashlib.sha256(labels.tobytes() + "\n".join(ids.tolist()).encode()).hexdigest()[:8]
    )
    return ImageDataset(images, labels, classes, ids, fingerprint=digest)


def save_npz(path: str | Path, train: ImageDataset, test: ImageDataset) -> None:
    """Write a train and a test split (same classes) as an ``.npz`` that :func:`load_npz`
    reads back with the same images, labels, ids and class names."""
    if train.class_names != test.class_names:
        raise ValueError("train and test splits must have the same classes")
    np.savez(
        Path(path),
        train_images=train.images,
        train_labels=train.labels,
        train_ids=train.example_ids.astype(str),
        test_images=test.images,
        test_labels=test.labels,
        test_ids=test.example_ids.astype(str),
        class_names=np.array(train.class_names),
    )
