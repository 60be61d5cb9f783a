"""Datasets read an image at a time by index (torchvision's classes), decoded by every core
into the same cache as folders: each worker process opens the dataset once and fits batches
of its images into the memory-mapped arrays under construction; a finished batch is recorded,
and a build that was killed resumes with what it finished."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..files import atomic_write_bytes, remove_abandoned, replace_file
from .base import fingerprint_header, fingerprint_update
from .cache import (
    BATCH,
    CACHE_MARK,
    OrderedDigest,
    compact_rows,
    file_sha256,
    images_in,
    record_progress,
    resume_progress,
    submit_bounded,
    watch_parent,
)
from .images import to_rgb_array

__all__ = ["build_indexed_cache"]

_dataset: Any = None  # a worker's own copy of the dataset, opened once


def _open(opener: Callable[[], Any], parent: int) -> None:
    global _dataset
    watch_parent(parent)
    _dataset = opener()


def _decode_rows(
    number: int,
    rows: list[tuple[int, int]],
    arrays: tuple[str, str],
    size: int | None,
    skip: bool,
) -> tuple[int, int, list[int]]:
    """Fit the images of ``rows`` ((row in the cache, index in the dataset), ...) into the
    arrays (pixels, labels), which the builder syncs to disk before recording the batch: the
    batch, the first row of another size than the first image's (-1 when none was), and the
    rows that could not be read (``skip``; else the first stops the build)."""
    pixels, labels = (np.load(a, mmap_mode="r+", allow_pickle=False) for a in arrays)
    bad = []
    for row, index in rows:
        try:
            image, label = _dataset[index]
            array = to_rgb_array(image, size)
        except (OSError, ValueError) as error:
            if skip:
                bad.append(row)
                continue
            raise ValueError(
                f'image {index} cannot be read ({error}); set on_corrupt = "skip" in the '
                "dataset's table to leave such images out"
            ) from None
        if array.shape != pixels.shape[1:]:
            return number, row, bad
        pixels[row] = array
        labels[row] = int(label)
    return number, -1, bad


def _first_shape(data: Any, indices: np.ndarray, size: int | None, what: str) -> tuple:
    """The shape of the first image that can be read (every one must have it)."""
    for index in indices:
        try:
            return to_rgb_array(data[int(index)][0], size).shape
        except (OSError, ValueError):
            continue
    raise ValueError(f"{what}: no image could be read")


def build_indexed_cache(
    stem: Path,
    what: str,
    data: Any,
    opener: Callable[[], Any],
    indices: np.ndarray,
    ids: Sequence[str],
    classes: Sequence[str] | None,
    size: int | None,
    on_corrupt: str = "fail",
    workers: int | None = None,
) -> None:
    """Decode images ``indices`` of ``data`` (``what``, for messages; ``opener`` opens it
    again in each worker process) into ``stem``.npy, described in ``stem``.json with ``ids``,
    the labels and ``classes`` (by default "class0", "class1", ... to the largest label)."""
    n = len(indices)
    if not n:
        raise ValueError(f"{what}: no images")
    pixels, labels, progress_path = (
        stem.with_name(f"{stem.name}.partial{suffix}")
        for suffix in (".npy", ".labels.npy", ".json")
    )
    remove_abandoned(stem.parent)  # what killed builders left half-written
    arrays = (pixels, labels)
    done, bad = resume_progress(progress_path, arrays, n)
    if not done:
        shape = _first_shape(data, indices, size, what)
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(pixels, "w+", np.uint8, (n, *shape)).flush()
        np.lib.format.open_memmap(labels, "w+", np.int64, (n,)).flush()
        record_progress(progress_path, arrays, done, bad, n)
    # The fingerprint an ImageDataset of these arrays computes for itself starts so.
    images = np.load(pixels, mmap_mode="r", allow_pickle=False)
    started = hashlib.sha256(fingerprint_header(images.dtype, images.shape))
    del images
    digest = OrderedDigest(pixels, n, BATCH, (started,))
    before = images_in(done, n, BATCH)
    print(
        f"decoding {n:,} images of {what} once, into {stem.parent} ({before:,} done before; "
        "`transfer-influence cache` shows and clears it)",
        file=sys.stderr,
    )
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=n, initial=before, unit="image", desc="decoding",
               disable=not sys.stderr.isatty(), leave=False)  # fmt: skip
    names = (str(pixels), str(labels))

    def record(finished: set[Future]) -> None:
        for future in finished:
            number, other, failed = future.result()
            if other >= 0:
                raise ValueError(
                    f"{what}: images have different sizes (image {indices[other]} differs "
                    "from the first); set size = N in the dataset's table"
                )
            done.add(number)
            bad.update(failed)
            bar.update(min(BATCH, n - number * BATCH))
            record_progress(progress_path, arrays, done, bad, n)  # one record a batch
        digest.advance(done)

    try:
        with ProcessPoolExecutor(
            workers, initializer=_open, initargs=(opener, os.getpid())
        ) as pool:
            calls = ((_decode_rows, number, rows, names, size, on_corrupt == "skip")
                     for number, rows in _row_batches(indices, done))  # fmt: skip
            submit_bounded(pool, calls, workers, record)
    except BrokenProcessPool:
        raise MemoryError(f"decoding {what} killed a worker process") from None
    finally:
        bar.close()
    _finish(stem, digest, labels, progress_path, ids, classes, sorted(bad))


def _row_batches(indices: np.ndarray, done: set[int]) -> Iterator[tuple[int, list]]:
    """(batch number, [(row in the cache, index in the dataset), ...]) of each batch not done."""
    for number, start in enumerate(range(0, len(indices), BATCH)):
        if number not in done:
            chunk = indices[start : start + BATCH].tolist()
            yield number, [(start + i, index) for i, index in enumerate(chunk)]


def _finish(
    stem: Path,
    digest: OrderedDigest,
    labels: Path,
    progress: Path,
    ids: Sequence[str],
    classes: Sequence[str] | None,
    bad: list[int],
) -> None:
    """Drop the images that could not be read, fingerprint the arrays and move the cache into
    place. The fingerprint is the one an ``ImageDataset`` of these arrays computes for itself:
    the same images give the same fingerprint, cached or not."""
    label_array = np.load(labels, allow_pickle=False)
    keep = np.setdiff1d(np.arange(len(ids)), np.array(bad, dtype=np.int64))
    if bad:  # compacted, then read again whole: the running digests describe the old rows
        images = np.load(digest.path, mmap_mode="r", allow_pickle=False)
        shape = (keep.size, *images.shape[1:])
        fingerprint = hashlib.sha256(fingerprint_header(images.dtype, shape))
        del images
        compact_rows(digest.path, keep, fingerprint.update)
        npy_sha256 = file_sha256(digest.path)
    else:
        fingerprint, npy_sha256 = digest.extra[0], digest.file_sha256()
    label_array, kept_ids = label_array[keep], [ids[i] for i in keep]
    for array in (label_array, np.array(kept_ids)):
        fingerprint_update(fingerprint, array)
    label_list = label_array.tolist()
    classes = list(classes or [f"class{c}" for c in range(max(label_list) + 1)])
    meta = {
        "written_by": CACHE_MARK,
        "npy_sha256": npy_sha256,
        "classes": [str(c) for c in classes],
        "labels": label_list,
        "ids": kept_ids,
        "fingerprint": fingerprint.hexdigest()[:16],
        "skipped": [ids[i] for i in bad],
    }
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode())  # as for folders
    replace_file(digest.path, stem.with_suffix(".npy"))
    labels.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
