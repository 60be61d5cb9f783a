"""What a job's mask ranges over, and which source images a mask selects.

Masks range over *groups*: by default the source classes, or any grouping of classes (a JSON
file mapping class -> group, e.g. CIFAR-100's superclasses), or — for example-level runs —
the single images of a *pool* (the images of chosen classes), each its own group. A pool's
other source images are in no model (``context = "none"``, the default) or in every model
(``context = "all"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import ImageDataset
from ..datasets.folder import expand_path

__all__ = ["SourceGroups", "class_groups", "example_pool"]


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


def class_groups(source: ImageDataset, path: str | None = None) -> SourceGroups:
    """Groups of whole classes: one per class, or as a JSON file maps classes to groups."""
    n_classes = len(source.class_names)
    if path is None:
        names, group_of_class = source.names, np.arange(n_classes)
    else:
        file = Path(expand_path(path))
        try:
            mapping = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"groups file {file}: {error}") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"groups file {file} must map class names to group names")
        missing = [c for c in source.class_names if c not in mapping]
        if missing:
            raise ValueError(
                f"groups file {file} has no group for {len(missing)} source class(es), "
                f"first {missing[0]!r}"
            )
        names = tuple(sorted({str(mapping[c]) for c in source.class_names}))
        index = {name: i for i, name in enumerate(names)}
        group_of_class = np.array([index[str(mapping[c])] for c in source.class_names])
    return SourceGroups(
        tuple(names),
        group_of_class[source.labels],
        np.zeros(len(source), bool),
        source.labels,
        n_classes,
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
