"""Decoding a folder or archive of images into the cache, streamed, by every core.

The images are listed by name only; worker processes read (folders) or receive (archives,
read in one pass) batches of encoded images, decode and fit them to the requested size, and
write pixels and each file's SHA-256 straight into memory-mapped arrays of the cache under
construction. So peak memory is a few batches, whatever the dataset's size. A finished batch
is recorded in a progress file once the arrays are on disk, and a build that was killed (or a
machine that went down) resumes with what it finished.
The dataset's fingerprint is the same as when every file was read in one go: the SHA-256 of
each image's name and content digest, in name order.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_write_bytes, open_regular, read_json, remove_abandoned, replace_file
from .images import decode

__all__ = [
    "BATCH",
    "CACHE_MARK",
    "OrderedDigest",
    "build_cache",
    "compact_rows",
    "file_sha256",
    "image_names",
    "images_in",
    "member_name",
    "record_progress",
    "resume_progress",
    "watch_parent",
]

CACHE_MARK = "transfer-influence dataset cache"
BATCH = 1024  # images a worker decodes at a time
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_names(source: Path) -> list[str]:
    """The paths (relative, with "/") of the regular image files under a directory, sorted
    folder by folder. A FIFO, device or link to one named like an image is not a file:
    reading it would hang or never end. Links to folders are not followed. (One scan of each
    folder, whose entries say what they are: a million files are listed in seconds.)"""
    names: list[str] = []
    pending = [(str(source), "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif os.path.splitext(entry.name)[1].lower() in SUFFIXES and entry.is_file():
                    names.append(prefix + entry.name)
    return sorted(names, key=lambda name: name.split("/"))  # as paths sort: part by part


def member_name(source: Path, raw: str) -> str:
    """A member's path inside the archive (a leading ``./`` dropped); one that is absolute or
    steps out of its folder (``..``) is refused: its class would be a guess."""
    name = raw[2:] if raw.startswith("./") else raw
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or "" in parts or "." in parts:
        raise ValueError(
            f"{source}: member {raw!r} is not a plain path inside the archive; refusing it"
        )
    return name


def _archive_members(source: Path, archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The image members of an archive by name, each checked (one read of the index)."""
    items: dict[str, tarfile.TarInfo] = {}
    files: set[str] = set()
    for member in archive:
        if Path(member.name).suffix.lower() not in SUFFIXES:
            continue
        name = member_name(source, member.name)
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
    return items


def list_members(source: Path) -> list[str]:
    """Every image's name (its path relative to ``source`` or inside the archive), sorted."""
    if source.is_dir():
        return image_names(source)
    with tarfile.open(source) as archive:
        return sorted(_archive_members(source, archive))


def _batches(source: Path, names: list[str], done: set[int]) -> Iterator[tuple[int, list]]:
    """(batch number, [(image index, path or encoded image), ...]) of each batch not done
    yet. A folder's batches are runs of names whose files the workers read; an archive is read
    once, in its own order, in runs of members (so that memory never holds more than a batch
    whatever the archive's order)."""
    if source.is_dir():
        for number, start in enumerate(range(0, len(names), BATCH)):
            if number not in done:
                chunk = names[start : start + BATCH]
                yield number, [(start + i, f"{source}/{n}") for i, n in enumerate(chunk)]
        return
    index = {name: i for i, name in enumerate(names)}
    with tarfile.open(source) as archive:
        members = list(_archive_members(source, archive).items())  # in the archive's order
        for number, start in enumerate(range(0, len(members), BATCH)):
            if number in done:
                continue
            batch = []
            for name, member in members[start : start + BATCH]:
                handle = archive.extractfile(member)
                batch.append((index[name], handle.read() if handle else b""))
            yield number, batch


def _decode_batch(
    number: int, batch: list, pixels: str, digests: str, size: int | None
) -> tuple[int, list[int]]:
    """Decode one batch into the arrays under construction, written in place (the builder
    syncs them to disk before it records the batch, so no worker waits for the disk); the
    indices of images that could not be decoded."""
    from PIL import Image

    images = np.load(pixels, mmap_mode="r+", allow_pickle=False)
    sums = np.load(digests, mmap_mode="r+", allow_pickle=False)
    bad = []
    for i, item in batch:
        blob = item if isinstance(item, bytes) else _read(item)
        sums[i] = np.frombuffer(hashlib.sha256(blob).digest(), dtype=np.uint8)
        try:
            array = decode(blob, size)
        except (OSError, ValueError, Image.DecompressionBombError):
            bad.append(i)
            continue
        if array.shape != images.shape[1:]:
            return number, [-1 - i]  # another size than the first image: the caller says so
        images[i] = array
    return number, bad


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks: what a cache's arrays are checked against."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class OrderedDigest:
    """SHA-256s of the rows of an array file under construction, fed batch by batch in row
    order as batches finish (each read back from the page cache just after it was synced), so
    that the build leaves no serial pass over the whole cache for its end: on many cores that
    pass would cost as much as the decoding. Batch ``b`` holds rows ``b * batch`` on; ``file``
    is the SHA-256 of the whole file (header included); ``extra`` are other digests of the
    same row bytes, in order, started by the caller."""

    def __init__(self, path: Path, rows: int, batch: int, extra: tuple = ()) -> None:
        self.path, self.rows, self.batch, self.extra = path, rows, batch, extra
        self.batches = 0
        self.row_bytes = int(np.prod(np.load(path, mmap_mode="r", allow_pickle=False).shape[1:]))
        self.header = os.path.getsize(path) - rows * self.row_bytes
        self.file = hashlib.sha256()
        with open_regular(path) as handle:
            self.file.update(handle.read(self.header))

    def advance(self, done: set[int]) -> None:
        """Feed every finished batch that follows the ones fed so far."""
        with open_regular(self.path) as handle:
            while self.batches in done and self.batches * self.batch < self.rows:
                first = self.batches * self.batch
                rows = min(self.batch, self.rows - first)
                handle.seek(self.header + first * self.row_bytes)
                block = handle.read(rows * self.row_bytes)
                for digest in (self.file, *self.extra):
                    digest.update(block)
                self.batches += 1

    def file_sha256(self) -> str:
        """The whole file's SHA-256, once every batch was fed."""
        if self.batches * self.batch < self.rows:
            raise RuntimeError(f"{self.path}: digest taken before every batch was fed")
        return self.file.hexdigest()


def compact_rows(
    pixels: Path, keep: np.ndarray, feed: Callable[[bytes], object] | None = None
) -> None:
    """Keep only the rows ``keep`` of the array file ``pixels`` under construction (written
    beside it as ``*.compact.npy``, then moved over it); ``feed`` is given the kept rows'
    bytes, in order, block by block."""
    source = np.load(pixels, mmap_mode="r", allow_pickle=False)
    compact = pixels.with_name(f"{pixels.stem}.compact.npy")
    out = np.lib.format.open_memmap(compact, "w+", source.dtype, (keep.size, *source.shape[1:]))
    for start in range(0, keep.size, 4 * BATCH):
        block = np.ascontiguousarray(source[keep[start : start + 4 * BATCH]])
        out[start : start + len(block)] = block
        if feed is not None:
            feed(block.tobytes())
    out.flush()
    del out, source
    replace_file(compact, pixels)


def _read(path: str) -> bytes:
    with open_regular(Path(path)) as handle:
        return handle.read()


def _first_shape(source: Path, names: list[str], size: int | None) -> tuple[int, ...]:
    """The shape every image must have: ``size`` square, or the first decodable image's."""
    if size is not None:
        return (size, size, 3)
    from PIL import Image

    for _, batch in _batches(source, names, set()):
        for _, item in batch:
            try:
                return decode(item if isinstance(item, bytes) else _read(item), None).shape
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
    raise ValueError(f"{source}: no image could be decoded")


def build_cache(
    source: Path,
    stem: Path,
    size: int | None,
    on_corrupt: str,
    label_of: Callable[[str], str],
    workers: int | None = None,
) -> None:
    """Decode every image of ``source`` into ``stem``.npy and describe it in ``stem``.json
    (classes, labels, ids, fingerprint); ``label_of`` names each image's class."""
    names = list_members(source)
    if not names:
        raise ValueError(f"no images found in {source}")
    labels_by_name = [label_of(name) for name in names]
    # Under construction beside the cache, under names no cache entry has (.partial.*).
    pixels, digests, progress_path = (
        stem.with_name(f"{stem.name}.partial{suffix}")
        for suffix in (".npy", ".sha256.npy", ".json")
    )
    remove_abandoned(stem.parent)  # what killed builders left half-written
    arrays = (pixels, digests)
    done, bad = resume_progress(progress_path, arrays, len(names))
    if not done:
        shape = _first_shape(source, names, size)
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(pixels, "w+", np.uint8, (len(names), *shape)).flush()
        np.lib.format.open_memmap(digests, "w+", np.uint8, (len(names), 32)).flush()
        record_progress(progress_path, arrays, done, bad, len(names))
    digest = OrderedDigest(pixels, len(names), BATCH)
    before = images_in(done, len(names), BATCH)
    print(
        f"decoding {len(names):,} images of {source} once, into {stem.parent} "
        f"({before:,} done before; `transfer-influence cache` "
        "shows and clears it)",
        file=sys.stderr,
    )
    workers = workers or os.cpu_count() or 1

    def record(finished: set[Future]) -> None:
        _record(finished, done, bad, progress_path, arrays, source, names, bar)
        digest.advance(done)

    bar = tqdm(total=len(names), initial=before, unit="image",
               desc="decoding", disable=not sys.stderr.isatty(), leave=False)  # fmt: skip
    try:
        with ProcessPoolExecutor(
            workers, initializer=watch_parent, initargs=(os.getpid(),)
        ) as pool:
            calls = ((_decode_batch, number, batch, str(pixels), str(digests), size)
                     for number, batch in _batches(source, names, done))  # fmt: skip
            submit_bounded(pool, calls, workers, record)
    except BrokenProcessPool:
        raise MemoryError(f"decoding {source} killed a worker process") from None
    finally:
        bar.close()
    if bad and on_corrupt == "fail":
        raise ValueError(
            f"{source}: {len(bad)} corrupt image(s), first {names[min(bad)]}; fix or remove "
            'them, or set on_corrupt = "skip" in the dataset\'s table'
        )
    _finish(stem, digest, digests, progress_path, names, labels_by_name, sorted(bad))


def watch_parent(parent: int) -> None:
    """A decoding worker's initializer: exit as soon as the builder ``parent`` is gone. A
    builder killed outright (SIGKILL, the kernel's out-of-memory killer) would otherwise leave
    its workers waiting for work forever, holding what they inherited open: the cache's lock
    among them, which the next build would wait on."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def submit_bounded(
    pool: ProcessPoolExecutor,
    calls: Iterable[tuple],
    workers: int,
    record: Callable[[set[Future]], None],
) -> None:
    """Run ``calls`` ((function, *arguments), ...) in ``pool`` with at most two per worker in
    flight, so that memory holds a few batches whatever the dataset's size; each set of
    finished futures goes to ``record``."""
    running: set[Future] = set()
    for function, *arguments in calls:
        running.add(pool.submit(function, *arguments))
        if len(running) >= 2 * workers:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            record(finished)
    record(wait(running)[0])


def _record(finished, done, bad, progress_path, arrays, source, names, bar) -> None:
    n = len(names)
    for future in finished:
        number, failed = future.result()
        if failed and failed[0] < 0:
            raise ValueError(
                f"{source}: images have different sizes ({names[-1 - failed[0]]} differs from "
                "the first); set size = N in the dataset's table to resize them"
            )
        done.add(number)
        bad.update(failed)
        bar.update(min(BATCH, n - number * BATCH))
        # One record a batch, however many finished at once: a build writes the same records
        # whatever the timing (its crash points are the same on every run).
        record_progress(progress_path, arrays, done, bad, n)


def images_in(batches: set[int], n: int, batch: int) -> int:
    """How many of a build's ``n`` images its ``batches`` of ``batch`` hold (the last may be
    short)."""
    return sum(min(batch, n - b * batch) for b in batches)


def record_progress(
    path: Path, arrays: tuple[Path, ...], done: set[int], bad: set[int], n: int
) -> None:
    """Record the batches ``done`` (and the images ``bad``) of a build of ``n`` images into
    ``arrays``, after syncing those arrays to disk: a record never names a batch that a crash
    of the machine could still take back. (The workers' writes into their memory maps are in
    the page cache, which the sync writes out, while the workers go on decoding.)"""
    for array in arrays:
        fd = os.open(array, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    record = {"written_by": CACHE_MARK, "images": n, "done": sorted(done), "bad": sorted(bad)}
    atomic_write_bytes(path, json.dumps(record).encode())


def resume_progress(path: Path, arrays: tuple[Path, ...], n: int) -> tuple[set[int], set[int]]:
    """The batches (and bad images) a killed build recorded, if its arrays are still there
    and hold ``n`` rows; nothing otherwise."""
    try:
        record = read_json(path)
        for array in arrays:
            if np.load(array, mmap_mode="r", allow_pickle=False).shape[0] != n:
                return set(), set()
        if record.get("written_by") != CACHE_MARK or record.get("images") != n:
            return set(), set()
        return {int(s) for s in record["done"]}, {int(i) for i in record["bad"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set(), set()


def _finish(stem, digest, digests, progress_path, names, labels_by_name, bad) -> None:
    """Drop undecodable images and move the cache into place."""
    pixels = digest.path
    sums = np.load(digests, mmap_mode="r", allow_pickle=False)
    keep = np.setdiff1d(np.arange(len(names)), np.array(bad, dtype=np.int64))
    if bad:
        compact_rows(pixels, keep)
    fingerprint = hashlib.sha256()
    for i in keep:
        fingerprint.update(names[i].encode())
        fingerprint.update(sums[i].tobytes())
    classes = sorted(set(labels_by_name))
    index = {c: k for k, c in enumerate(classes)}
    meta = {
        "written_by": CACHE_MARK,
        # Compacting rewrote the file: only then is it read again whole.
        "npy_sha256": file_sha256(pixels) if bad else digest.file_sha256(),
        "classes": classes,
        "labels": [index[labels_by_name[i]] for i in keep],
        "ids": [names[i] for i in keep],
        "fingerprint": fingerprint.hexdigest()[:16],
        "skipped": [names[i] for i in bad],
    }
    # The description first: killed between the two, the arrays are still under construction
    # (and complete), so the next build only moves them into place.
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode())
    replace_file(pixels, stem.with_suffix(".npy"))
    for leftover in (digests, progress_path):
        leftover.unlink(missing_ok=True)
