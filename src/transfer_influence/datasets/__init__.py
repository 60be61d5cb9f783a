"""Datasets for the built-in trainer, described in configs as ``{kind = ..., ...}`` tables."""

from __future__ import annotations

from typing import Any

from .arrays import load_npz
from .base import ImageDataset, fingerprint_arrays
from .external import load_huggingface, load_torchvision
from .folder import load_folder
from .imagenet import load_imagenet
from .synthetic import demo_dataset, planted_classes

__all__ = ["ImageDataset", "fingerprint_arrays", "load_dataset", "planted_classes"]


def load_dataset(spec: dict[str, Any], split: str, role: str) -> ImageDataset:
    """The ``split`` ("train"/"test") of the dataset ``spec`` describes, as ``role``
    ("source"/"target"; only the demo, which holds both, needs it)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"a dataset must be a table with a 'kind', got {spec!r}")
    options = {k: v for k, v in spec.items() if k not in ("kind", "name")}
    kind = spec["kind"]
    if kind == "demo":
        try:
            return demo_dataset(role, split, **options)
        except TypeError as error:
            raise ValueError(f"demo dataset: {error}") from None
    if kind == "folder":
        if "path" not in options:
            raise ValueError("a folder dataset needs a path")
        try:
            return load_folder(split=split, **options)
        except TypeError as error:
            raise ValueError(f"folder dataset: {error}") from None
    if kind == "imagenet":
        if "path" not in options:
            raise ValueError("an imagenet dataset needs a path")
        try:
            return load_imagenet(split=split, **options)
        except TypeError as error:
            raise ValueError(f"imagenet dataset: {error}") from None
    if kind == "npz":
        if set(options) != {"path"}:
            raise ValueError("an npz dataset takes exactly one key besides kind: path")
        return load_npz(options["path"], split)
    if kind in ("torchvision", "huggingface"):
        loader = load_torchvision if kind == "torchvision" else load_huggingface
        try:
            return loader(split=split, **options)
        except TypeError as error:
            raise ValueError(f"{kind} dataset: {error}") from None
    raise ValueError(
        f"unknown dataset kind {kind!r}; known: demo, folder, imagenet, npz, torchvision, "
        "huggingface"
    )
