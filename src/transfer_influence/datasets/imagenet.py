"""ImageNet as users hold it: the dataset kind ``imagenet``, in any of three layouts.

- **ILSVRC** (the Kaggle download): ``ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG``, the validation
  images in one folder ``ILSVRC/Data/CLS-LOC/val/*.JPEG`` labelled by ``LOC_val_solution.csv``.
- **Class folders** (torchvision's ``ImageNet`` after its preparation, and most clusters):
  ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.
- **Downsampled ImageNet** (32 x 32 or 64 x 64; Chrabaszcz et al. 2017): the ``.npz`` batch
  files ``train_data_batch_1.npz`` ... and ``val_data.npz`` (labels 1 to 1000, named by
  ``map_clsloc.txt`` when it is beside them). The original release of the same files is Python
  pickles, which the tool never loads (they can run code).

Split "train" is ImageNet's training set, "test" its validation set (the usual test split).
Classes are WordNet ids, shown by the words of ``LOC_synset_mapping.txt`` (``n01440764
tench, Tinca tinca`` reads "tench"; the few words two synsets share get their id beside them)
when the file is in the dataset's folder or named by ``synsets``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes, open_regular
from .base import ImageDataset
from .cache import CACHE_MARK, file_sha256
from .folder import (
    cache_folder,
    cached_or_built,
    check_size,
    expand_path,
    load_images,
    survey_images,
)
from .survey import DatasetSurvey, npy_shape, npz_member_shape

__all__ = ["display_names", "load_imagenet", "read_synsets", "survey_imagenet"]

SYNSETS = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
_WNID = re.compile(r"n\d{8}")


def read_synsets(path: Path) -> dict[str, str]:
    """WordNet id -> its first word, from a ``LOC_synset_mapping.txt``."""
    words: dict[str, str] = {}
    with open_regular(path) as handle:
        for number, line in enumerate(handle.read().decode().splitlines(), 1):
            if not line.strip():
                continue
            wnid, _, text = line.strip().partition(" ")
            if not _WNID.fullmatch(wnid) or not text.strip():
                raise ValueError(f"{path}, line {number}: expected 'n01440764 tench, ...'")
            words[wnid] = text.split(",")[0].strip()
    return words


def display_names(classes: tuple[str, ...], words: dict[str, str], source: Path) -> dict:
    """The word of each class; a word that two classes share gets the id beside it
    ("crane (n02012849)"). A class the synset file does not name is an error."""
    missing = [c for c in classes if c not in words]
    if missing:
        raise ValueError(
            f"{source}: the synset file names no {missing[0]} ({len(missing)} class(es) "
            "missing); give the synset file of this copy of ImageNet"
        )
    counts = Counter(words[c] for c in classes)
    return {c: words[c] if counts[words[c]] == 1 else f"{words[c]} ({c})" for c in classes}


def _val_labels(path: Path) -> tuple[dict[str, str], str]:
    """Image id -> WordNet id from ``LOC_val_solution.csv``, and a digest of the file."""
    with open_regular(path) as handle:
        data = handle.read()
    labels = {}
    for row in csv.DictReader(io.StringIO(data.decode())):
        try:
            labels[row["ImageId"]] = row["PredictionString"].split()[0]
        except (KeyError, IndexError, AttributeError):
            raise ValueError(f"{path}: expected columns ImageId, PredictionString") from None
    return labels, hashlib.sha256(data).hexdigest()[:16]


def load_imagenet(
    path: str,
    split: str,
    size: int | None = None,
    synsets: str | None = None,
    cache: str | None = None,
    on_corrupt: str = "fail",
) -> ImageDataset:
    """``split`` ("train" or "test": ImageNet's validation set) of the ImageNet at ``path``,
    in whichever layout it is (see the module's description)."""
    check_size(size)
    root = Path(expand_path(path))
    synset_file = Path(expand_path(synsets)) if synsets else root / SYNSETS
    words = read_synsets(synset_file) if synset_file.is_file() else None
    if synsets and words is None:
        raise ValueError(f"synset file not found: {synset_file}")
    layout = _layout(root, split)
    if layout is None:
        data = _downsampled(root, split, cache)
    else:
        images, name, label_of, digest = layout
        data = load_images(images, name, size, cache, on_corrupt, label_of, digest)
    if words is None:
        return data
    names = display_names(data.class_names, words, synset_file)
    return ImageDataset(
        data.images, data.labels, data.class_names, data.example_ids,
        tuple(names[c] for c in data.class_names), fingerprint=data.fingerprint,
    )  # fmt: skip


def survey_imagenet(
    path: str,
    split: str,
    size: int | None = None,
    synsets: str | None = None,
    cache: str | None = None,
    on_corrupt: str = "fail",
) -> DatasetSurvey:
    """What :func:`load_imagenet` would load, counted without decoding."""
    check_size(size)
    root = Path(expand_path(path))
    layout = _layout(root, split)
    if layout is not None:
        images, name, _, digest = layout
        return survey_images(images, name, size, cache, on_corrupt, digest)
    stem = _downsampled_stem(root, split, cache)
    shape = npy_shape(stem.with_suffix(".npy")) if stem.with_suffix(".json").is_file() else None
    if shape is not None:
        return DatasetSurvey(shape[0], (shape[1], shape[2]), decoded=True)
    shapes = [npz_member_shape(f, "data") for f in _batch_files(root, split)]
    side = int(round((shapes[0][1] / 3) ** 0.5))
    return DatasetSurvey(sum(shape[0] for shape in shapes), (side, side))


_Layout = tuple[Path, str, Callable[[str], str] | None, str]


def _layout(root: Path, split: str) -> _Layout | None:
    """Where ``split``'s images are, under which cache name, and how each is labelled (by
    its folder where ``label_of`` is None); None for the downsampled batch files."""
    if not root.is_dir():
        raise ValueError(f"ImageNet not found: {root} is not a folder")
    folder = {"train": "train", "test": "val"}[split]
    if any(root.glob("train_data_batch_*")) or any(root.glob("val_data*")):
        return None
    name = f"{root.name}-{split}"
    ilsvrc = root / "ILSVRC" / "Data" / "CLS-LOC"
    if (ilsvrc / folder).is_dir():
        if split == "train":
            return ilsvrc / folder, name, None, ""
        return (ilsvrc / folder, name, *_val_labelling(root))
    if (root / folder).is_dir():
        return root / folder, name, None, ""
    raise ValueError(
        f"{root} holds no ImageNet layout: looked for ILSVRC/Data/CLS-LOC/{folder}/, "
        f"{folder}/<wnid>/ and train_data_batch_*.npz"
    )


def _val_labelling(root: Path) -> tuple[Callable[[str], str], str]:
    """The label of each ILSVRC validation image, from ``LOC_val_solution.csv``."""
    solution = root / VAL_SOLUTION
    if not solution.is_file():
        raise ValueError(f"{root}: the validation images need their labels, {VAL_SOLUTION}")
    labels, digest = _val_labels(solution)

    def label_of(member: str) -> str:
        image_id = Path(member).stem
        if image_id not in labels:
            raise ValueError(f"{solution} has no label for {member}")
        return labels[image_id]

    return label_of, digest


def _batch_files(root: Path, split: str) -> list[Path]:
    """The ``.npz`` batch files of one split, in their numbered order."""
    pattern = "train_data_batch_*" if split == "train" else "val_data*"
    files = sorted(root.glob(pattern), key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
    pickles = [f for f in files if f.suffix != ".npz"]
    if pickles:
        raise ValueError(
            f"{pickles[0]} is a Python pickle, which this tool never loads (it can run code): "
            "use the .npz release of Downsampled ImageNet"
        )
    if not files:
        raise ValueError(f"{root}: no {pattern}.npz files")
    return files


def _downsampled_stem(root: Path, split: str, cache: str | None) -> Path:
    listing = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in _batch_files(root, split)]
    key = hashlib.sha256(json.dumps([str(root.resolve()), listing]).encode()).hexdigest()[:16]
    return (Path(cache) if cache else cache_folder()) / f"{root.name}-{split}-{key}"


def _downsampled(root: Path, split: str, cache: str | None) -> ImageDataset:
    """The batch files of one split, decoded once into the cache (one file at a time)."""
    stem = _downsampled_stem(root, split, cache)
    files = _batch_files(root, split)
    meta = cached_or_built(stem, lambda: _build_downsampled(files, stem))
    images = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    return ImageDataset(
        images, np.array(meta["labels"], dtype=np.int64), tuple(meta["classes"]),
        np.array(meta["ids"]), fingerprint=meta["fingerprint"],
    )  # fmt: skip


def _downsampled_classes(root: Path, count: int) -> list[str]:
    """The WordNet id of each label, from ``map_clsloc.txt`` (``n02119789 1 kit_fox``) when
    the folder has it; else "class0001" to "class1000" (or the largest label's number)."""
    mapping = root / "map_clsloc.txt"
    if not mapping.is_file():
        return [f"class{k + 1:04d}" for k in range(max(count, 1000))]
    wnids = {}
    with open_regular(mapping) as handle:
        for line in handle.read().decode().splitlines():
            parts = line.split()
            if len(parts) >= 2 and _WNID.fullmatch(parts[0]) and parts[1].isdigit():
                wnids[int(parts[1]) - 1] = parts[0]
    if sorted(wnids) != list(range(len(wnids))) or len(wnids) < count:
        raise ValueError(f"{mapping} does not name every label from 1 to {max(count, 1)}")
    return [wnids[k] for k in range(len(wnids))]


def _build_downsampled(files: list[Path], stem: Path) -> None:
    counts, sides = [], set()
    for f in files:
        with np.load(f, allow_pickle=False) as batch:
            counts.append(batch["labels"].shape[0])
            sides.add(int(round((batch["data"].shape[1] / 3) ** 0.5)))
    if len(sides) != 1:
        raise ValueError(f"{files[0].parent}: batch files of different image sizes")
    side = sides.pop()
    stem.parent.mkdir(parents=True, exist_ok=True)
    partial = stem.with_name(stem.name + ".partial.npy")
    out = np.lib.format.open_memmap(partial, "w+", np.uint8, (sum(counts), side, side, 3))
    labels, ids, digest, start = [], [], hashlib.sha256(), 0
    for f, n in zip(files, counts, strict=True):
        with np.load(f, allow_pickle=False) as batch:
            data = batch["data"].reshape(n, 3, side, side).transpose(0, 2, 3, 1)
            out[start : start + n] = data
            labels += (batch["labels"].astype(np.int64) - 1).tolist()  # 1-based in the files
            digest.update(hashlib.sha256(np.ascontiguousarray(data).tobytes()).digest())
        ids += [f"{f.stem}/{i}" for i in range(n)]
        start += n
    out.flush()
    del out
    classes = _downsampled_classes(files[0].parent, max(labels) + 1)
    meta = {
        "written_by": CACHE_MARK, "npy_sha256": file_sha256(partial), "classes": classes,
        "labels": labels, "ids": ids, "fingerprint": digest.hexdigest()[:16], "skipped": [],
    }  # fmt: skip
    partial.replace(stem.with_suffix(".npy"))
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode())
