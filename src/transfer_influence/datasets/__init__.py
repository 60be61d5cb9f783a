"""Datasets for the built-in trainer, described in configs as ``{kind = ..., ...}`` tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .arrays import load_npz
from .base import ImageDataset, fingerprint_arrays
from .external import load_huggingface, load_torchvision
from .folder import load_folder
from .imagenet import load_imagenet
from .synthetic import demo_dataset, planted_classes

__all__ = ["ImageDataset", "fingerprint_arrays", "load_dataset", "planted_classes"]


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
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a dataset must be a table with a 'kind', got {spec!r}")
    options = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    kind = spec["kind"]
    if kind == "demo":
        loader, options = demo_dataset, {"role": role, **options}
    elif kind in _LOADERS:
        loader, needed = _LOADERS[kind]
        missing = [key for key in needed if key not in options]
        if missing:
            raise ValueError(f"a {kind} dataset needs {' and '.join(missing)}")
    else:
        known = ", ".join(["demo", *_LOADERS])
        raise ValueError(f"unknown dataset kind {kind!r}; known: {known}")
    try:
        return loader(split=split, **options)
    except TypeError as error:  # a key the kind does not take
        raise ValueError(f"{kind} dataset: {error}") from None
