"""Datasets for the built-in trainer, described in configs as ``{kind = ..., ...}`` tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .arrays import load_npz
from .base import ImageDataset, fingerprint_arrays
from .external import load_huggingface, load_torchvision, survey_torchvision
from .folder import load_folder, survey_folder
from .imagenet import load_imagenet, survey_imagenet
from .survey import DatasetSurvey
from .synthetic import demo_dataset, planted_classes

__all__ = [
    "DatasetSurvey",
    "ImageDataset",
    "fingerprint_arrays",
    "load_dataset",
    "planted_classes",
    "survey_dataset",
]


# Each kind's loader, called as loader(split=..., **the table's other keys), and the keys its
# table must have.
_LOADERS: dict[str, tuple[Callable[..., ImageDataset], tuple[str, ...]]] = {
    "folder": (load_folder, ("path",)),
    "imagenet": (load_imagenet, ("path",)),
    "npz": (load_npz, ("path",)),
    "torchvision": (load_torchvision, ("dataset", "root")),
    "huggingface": (load_huggingface, ("path",)),
}


def load_dataset(spec: dict[str, Any], split: str, role: str) -> ImageDataset:
    """The ``split`` ("train"/"test") of the dataset ``spec`` describes, as ``role``
    ("source"/"target"; only the demo, which holds both, needs it)."""
    loader, options = _loader(spec, role)
    try:
        return loader(split=split, **options)
    except TypeError as error:  # a key the kind does not take
        raise ValueError(f"{spec['kind']} dataset: {error}") from None


def survey_dataset(spec: dict[str, Any], split: str, role: str) -> DatasetSurvey:
    """What :func:`load_dataset` would give, without decoding images that are not decoded
    yet (folders, archives, ImageNet); kinds that are read whole anyway are loaded."""
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in _SURVEYS:
        data = load_dataset(spec, split, role)
        return DatasetSurvey(len(data), data.images.shape[1:3], decoded=True)
    _, options = _loader(spec, role)
    try:
        return _SURVEYS[kind](split=split, **options)
    except TypeError as error:
        raise ValueError(f"{spec['kind']} dataset: {error}") from None


_SURVEYS = {
    "folder": survey_folder,
    "imagenet": survey_imagenet,
    "torchvision": survey_torchvision,
}


def _loader(spec: dict[str, Any], role: str) -> tuple[Callable[..., ImageDataset], dict[str, Any]]:
    """The function that reads ``spec``'s kind, and the table's other keys, checked for the
    ones the kind needs."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a dataset must be a table with a 'kind', got {spec!r}")
    options = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    kind = spec["kind"]
    if kind == "demo":
        return demo_dataset, {"role": role, **options}
    if kind not in _LOADERS:
        known = ", ".join(["demo", *_LOADERS])
        raise ValueError(f"unknown dataset kind {kind!r}; known: {known}")
    loader, needed = _LOADERS[kind]
    missing = [key for key in needed if key not in options]
    if missing:
        raise ValueError(f"a {kind} dataset needs {' and '.join(missing)}")
    return loader, options
