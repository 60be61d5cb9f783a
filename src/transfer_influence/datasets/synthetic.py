"""The offline demo task: synthetic images with planted helpful and harmful source classes.

The target asks which way faint, noisy stripes run (4 orientations). Source classes are of
three kinds:

- helpful: clear stripes at one of the target's orientations (the target's visual concept);
- harmful: loud, label-noisy look-alikes — saturated stripes at the target's orientations,
  drowned in pixel noise, whose labels say nothing about them (measured: each costs the
  target about two points of accuracy against an irrelevant class);
- irrelevant: soft coloured blobs, one colour a class: no stripes and no edges. (Not rings:
  their edges gave a white ring a real effect on the target, told apart from the average in
  several run seeds.)

With ``planted=False`` (the control) the source classes are one pool of blobs, rings and
squares dealt at random into 16 classes, so no class can differ from another except by
chance. Everything is generated from a seed in a few seconds: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import save_npz
from .base import ImageDataset

__all__ = ["DEMO_ANGLES", "PlantedPool", "demo_dataset", "planted_classes", "planted_pool"]

DEMO_ANGLES = (0, 45, 90, 135)
_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (235, 235, 235),
}
_SHAPES = ("blob", "ring", "square")
_SIZE = 16


def _source_classes(planted: bool) -> list[tuple[str, str, object]]:
    """(name, kind, parameter) for every source class, in label order."""
    if not planted:
        return [(f"mix-{i:02d}", "irrelevant", None) for i in range(16)]
    classes: list[tuple[str, str, object]] = []
    classes += [(f"stripes-{a}", "helpful", a) for a in DEMO_ANGLES]
    classes += [(f"static-{c}", "harmful", c) for c in "abcd"]
    return classes + [(f"{c}-blob", "irrelevant", ("blob", c)) for c in _COLOURS]


def planted_classes(planted: bool = True) -> dict[str, list[str]]:
    """Names of the planted helpful and harmful source classes."""
    kinds: dict[str, list[str]] = {"helpful": [], "harmful": [], "irrelevant": []}
    for name, kind, _ in _source_classes(planted):
        kinds[kind].append(name)
    return kinds


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:_SIZE, 0:_SIZE].astype(np.float32) / _SIZE
    return yy, xx


def _stripes(rng: np.random.Generator, angles: np.ndarray, contrast: float) -> np.ndarray:
    """n x H x W stripe patterns in [-contrast, contrast] at the given angles (degrees)."""
    yy, xx = _grid()
    theta = np.deg2rad(angles + rng.normal(0, 6, size=angles.size))[:, None, None]
    freq = rng.uniform(2.5, 4.0, size=(angles.size, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(angles.size, 1, 1))
    wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    return contrast * wave


def _shape_masks(rng: np.random.Generator, n: int, shape: str) -> np.ndarray:
    yy, xx = _grid()
    cy, cx = rng.uniform(0.3, 0.7, size=(2, n, 1, 1))
    radius = rng.uniform(0.15, 0.3, size=(n, 1, 1))
    if shape == "square":
        return (np.maximum(np.abs(yy - cy), np.abs(xx - cx)) < radius).astype(np.float32)
    distance = np.hypot(yy - cy, xx - cx)
    if shape == "ring":
        return (np.abs(distance - radius) < 0.07).astype(np.float32)
    return np.exp(-((distance / radius) ** 2)).astype(np.float32)


def _render(
    rng: np.random.Generator, pattern: np.ndarray, colours: np.ndarray, noise: float
) -> np.ndarray:
    """Grey background + pattern tinted by colour + a faint distractor blob + pixel noise."""
    n = pattern.shape[0]
    background = rng.uniform(90, 160, size=(n, 1, 1, 1))
    image = background + pattern[..., None] * (colours[:, None, None, :] - 128.0)
    distractor = _shape_masks(rng, n, "blob")[..., None] * rng.uniform(-60, 60, size=(n, 1, 1, 3))
    image = image + distractor + rng.normal(0, noise * 255, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    palette = np.array(list(_COLOURS.values()), dtype=np.float32)
    return palette[rng.integers(0, len(palette), size=n)]


def _shapes(rng: np.random.Generator, n: int, shape: str, colour: str, noise: float = 0.08):
    pattern = _shape_masks(rng, n, shape) * 0.8
    colours = np.repeat(np.array(_COLOURS[colour], dtype=np.float32)[None], n, axis=0)
    return _render(rng, pattern, colours, noise)


def _make_source(rng: np.random.Generator, planted: bool, per_class: int):
    classes = _source_classes(planted)
    if not planted:  # the null: one pool of shapes dealt at random into exchangeable classes
        pool = [(s, c) for s in _SHAPES for c in _COLOURS]
        picks = rng.integers(0, len(pool), size=per_class * len(classes))
        images = np.concatenate([_shapes(rng, 1, *pool[p]) for p in picks])
        return images, np.repeat(np.arange(len(classes)), per_class)
    images, labels = [], []
    for label, (_, kind, param) in enumerate(classes):
        if kind == "helpful":
            pattern = _stripes(rng, np.full(per_class, float(param)), 0.55)
            images.append(_render(rng, pattern, _random_colours(rng, per_class), noise=0.08))
        elif kind == "harmful":  # saturated stripes drowned in noise, under random labels
            angles = rng.choice(np.array(DEMO_ANGLES, dtype=float), size=per_class)
            pattern = np.sign(_stripes(rng, angles, 1.0)) * 1.5
            images.append(_render(rng, pattern, _random_colours(rng, per_class), noise=0.5))
        else:
            images.append(_shapes(rng, per_class, *param))
        labels.append(np.full(per_class, label))
    return np.concatenate(images), np.concatenate(labels)


def _make_target(rng: np.random.Generator, per_class: int):
    labels = np.repeat(np.arange(len(DEMO_ANGLES)), per_class)
    angles = np.array(DEMO_ANGLES, dtype=float)[labels]
    images = _render(
        rng, _stripes(rng, angles, 0.22), _random_colours(rng, labels.size), noise=0.16
    )
    return images, labels


def demo_dataset(
    role: str,
    split: str,
    planted: bool = True,
    seed: int = 0,
    source_per_class: int = 100,
    target_per_class: int = 150,
) -> ImageDataset:
    """One split ("train" or "test") of the demo's source or target ("source"/"target")."""
    if role not in ("source", "target") or split not in ("train", "test"):
        raise ValueError(
            f"demo dataset: role must be source/target and split train/test, got {role}/{split}"
        )
    stream = {"source": 0, "target": 1}[role] * 2 + (split == "test")
    rng = np.random.default_rng([seed, stream, int(planted)])
    if role == "source":
        per_class = source_per_class if split == "train" else max(10, source_per_class // 5)
        images, labels = _make_source(rng, planted, per_class)
        names = tuple(name for name, _, _ in _source_classes(planted))
    else:
        per_class = target_per_class if split == "train" else max(50, target_per_class)
        images, labels = _make_target(rng, per_class)
        names = tuple(f"angle-{a}" for a in DEMO_ANGLES)
    counters = np.zeros(len(names), dtype=int)
    ids = []
    for label in labels:
        ids.append(f"{names[label]}/{counters[label]:05d}")
        counters[label] += 1
    return ImageDataset(images, labels.astype(np.int64), names, np.array(ids))


@dataclass(frozen=True)
class PlantedPool:
    """An example-level task with planted source images (see :func:`planted_pool`):
    ``mislabeled`` ids, and ``duplicates`` mapping each copy's id to the target test id it
    copies."""

    source_train: ImageDataset
    source_test: ImageDataset
    target_train: ImageDataset
    target_test: ImageDataset
    mislabeled: tuple[str, ...]
    duplicates: dict[str, str]

    def trainer_params(self, folder: Path, recipe: dict[str, Any]) -> dict[str, Any]:
        """The built-in trainer's params for an example-level run over this pool, its source
        and target written to ``folder`` as source.npz and target.npz (target name "t")."""
        save_npz(folder / "source.npz", self.source_train, self.source_test)
        save_npz(folder / "target.npz", self.target_train, self.target_test)
        return {
            "source": {"kind": "npz", "path": str(folder / "source.npz")},
            "targets": [{"kind": "npz", "path": str(folder / "target.npz"), "name": "t"}],
            "pool": {"classes": list(self.source_train.class_names)},
            "recipe": recipe,
        }


def _stripes_only(data: ImageDataset) -> ImageDataset:
    rows = np.flatnonzero(data.labels < len(DEMO_ANGLES))  # the helpful classes come first
    return ImageDataset(
        data.images[rows], data.labels[rows], data.class_names[: len(DEMO_ANGLES)],
        data.example_ids[rows],
    )  # fmt: skip


def planted_pool(seed: int = 0, per_class: int = 20, planted: int = 10) -> PlantedPool:
    """A pool of the demo's clear-stripes source images with two kinds of planted images:

    - mislabeled: fresh target-like images (faint, noisy stripes) under the source class of
      the orientation 90 degrees away — they should hurt the target;
    - near-duplicates: copies of target test images (new pixel noise, shifted by a pixel)
      under the class of their own orientation — they should help the image they copy.
    """
    rng = np.random.default_rng([seed, 2024])
    source = _stripes_only(demo_dataset("source", "train", seed=seed, source_per_class=per_class))
    target_test = demo_dataset("target", "test", seed=seed)
    fresh = demo_dataset("target", "train", seed=seed + 1000)
    wrong = rng.choice(len(fresh), size=planted, replace=False)
    copied = rng.choice(len(target_test), size=planted, replace=False)
    copies = target_test.images[copied].astype(np.int16)
    copies += rng.normal(0, 4, size=copies.shape).round().astype(np.int16)
    copies = np.roll(np.clip(copies, 0, 255).astype(np.uint8), 1, axis=2)
    mislabeled = tuple(f"mislabeled/{i:02d}" for i in range(planted))
    duplicates = {f"duplicate/{target_test.example_ids[j]}": str(target_test.example_ids[j])
                  for j in copied}  # fmt: skip
    train = ImageDataset(
        np.concatenate([source.images, fresh.images[wrong], copies]),
        np.concatenate(
            [
                source.labels,
                (fresh.labels[wrong] + 2) % len(DEMO_ANGLES),
                target_test.labels[copied],
            ]
        ),
        source.class_names,
        np.concatenate([source.example_ids, mislabeled, list(duplicates)]),
    )
    source_test = _stripes_only(
        demo_dataset("source", "test", seed=seed, source_per_class=per_class)
    )
    return PlantedPool(
        train,
        source_test,
        demo_dataset("target", "train", seed=seed),
        target_test,
        mislabeled,
        duplicates,
    )
