"""Datasets from torchvision and Hugging Face ``datasets`` (optional extras, imported lazily).

Nothing is downloaded at run time: torchvision datasets are opened with ``download=False`` and
Hugging Face datasets are read from a ``save_to_disk`` folder or the local hub cache, with the
hub offline unless the dataset's table says ``online = true``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import ImageDataset
from .folder import (
    cache_folder,
    cached_or_built,
    check_on_corrupt,
    expand_path,
    warn_skipped,
)
from .images import to_rgb_array
from .indexed import build_indexed_cache
from .survey import DatasetSurvey, npy_shape

__all__ = [
    "SPLITS",
    "load_huggingface",
    "load_torchvision",
    "survey_torchvision",
    "torchvision_arguments",
]


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


# The splits of torchvision classes that take ``split=``, for (training the head, outputs):
# the paper's protocol (train and validation together where the dataset has both, test for
# outputs). A class not listed gets ("train", "test"); a dataset table's ``splits = [A, B]``
# overrides either, and "A+B" joins two of the class's splits.
SPLITS = {
    "FGVCAircraft": ("trainval", "test"),
    "OxfordIIITPet": ("trainval", "test"),
    "Flowers102": ("train+val", "test"),
    "Food101": ("train", "test"),
    "StanfordCars": ("train", "test"),
    "DTD": ("train", "test"),
}


def _torchvision_class(name: str) -> tuple[Any, str]:
    """The dataset class, and how it takes a split: "train" (``train=bool``), "split"
    (``split=str``) or "none" (one set, split here)."""
    datasets = _import("torchvision.datasets", "torchvision")
    cls = getattr(datasets, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"torchvision.datasets has no {name!r}")
    parameters = inspect.signature(cls).parameters
    return cls, "train" if "train" in parameters else "split" if "split" in parameters else "none"


def torchvision_arguments(
    name: str, split: str, takes: str, splits: Sequence[str] | None = None
) -> dict[str, Any]:
    """The keyword arguments that open ``split`` ("train"/"test") of torchvision's ``name``."""
    if takes == "train":
        return {"train": split == "train", "download": False}
    if takes == "split":
        pair = tuple(splits) if splits is not None else SPLITS.get(name, ("train", "test"))
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"torchvision {name}: splits must be two names, got {splits!r}")
        return {"split": pair[split == "test"], "download": False}
    return {"download": False}


def _seeded_split(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """The indices of ``split`` in a seeded random split of n images (for datasets that come
    as one set: Caltech-101/256, SUN397)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = np.random.default_rng([seed, 11]).permutation(n)
    cut = round(test_fraction * n)
    return np.sort(order[:cut] if split == "test" else order[cut:])


def load_torchvision(
    dataset: str,
    root: str,
    split: str,
    size: int | None = None,
    splits: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    on_corrupt: str = "fail",
) -> ImageDataset:
    """A split of ``torchvision.datasets.<dataset>`` already downloaded under ``root``.

    The split is passed the way the class takes it (``train=``, ``split=`` from
    :data:`SPLITS` or ``splits``); a class with one set (SUN397, Caltech101, Caltech256) is
    split here at random (``test_fraction``, ``split_seed``; example ids keep the index in the
    whole set). Images are fitted to ``size`` (short side, centre crop); without ``size`` they
    must all have one size. An image that cannot be read stops the load with its index
    (``on_corrupt = "fail"``) or is left out and counted (``"skip"``; images read from files).
    """
    check_on_corrupt(on_corrupt)
    _, takes = _torchvision_class(dataset)
    arguments = torchvision_arguments(dataset, split, takes, splits)
    if "+" in arguments.get("split", ""):
        parts = [
            load_torchvision(
                dataset, root, split, size, [part, part], test_fraction, split_seed, on_corrupt
            )
            for part in arguments["split"].split("+")
        ]
        return ImageDataset(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            parts[0].class_names,
            np.concatenate([
                [f"{name}/{i.split('/', 1)[1]}" for i in p.example_ids]
                for name, p in zip(arguments["split"].split("+"), parts, strict=True)
            ]),
        )  # fmt: skip
    data, location, indices = _open_split(
        dataset, root, split, arguments, test_fraction, split_seed
    )
    names = getattr(data, "classes", None) or getattr(data, "categories", None)
    prefix = "all" if takes == "none" else split
    ids = [f"{prefix}/{i}" for i in indices]
    pixels = getattr(data, "data", None)
    if not (isinstance(pixels, np.ndarray) and pixels.ndim == 4 and pixels.shape[-1] == 3):
        # Files read one at a time: decoded once, by every core, into the cache.
        stem = _cache_stem(dataset, location, arguments, data, indices, size, on_corrupt)
        opener = functools.partial(_open, dataset, location, arguments)
        what = f"torchvision {dataset} ({prefix})"
        meta = cached_or_built(stem, lambda: build_indexed_cache(
            stem, what, data, opener, indices, ids, names, size, on_corrupt))  # fmt: skip
        warn_skipped(what, meta)
        return ImageDataset(
            np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False),
            np.array(meta["labels"], dtype=np.int64), tuple(meta["classes"]),
            np.array(meta["ids"]), fingerprint=meta["fingerprint"],
        )  # fmt: skip
    # Arrays in memory already (CIFAR's): fitted here.
    images = [pixels[i] if size in (None, pixels.shape[1]) else to_rgb_array(pixels[i], size)
              for i in indices]  # fmt: skip
    labels = np.asarray(data.targets, dtype=np.int64)[indices]
    names = names or [f"class{c}" for c in range(int(labels.max()) + 1)]
    return ImageDataset(np.stack(images), labels, tuple(str(n) for n in names), np.array(ids))


def survey_torchvision(
    dataset: str,
    root: str,
    split: str,
    size: int | None = None,
    splits: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    on_corrupt: str = "fail",
) -> DatasetSurvey:
    """What :func:`load_torchvision` would load, counted without decoding the images (an
    upper bound where ``on_corrupt = "skip"`` would leave some out)."""
    check_on_corrupt(on_corrupt)
    _, takes = _torchvision_class(dataset)
    arguments = torchvision_arguments(dataset, split, takes, splits)
    if "+" in arguments.get("split", ""):
        parts = [
            survey_torchvision(
                dataset, root, split, size, [part, part], test_fraction, split_seed, on_corrupt
            )
            for part in arguments["split"].split("+")
        ]
        decoded = all(p.decoded for p in parts)
        return DatasetSurvey(sum(p.count for p in parts), parts[0].side, decoded)
    data, location, indices = _open_split(
        dataset, root, split, arguments, test_fraction, split_seed
    )
    pixels = getattr(data, "data", None)
    if isinstance(pixels, np.ndarray) and pixels.ndim == 4 and pixels.shape[-1] == 3:
        return DatasetSurvey(len(indices), (size, size) if size else pixels.shape[1:3], True)
    stem = _cache_stem(dataset, location, arguments, data, indices, size, on_corrupt)
    shape = npy_shape(stem.with_suffix(".npy")) if stem.with_suffix(".json").is_file() else None
    if shape is not None:
        return DatasetSurvey(shape[0], (shape[1], shape[2]), decoded=True)
    if size is None:
        height, width, _ = to_rgb_array(data[int(indices[0])][0]).shape
        return DatasetSurvey(len(indices), (height, width))
    return DatasetSurvey(len(indices), (size, size))


def _open_split(
    dataset: str,
    root: str,
    split: str,
    arguments: dict[str, Any],
    test_fraction: float,
    split_seed: int,
) -> tuple[Any, str, np.ndarray]:
    """The dataset opened with ``arguments``, where it is, and the indices of ``split``'s
    images in it (a seeded share of one set, for a class that has no splits)."""
    cls, takes = _torchvision_class(dataset)
    location = expand_path(root)
    try:
        data = cls(location, **arguments)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise ValueError(
            f"torchvision {dataset} under {root}: {error} (download it once with "
            "download=True, outside the run)"
        ) from None
    except ValueError as error:  # verify_str_arg: a split the class does not take
        raise ValueError(
            f"torchvision {dataset}: {error}; give splits = [TRAIN, TEST] in the dataset's table"
        ) from None
    if takes == "none":
        return data, location, _seeded_split(len(data), split, test_fraction, split_seed)
    return data, location, np.arange(len(data))


def _open(dataset: str, location: str, arguments: dict[str, Any]) -> Any:
    """The dataset, opened again in a worker process of the cache's build."""
    cls, _ = _torchvision_class(dataset)
    return cls(location, **arguments)


# Where torchvision's classes keep their image files' paths (or (path, label) pairs).
_FILE_LISTS = ("_image_files", "_images", "_samples", "samples", "imgs")


def _cache_stem(
    dataset: str, location: str, arguments: dict[str, Any], data: Any, indices: np.ndarray,
    size: int | None, on_corrupt: str = "fail",
) -> Path:  # fmt: skip
    """The cache entry of these images: keyed by the dataset, the split's arguments, the
    images taken and every image file's path, size and modification time (from the class's
    own list of files where it keeps one, else every file under ``location``), so any edit
    is a new entry."""
    files = next((getattr(data, a) for a in _FILE_LISTS if getattr(data, a, None)), None)
    if files is None:  # the cache's own files are no image of the dataset's, wherever it is
        cache = cache_folder().resolve()
        paths = sorted(p for p in Path(location).rglob("*")
                       if p.is_file() and not p.resolve().is_relative_to(cache))  # fmt: skip
    else:
        paths = [Path(f[0] if isinstance(f, tuple | list) else f) for f in files]
    listing = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = json.dumps(
        [
            dataset,
            str(Path(location).resolve()),
            sorted(arguments.items()),
            len(data),
            hashlib.sha256(indices.tobytes()).hexdigest(),
            size,
            listing,
            *(["skip"] if on_corrupt == "skip" else []),  # entries made before keep their key
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]  # fmt: skip
    return cache_folder() / f"torchvision-{dataset}-{arguments.get('split', 'all')}-{digest}"


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
    images = np.stack([to_rgb_array(image) for image in dataset[image_column]])
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None) or [f"class{c}" for c in range(labels.max() + 1)]
    ids = np.array([f"{split}/{i}" for i in range(len(labels))])
    return ImageDataset(images, labels, tuple(str(n) for n in names), ids)
