"""What a job's mask ranges over, and which source images a mask selects.

Masks range over *groups*: by default the source classes, or the groups of a JSON file (class
-> group, e.g. CIFAR-100's superclasses; or example id -> group, e.g. feature clusters), or —
for example-level runs — the single images of a *pool* (the images of chosen classes), each its
own group. A pool's other source images are in no model (``context = "none"``, the default)
or in every model (``context = "all"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import ImageDataset
from ..datasets.folder import expand_path

__all__ = ["SourceGroups", "example_pool", "mapped_groups"]


@dataclass(frozen=True)
class SourceGroups:
    """``names[k]`` is group k; ``group_of_image[i]`` the group of source image i (-1: none);
    ``always[i]`` whether image i is in every model; ``labels`` the images' classes."""

    names: tuple[str, ...]
    group_of_image: np.ndarray
    always: np.ndarray
    labels: np.ndarray
    n_classes: int

    def images(self, mask: np.ndarray) -> np.ndarray:
        """Indices of the source images a model with this group mask trains on."""
        if mask.shape != (len(self.names),):  # a longer mask would index without complaint
            raise ValueError(f"a mask over {len(self.names)} groups, got shape {mask.shape}")
        grouped = self.group_of_image >= 0
        chosen = np.zeros_like(grouped)
        chosen[grouped] = mask[self.group_of_image[grouped]]
        return np.flatnonzero(chosen | self.always)

    def classes(self, mask: np.ndarray) -> np.ndarray:
        """Which source classes such a model has seen (bool per class)."""
        return np.bincount(self.labels[self.images(mask)], minlength=self.n_classes) > 0

    def expected_images(self, fraction: float) -> int:
        """Images in a model whose mask holds ``fraction`` of the groups (on average)."""
        grouped = int(np.count_nonzero(self.group_of_image >= 0))
        return round(int(np.count_nonzero(self.always)) + fraction * grouped)


def mapped_groups(source: ImageDataset, path: str | None = None) -> SourceGroups:
    """One group per class, or the groups a JSON file assigns: it maps every source class
    name to a group name (e.g. CIFAR-100's superclasses), or every source image's example id
    to one (e.g. the feature clusters ``transfer-influence cluster`` writes)."""
    if path is None:
        return _grouped(source, source.names, source.labels.copy())  # a class is its group
    file = Path(expand_path(path))
    try:
        mapping = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"groups file {file}: {error}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"groups file {file} must map class names (or example ids) to groups")
    by_image = not any(name in mapping for name in source.class_names)
    keys = [str(i) for i in source.example_ids] if by_image else list(source.class_names)
    missing = [key for key in keys if key not in mapping]
    if missing:
        what = "source image" if by_image else "source class"
        raise ValueError(
            f"groups file {file} has no group for {len(missing)} {what}(s), first {missing[0]!r}"
        )
    names = tuple(sorted({str(mapping[key]) for key in keys}))
    index = {name: i for i, name in enumerate(names)}
    group = np.array([index[str(mapping[key])] for key in keys])
    return _grouped(source, names, group if by_image else group[source.labels])


def _grouped(
    source: ImageDataset, names: tuple[str, ...], group_of_image: np.ndarray
) -> SourceGroups:
    return SourceGroups(
        tuple(names),
        group_of_image,
        np.zeros(len(source), bool),
        source.labels,
        len(source.class_names),
    )


def example_pool(source: ImageDataset, classes: list[str], context: str = "none") -> SourceGroups:
    """Every image of ``classes`` is a group of its own (named by its example id)."""
    if context not in ("none", "all"):
        raise ValueError(f"pool context must be 'none' or 'all', got {context!r}")
    known = {name: c for c, name in enumerate(source.class_names)}
    known.update({name: c for c, name in enumerate(source.names)})
    unknown = [name for name in classes if name not in known]
    if unknown or not classes:
        raise ValueError(f"pool names unknown source class {unknown[0]!r}" if unknown else
                         "a pool needs at least one class")  # fmt: skip
    in_pool = np.isin(source.labels, [known[name] for name in classes])
    members = np.flatnonzero(in_pool)
    if members.size < 2:
        raise ValueError("a pool needs at least two images")
    group_of_image = np.full(len(source), -1)
    group_of_image[members] = np.arange(members.size)
    always = ~in_pool if context == "all" else np.zeros(len(source), bool)
    names = tuple(str(i) for i in source.example_ids[members])
    return SourceGroups(names, group_of_image, always, source.labels, len(source.class_names))
