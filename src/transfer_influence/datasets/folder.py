"""ImageFolder-style data: ``ROOT/SPLIT/<class>/<image>`` directories or ``ROOT/SPLIT.tar[.gz]``
archives of that layout (label = index of the class folder in sorted order).

Images are decoded once (in parallel) into a cache of uint8 arrays, keyed by every image
file's path, size and modification time and checked against its SHA-256 on every load;
later loads memory-map the cache. The key trusts what ``make`` and ``rsync`` trust: an image
rewritten in place with the same size and its modification time set back is not noticed
(``transfer-influence cache --clear`` decodes everything again). Every cache entry is marked
as the tool's, and clearing deletes marked entries only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..files import CorruptFileError, exclusive_lock, open_regular
from .base import ImageDataset
from .cache import CACHE_MARK, build_cache, file_sha256, image_names, list_members
from .survey import DatasetSurvey, first_image_side, npy_shape

__all__ = ["cache_entries", "cache_folder", "load_folder", "survey_folder"]

MAX_SIZE = 1024  # pixels a side: 50,000 images at 1024 x 1024 are already 150 GB


def _cache_key(
    source: Path,
    size: int | None,
    on_corrupt: str,
    labels_digest: str = "",
    names: list[str] | None = None,
) -> str:
    """What the cache is keyed by: every image file's path, size and modification time (a
    directory, whose ``names`` a caller may have listed already), or the archive's; so any
    edit, addition or move is a new cache."""
    if source.is_dir():
        names = image_names(source) if names is None else names
        stats = ((name, os.stat(f"{source}/{name}")) for name in names)
        listing = [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]
    else:
        stat = source.stat()
        listing = [(source.name, stat.st_size, stat.st_mtime_ns)]
    extra = [labels_digest] if labels_digest else []  # the keys of earlier caches stay valid
    if size is not None:  # resized pixels: short side and centre crop, JPEGs drafted
        extra.append("fit-2")
    text = json.dumps([str(source.resolve()), listing, size, on_corrupt, *extra])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand_path(path: str) -> str:
    """``~`` and ``${NAME}`` / ``${NAME:-default}`` expanded, so that configs (whose text defines a
    run) can point at data that lives in different places on different machines."""

    def substitute(match: re.Match) -> str:
        return os.environ.get(match.group(1)) or (match.group(3) or "")

    return os.path.expanduser(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", substitute, str(path)))


def _locate(root: Path, split: str) -> Path:
    if not root.exists():
        raise ValueError(
            f"dataset not found: {root} (put ImageFolder directories or "
            f"{split}.tar.gz there, or change the config's path)"
        )
    for candidate in (
        root / split,
        root / f"{split}.tar.gz",
        root / f"{split}.tgz",
        root / f"{split}.tar",
    ):
        if candidate.exists():
            return candidate
    raise ValueError(
        f"no {split} split under {root}: looked for {split}/ and {split}.tar.gz "
        "(ImageFolder layout: one folder per class)"
    )


def peek_classes(path: str, split: str) -> tuple[str, ...] | None:
    """The class names of a folder dataset's split, read from its layout alone (folder names,
    or the archive's member paths) without decoding an image; None where there is none."""
    root = Path(expand_path(path))
    try:
        source = _locate(root, split)
        if source.is_dir():
            return tuple(sorted(p.name for p in source.iterdir() if p.is_dir()))
        with tarfile.open(source) as archive:
            return tuple(sorted({m.name.removeprefix("./").split("/")[0]
                                 for m in archive if m.isfile() and "/" in m.name}))  # fmt: skip
    except (OSError, ValueError, tarfile.TarError):
        return None  # the load that follows says what is wrong, in its own words


def check_size(size: int | None) -> None:
    if size is not None and not (
        isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_SIZE
    ):
        raise ValueError(
            f"size must be a whole number of pixels from 1 to {MAX_SIZE}, got {size!r}"
        )


def load_folder(
    path: str,
    split: str,
    size: int | None = None,
    names_file: str | None = None,
    cache: str | None = None,
    on_corrupt: str = "fail",
) -> ImageDataset:
    """Load ``split`` of the ImageFolder data at ``path`` (resized to ``size`` if given).

    An image that cannot be decoded stops the load with its file name (``on_corrupt =
    "fail"``) or is left out and counted (``"skip"``).
    """
    check_size(size)
    root = Path(expand_path(path))
    source = _locate(root, split)
    display = None
    if names_file:
        words = json.loads(Path(names_file).read_text())
        display = words if isinstance(words, dict) else None
    return load_images(source, f"{root.name}-{split}", size, cache, on_corrupt, display=display)


def survey_folder(
    path: str,
    split: str,
    size: int | None = None,
    names_file: str | None = None,
    cache: str | None = None,
    on_corrupt: str = "fail",
) -> DatasetSurvey:
    """What :func:`load_folder` would load, counted without decoding."""
    check_size(size)
    root = Path(expand_path(path))
    return survey_images(_locate(root, split), f"{root.name}-{split}", size, cache, on_corrupt)


def load_images(
    source: Path,
    name: str,
    size: int | None,
    cache: str | None,
    on_corrupt: str,
    label_of: Callable[[str], str] | None = None,
    labels_digest: str = "",
    display: dict[str, str] | None = None,
) -> ImageDataset:
    """The images of a folder or archive through the cache (built when missing): labels from
    ``label_of`` (an image's path inside ``source`` to its class; default: its first folder),
    whose inputs ``labels_digest`` identifies; ``display`` maps class names to words."""
    stem = cache_stem(source, name, size, cache, on_corrupt, labels_digest)
    meta = cached_or_built(
        stem, lambda: build_cache(source, stem, size, on_corrupt, label_of or _class_of(source))
    )
    warn_skipped(str(source), meta)
    images = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    classes = tuple(meta["classes"])
    words = tuple(str(display.get(c, c)) for c in classes) if display is not None else None
    return ImageDataset(
        images,
        np.array(meta["labels"], dtype=np.int64),
        classes,
        np.array(meta["ids"]),
        words,
        fingerprint=meta["fingerprint"],
    )


def cache_stem(
    source: Path,
    name: str,
    size: int | None,
    cache: str | None,
    on_corrupt: str,
    labels_digest: str = "",
    names: list[str] | None = None,
) -> Path:
    """Where the cache of ``source``'s images (decoded at ``size``) is, or will be."""
    check_on_corrupt(on_corrupt)
    cache_dir = Path(cache) if cache else cache_folder()
    key = _cache_key(source, size, on_corrupt, labels_digest, names)
    return cache_dir / f"{name}-{key}"


def survey_images(
    source: Path,
    name: str,
    size: int | None,
    cache: str | None,
    on_corrupt: str,
    labels_digest: str = "",
) -> DatasetSurvey:
    """What :func:`load_images` would load, without decoding: the cache's own shape when it
    is built, else the images counted by name and sized by ``size`` or the first one's
    header (an upper bound where ``on_corrupt = "skip"`` would leave some out)."""
    names = list_members(source) if source.is_dir() else None  # one listing for key and count
    stem = cache_stem(source, name, size, cache, on_corrupt, labels_digest, names)
    if stem.with_suffix(".json").is_file():
        shape = npy_shape(stem.with_suffix(".npy"))
        if shape is not None:
            return DatasetSurvey(shape[0], (shape[1], shape[2]), decoded=True)
    names = list_members(source) if names is None else names  # an archive's index, read once
    if not names:
        raise ValueError(f"no images found in {source}")
    return DatasetSurvey(len(names), (size, size) if size else first_image_side(source, names[0]))


_CACHE_NAME = re.compile(r".+-[0-9a-f]{16}(\.partial)?\.json")


def cache_entries(folder: Path) -> list[tuple[Path, ...]]:
    """The (description, arrays...) files of each entry of ``folder`` that this tool wrote,
    finished or under construction (``.partial``): a user's own files beside them, whatever
    their names, are never counted or cleared."""
    entries = []
    for description in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        match = _CACHE_NAME.fullmatch(description.name)
        if not match:
            continue
        stem = description.name.removesuffix(".json")
        suffixes = (".npy", ".sha256.npy", ".labels.npy", ".compact.npy")
        suffixes = suffixes if match.group(1) else (".npy",)
        arrays = tuple(description.with_name(stem + suffix) for suffix in suffixes)
        lock = description.with_name(f".{stem.removesuffix('.partial')}.lock")  # its builders'
        arrays += (lock,) if lock.is_file() else ()
        try:
            with open_regular(description) as handle:
                meta = json.loads(handle.read())
        except (OSError, ValueError, RecursionError, CorruptFileError):
            continue
        # Entries of earlier versions carry no mark, but their own fields and name pattern.
        ours = isinstance(meta, dict) and (
            meta.get("written_by") == CACHE_MARK or {"npy_sha256", "fingerprint"} <= meta.keys()
        )
        if ours:
            entries.append((description, *arrays))
    return entries


def check_on_corrupt(on_corrupt: str) -> None:
    """A dataset table's ``on_corrupt``: "fail" or "skip"."""
    if on_corrupt not in ("fail", "skip"):
        raise ValueError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")


def warn_skipped(what: str, meta: dict) -> None:
    """Say what a cache built with ``on_corrupt = "skip"`` left out, on every load."""
    if meta["skipped"]:
        warnings.warn(
            f"{what}: left out {len(meta['skipped'])} corrupt image(s) "
            f"(first: {meta['skipped'][0]})",
            stacklevel=4,
        )


def cached_or_built(stem: Path, build: Callable[[], None]) -> dict:
    """The description of the cache entry ``stem``, built by ``build`` when it is missing or
    damaged. One builder at a time (two workers of one machine start on the same data): the
    second waits, then reads what the first built."""
    meta = _cached_meta(stem)
    if meta is None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(stem.with_name(f".{stem.name}.lock")):
            meta = _cached_meta(stem)
            if meta is None:
                build()
                meta = _cached_meta(stem)
    if meta is None:
        raise ValueError(f"the dataset cache {stem}.npy cannot be read back after writing it")
    return meta


def _cached_meta(stem: Path) -> dict | None:
    """The cache's description, if the cache is there and its arrays are what was written
    (checked against their SHA-256 on every load); else None, and it is built again."""
    try:
        with open_regular(stem.with_suffix(".json")) as handle:
            meta = json.loads(handle.read())
        if meta.get("npy_sha256") != file_sha256(stem.with_suffix(".npy")):
            return None
    except (OSError, ValueError, AttributeError, RecursionError, CorruptFileError):
        return None
    needed = {"classes", "labels", "ids", "fingerprint", "skipped"}
    return meta if needed <= meta.keys() else None  # an older layout is built again


def cache_folder() -> Path:
    """Where decoded datasets are cached: ``$TRANSFER_INFLUENCE_CACHE``, or
    ``~/.cache/transfer-influence``."""
    default = Path.home() / ".cache" / "transfer-influence"
    return Path(os.environ.get("TRANSFER_INFLUENCE_CACHE", default))


def _class_of(source: Path) -> Callable[[str], str]:
    def class_of(name: str) -> str:
        if "/" not in name:
            raise ValueError(f"{source}: images must sit in one folder per class ({name} does not)")
        return name.split("/")[0]

    return class_of
