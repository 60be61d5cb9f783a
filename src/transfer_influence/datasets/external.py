"""Datasets from torchvision and Hugging Face ``datasets`` (optional extras, imported lazily).

Nothing is downloaded at run time: torchvision datasets are opened with ``download=False`` and
Hugging Face datasets are read from a ``save_to_disk`` folder or the local hub cache, with the
hub offline unless the dataset's table says ``online = true``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import ImageDataset
from .folder import expand_path

__all__ = ["load_huggingface", "load_torchvision"]


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(
            f"{module} is not usable here ({error}); install the extra: "
            f"pip install 'transfer-influence[{extra}]'"
        ) from None


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """The ``datasets`` library and its hub client in offline mode, for one call."""
    import huggingface_hub.constants as hub

    modules = [m for m in (datasets.config, hub) if hasattr(m, "HF_HUB_OFFLINE")]
    before = [m.HF_HUB_OFFLINE for m in modules]
    for module in modules:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(modules, before, strict=True):
            module.HF_HUB_OFFLINE = value


def _to_rgb(image: Any) -> np.ndarray:
    if hasattr(image, "convert"):  # a PIL image
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # C x H x W tensors
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255 if array.max() <= 1.0 else array), 0, 255)
    return array.astype(np.uint8)


def load_torchvision(dataset: str, root: str, split: str) -> ImageDataset:
    """``torchvision.datasets.<dataset>(root, train=split == "train")``, already downloaded."""
    datasets = _import("torchvision.datasets", "torchvision")
    name = dataset
    if not hasattr(datasets, name):
        raise ValueError(f"torchvision.datasets has no {name!r}")
    try:
        dataset = getattr(datasets, name)(expand_path(root), train=split == "train", download=False)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(
            f"torchvision {name} under {root}: {error} (download it once with "
            "download=True, outside the run)"
        ) from None
    data = getattr(dataset, "data", None)
    if isinstance(data, np.ndarray) and data.ndim == 4 and data.shape[-1] == 3:
        images = np.ascontiguousarray(data, dtype=np.uint8)
    else:
        images = np.stack([_to_rgb(dataset[i][0]) for i in range(len(dataset))])
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    labels = np.asarray(targets, dtype=np.int64)
    classes = tuple(
        str(c) for c in getattr(dataset, "classes", [f"class{c}" for c in range(labels.max() + 1)])
    )
    ids = np.array([f"{split}/{i}" for i in range(len(labels))])
    return ImageDataset(images, labels, classes, ids)


def load_huggingface(
    path: str,
    split: str,
    image_column: str = "img",
    label_column: str = "label",
    online: bool = False,
) -> ImageDataset:
    """A split of a Hugging Face dataset saved with ``save_to_disk`` at ``path``, or a hub name
    already in the local cache. The hub is never contacted unless ``online`` is true (a
    mistyped path would otherwise download some other dataset, or wait on retries)."""
    datasets = _import("datasets", "huggingface")
    location = expand_path(path)
    try:
        try:
            dataset = datasets.load_from_disk(location)
        except FileNotFoundError:
            with contextlib.nullcontext() if online else _offline(datasets):
                dataset = datasets.load_dataset(location, split=split)
    except Exception as error:  # the library raises many types for "not there"
        raise ValueError(f"Hugging Face dataset {path!r} not found locally: {error}") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{path}: no split {split!r} (has {', '.join(dataset)})")
        dataset = dataset[split]
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"{path}: no column {column!r} (has {', '.join(dataset.column_names)})"
            )
    images = np.stack([_to_rgb(image) for image in dataset[image_column]])
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None) or [f"class{c}" for c in range(labels.max() + 1)]
    ids = np.array([f"{split}/{i}" for i in range(len(labels))])
    return ImageDataset(images, labels, tuple(str(n) for n in names), ids)
