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
import io
import json
import os
import re
import sys
import tarfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ..files import CorruptFileError, atomic_write_bytes, open_regular
from .base import ImageDataset
from .images import fit_square

__all__ = ["cache_entries", "cache_folder", "load_folder"]

MAX_SIZE = 1024  # pixels a side: 50,000 images at 1024 x 1024 are already 150 GB

_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _decode(blobs: list[bytes], size: int | None) -> tuple[list[np.ndarray], list[int]]:
    """Decoded images, and the positions of those that could not be decoded."""
    from PIL import Image

    out, bad = [], []
    for i, blob in enumerate(blobs):
        try:
            image = Image.open(io.BytesIO(blob))
            image.load()
            image = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(i)
            continue
        out.append(np.asarray(fit_square(image, size), dtype=np.uint8))
    return out, bad


def _image_files(source: Path) -> list[Path]:
    """The regular image files under a directory, sorted. A FIFO, device or link to one
    named like an image is not a file: reading it would hang or never end."""
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())


def _members(source: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every image, sorted by path."""
    if source.is_dir():
        return [(p.relative_to(source).as_posix(), p.read_bytes()) for p in _image_files(source)]
    with tarfile.open(source) as archive:
        items: dict[str, tarfile.TarInfo] = {}
        files: set[str] = set()
        for member in archive.getmembers():
            if Path(member.name).suffix.lower() not in _SUFFIXES:
                continue
            name = _member_name(source, member.name)
            if member.issym():
                raise ValueError(
                    f"{source}: member {member.name!r} is a symbolic link; an archive of "
                    "images must hold the images themselves"
                )
            if not (member.isfile() or member.islnk()):
                continue
            if name in items:
                raise ValueError(f"{source}: the archive holds {name} twice")
            items[name] = member
            if member.isfile():
                files.add(member.name)
        for member in items.values():
            if member.islnk() and member.linkname not in files:
                raise ValueError(
                    f"{source}: member {member.name!r} links to {member.linkname!r}, which is "
                    "not an image of the archive"
                )
        return [(name, archive.extractfile(items[name]).read()) for name in sorted(items)]


def _member_name(source: Path, raw: str) -> str:
    """A member's path inside the archive (a leading ``./`` dropped); one that is absolute or
    steps out of its folder (``..``) is refused: its class would be a guess."""
    name = raw[2:] if raw.startswith("./") else raw
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts or "." in parts:
        raise ValueError(
            f"{source}: member {raw!r} is not a plain path inside the archive; refusing it"
        )
    return name


def _cache_key(source: Path, size: int | None, on_corrupt: str) -> str:
    """What the cache is keyed by: every image file's path, size and modification time (a
    directory), or the archive's; so any edit, addition or move is a new cache."""
    if source.is_dir():
        listing = [
            (p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in _image_files(source)
        ]
    else:
        stat = source.stat()
        listing = [(source.name, stat.st_size, stat.st_mtime_ns)]
    text = json.dumps([str(source.resolve()), listing, size, on_corrupt])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_path(path: str) -> str:
    """``~`` and ``${NAME}`` / ``${NAME:-default}`` expanded, so that configs (whose text defines a
    run) can point at data that lives in different places on different machines."""

    def substitute(match: re.Match) -> str:
        return os.environ.get(match.group(1)) or (match.group(3) or "")

    return os.path.expanduser(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", substitute, str(path)))


def _locate(root: Path, split: str) -> Path:
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
    if on_corrupt not in ("fail", "skip"):
        raise ValueError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    if size is not None and not (
        isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_SIZE
    ):
        raise ValueError(
            f"size must be a whole number of pixels from 1 to {MAX_SIZE}, got {size!r}"
        )
    root = Path(expand_path(path))
    if not root.exists():
        raise ValueError(
            f"dataset not found: {root} (put ImageFolder directories or "
            f"{split}.tar.gz there, or change the config's path)"
        )
    source = _locate(root, split)
    cache_dir = Path(cache) if cache else cache_folder()
    stem = cache_dir / f"{root.name}-{split}-{_cache_key(source, size, on_corrupt)}"
    meta = _cached_meta(stem)
    if meta is None:
        _build_cache(source, stem, size, on_corrupt)
        meta = _cached_meta(stem)
        if meta is None:
            raise ValueError(f"the dataset cache {stem}.npy cannot be read back after writing it")
    if meta["skipped"]:
        warnings.warn(
            f"{source}: left out {len(meta['skipped'])} corrupt image(s) "
            f"(first: {meta['skipped'][0]})",
            stacklevel=2,
        )
    images = np.load(stem.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    classes = tuple(meta["classes"])
    display = None
    if names_file:
        words = json.loads(Path(names_file).read_text())
        display = tuple(str(words.get(c, c)) for c in classes) if isinstance(words, dict) else None
    return ImageDataset(
        images,
        np.array(meta["labels"], dtype=np.int64),
        classes,
        np.array(meta["ids"]),
        display,
        fingerprint=meta["fingerprint"],
    )


_CACHE_MARK = "transfer-influence dataset cache"
_CACHE_NAME = re.compile(r".+-[0-9a-f]{16}\.json")


def cache_entries(folder: Path) -> list[tuple[Path, Path]]:
    """The (description, arrays) file pairs of ``folder`` that this tool wrote: a user's own
    files beside them, whatever their names, are never counted or cleared."""
    entries = []
    for description in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        arrays = description.with_suffix(".npy")
        if not _CACHE_NAME.fullmatch(description.name):
            continue
        try:
            with open_regular(description) as handle:
                meta = json.loads(handle.read())
        except (OSError, ValueError, RecursionError, CorruptFileError):
            continue
        # Entries of earlier versions carry no mark, but their own fields and name pattern.
        ours = isinstance(meta, dict) and (
            meta.get("written_by") == _CACHE_MARK or {"npy_sha256", "fingerprint"} <= meta.keys()
        )
        if ours:
            entries.append((description, arrays))
    return entries


def _cached_meta(stem: Path) -> dict | None:
    """The cache's description, if the cache is there and its arrays are what was written
    (checked against their SHA-256 on every load); else None, and it is built again."""
    try:
        with open_regular(stem.with_suffix(".json")) as handle:
            meta = json.loads(handle.read())
        if meta.get("npy_sha256") != _file_sha256(stem.with_suffix(".npy")):
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


def _build_cache(source: Path, stem: Path, size: int | None, on_corrupt: str) -> None:
    members = _members(source)
    if not members:
        raise ValueError(f"no images found in {source}")
    print(
        f"decoding {len(members):,} images of {source} once, into {stem.parent} "
        "(`transfer-influence cache` shows and clears it)",
        file=sys.stderr,
    )
    classes = sorted({name.split("/")[0] for name, _ in members})
    if any("/" not in name for name, _ in members):
        raise ValueError(f"{source}: images must sit in one folder per class")
    index = {c: i for i, c in enumerate(classes)}
    blobs = [blob for _, blob in members]
    chunks = [blobs[i : i + 2048] for i in range(0, len(blobs), 2048)]
    try:
        with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
            decoded = list(pool.map(_decode, chunks, [size] * len(chunks)))
    except BrokenProcessPool:
        raise MemoryError(f"decoding {source} killed a worker process") from None
    bad = {
        start + i
        for start, (_, b) in zip(range(0, len(blobs), 2048), decoded, strict=True)
        for i in b
    }
    if bad and on_corrupt == "fail":
        first = members[min(bad)][0]
        raise ValueError(
            f"{source}: {len(bad)} corrupt image(s), first {first}; fix or remove "
            'them, or set on_corrupt = "skip" in the dataset\'s table'
        )
    arrays = [image for images, _ in decoded for image in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"{source}: images have different sizes ({sorted(shapes)[:3]}); set "
            "size = N in the dataset's table to resize them"
        )
    images = np.stack(arrays)
    skipped = [members[i][0] for i in sorted(bad)]
    members = [member for i, member in enumerate(members) if i not in bad]
    digest = hashlib.sha256()
    for name, blob in members:
        digest.update(name.encode())
        digest.update(hashlib.sha256(blob).digest())
    stem.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, images)
    atomic_write_bytes(stem.with_suffix(".npy"), buffer.getvalue())
    meta = {
        "written_by": _CACHE_MARK,
        "npy_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "classes": classes,
        "labels": [index[n.split("/")[0]] for n, _ in members],
        "ids": [n for n, _ in members],
        "fingerprint": digest.hexdigest()[:16],
        "skipped": skipped,
    }
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode())
