"""The images behind a run, for the report: target examples in the run's order, source
images with their group, and thumbnails as PNG bytes.

A run trained by the built-in trainer knows its datasets from its config. An imported run
does not: the user names them (``--source-data`` / ``--target-data``), as a dataset table or
simply a path (a folder or tarballs in the ImageFolder layout, or an ``.npz``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..datasets import ImageDataset, load_dataset
from ..store import RunError, RunStore

__all__ = ["RunImages", "load_run_images", "png", "thumbnail"]

THUMBNAIL_SIDE = 64


@dataclass(frozen=True)
class RunImages:
    """``target``: n images in the run's example order; ``source``: N images whose group
    index is ``source_groups``. Either may be None, and ``target_note`` or ``source_note``
    then says why."""

    target: np.ndarray | None
    source: np.ndarray | None
    source_groups: np.ndarray | None
    target_note: str = ""
    source_note: str = ""

    @property
    def note(self) -> str:
        """Why images are missing, once for both sides."""
        notes = dict.fromkeys(n for n in (self.target_note, self.source_note) if n)
        return "; ".join(notes)

    def source_samples(self, group: int, n: int) -> np.ndarray:
        """Up to ``n`` images of one source group, spread over its images."""
        if self.source is None or self.source_groups is None:
            return np.zeros((0, 1, 1, 3), np.uint8)
        members = np.flatnonzero(self.source_groups == group)
        pick = members[np.linspace(0, members.size - 1, min(n, members.size)).astype(int)]
        return np.asarray(self.source[pick]) if members.size else self.source[:0]


def _as_spec(data: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    kind = "npz" if str(data).endswith(".npz") else "folder"
    return {"kind": kind, "path": str(data)}


def _align_target(store: RunStore, target_name: str, data: ImageDataset) -> np.ndarray:
    """Target images in the run's example order, matched by example id.

    Runs imported without ids number their examples 000000, 000001, ...; those are matched by
    position, which needs the dataset in the order the outputs were recorded in.
    """
    ids = store.target(target_name).example_ids
    position = {str(i): p for p, i in enumerate(data.example_ids)}
    found = [position.get(str(i)) for i in ids]
    if all(p is not None for p in found):
        return np.asarray(data.images[np.array(found, dtype=np.int64)])
    positional = np.array([f"{j:06d}" for j in range(ids.size)])
    if np.array_equal(ids, positional) and len(data) == ids.size:
        return np.asarray(data.images)
    raise RunError(
        f"the target images do not match the run's {ids.size} examples "
        f"(first run id {ids[0]!r}, first dataset id {data.example_ids[0]!r})"
    )


def _source_groups(store: RunStore, data: ImageDataset, params: dict[str, Any]) -> np.ndarray:
    """The group of every source image (-1: in no group), for the run's grouping."""
    if params.get("pool") is not None or params.get("groups") is not None:
        from ..trainers.source_groups import example_pool, mapped_groups

        pool = params.get("pool")
        groups = (
            example_pool(data, list(pool["classes"]), pool.get("context", "none"))
            if pool is not None
            else mapped_groups(data, params["groups"])
        )
        if groups.names != store.groups:
            raise RunError("the source images give other groups than the run's")
        return groups.group_of_image
    index = {name: k for k, name in enumerate(store.groups)}
    for names in (data.names, data.class_names):
        if all(name in index for name in names):
            return np.array([index[name] for name in names])[data.labels]
    if len(data.class_names) == len(store.groups):
        return data.labels.copy()
    raise RunError(
        f"the source images have {len(data.class_names)} classes that do not match the run's "
        f"{len(store.groups)} groups (first: {data.class_names[0]!r} vs {store.groups[0]!r})"
    )


def load_run_images(
    store: RunStore,
    target_name: str,
    source_data: str | dict[str, Any] | None = None,
    target_data: str | dict[str, Any] | None = None,
) -> RunImages:
    """The run's images, from the given datasets or else from its built-in trainer config."""
    if store.config.trainer.type == "simulated" and source_data is None and target_data is None:
        why = "a simulated run has no images"
        return RunImages(None, None, None, why, why)
    params = store.config.trainer.params if store.config.trainer.type == "builtin" else {}
    target_note = source_note = ""
    target = source = groups = None
    config_target = next((t for t in params.get("targets", []) if t["name"] == target_name), None)
    if target_data is not None:
        dataset = load_dataset(_as_spec(target_data), "test", "target")
        target = _align_target(store, target_name, dataset)
    elif config_target is not None:
        from ..trainers.builtin import TargetData

        target = _align_target(store, target_name, TargetData(config_target).test)
    else:
        target_note = "no target images: the run's config names none (give target_data)"
    source_spec = source_data if source_data is not None else params.get("source")
    if source_spec is not None:
        dataset = load_dataset(_as_spec(source_spec), "train", "source")
        grouping = params if source_data is None else {}
        source, groups = dataset.images, _source_groups(store, dataset, grouping)
    else:
        source_note = "no source images: the run's config names none (give source_data)"
    return RunImages(target, source, groups, target_note, source_note)


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> Image.Image:
    picture = Image.fromarray(np.asarray(image))
    return picture.resize((side, side), Image.LANCZOS)


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
