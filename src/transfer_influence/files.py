"""Atomic, checksummed files: nothing half-written is ever read as valid.

Every write goes to a temporary file in the destination folder, is fsynced, then renamed over
the destination (atomic on POSIX), and the folder is fsynced. Arrays are stored as ``.npz``
with a SHA-256 over their names, dtypes, shapes and bytes; a file whose checksum does not
match is reported corrupt, never returned.

For crash tests, ``TRANSFER_INFLUENCE_CRASH_AT=<point>:<n>`` makes the process SIGKILL itself
at the n-th time it reaches ``point`` (write, fsync or rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CorruptFileError",
    "arrays_digest",
    "atomic_write_bytes",
    "csv_text",
    "json_bytes",
    "read_arrays",
    "read_json",
    "write_arrays",
    "write_files",
    "write_json",
]

_CHECKSUM_KEY = "_sha256"
_crash_counts: dict[str, int] = {}


class CorruptFileError(Exception):
    """A stored file is truncated, unreadable or fails its checksum."""


def _maybe_crash(point: str) -> None:
    spec = os.environ.get("TRANSFER_INFLUENCE_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    write_files(Path(path).parent, {Path(path).name: data})


def write_files(folder: Path, contents: dict[str, bytes]) -> None:
    """Replace several files of ``folder`` as one: every new file is written and fsynced under a
    temporary name before the first is renamed into place, so a full disk or a crash while
    writing leaves all the old files, never some old beside some new."""
    folder = Path(folder)
    temps: dict[Path, Path] = {}
    try:
        for name, data in contents.items():
            temps[folder / name] = tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as handle:
                half = len(data) // 2
                handle.write(data[:half])
                handle.flush()
                _maybe_crash("write")
                handle.write(data[half:])
                handle.flush()
                _maybe_crash("fsync")
                os.fsync(handle.fileno())
        for path, tmp in temps.items():
            _maybe_crash("rename")
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every array."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Store named arrays atomically with an embedded checksum (no pickled objects)."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which would need pickling")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_CHECKSUM_KEY: np.array(arrays_digest(arrays))})
    atomic_write_bytes(path, buffer.getvalue())


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load arrays written by :func:`write_arrays`, verifying the checksum."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CorruptFileError(f"{path}: unreadable ({error})") from None
    stored = arrays.pop(_CHECKSUM_KEY, None)
    if stored is None or str(stored) != arrays_digest(arrays):
        raise CorruptFileError(f"{path}: checksum mismatch")
    return arrays


def json_bytes(data: Any) -> bytes:
    """How every JSON file of the tool is written: indented, keys sorted."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json_bytes(data))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise CorruptFileError(f"{path}: unreadable JSON ({error})") from None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(table: Any) -> str:
    """A DataFrame as CSV text that a spreadsheet opens as data: a text cell that starts like
    a formula (=, +, -, @, tab, return: a class name from a user's folder, say) is prefixed
    with a single quote, so it is never evaluated. Numbers are left as they are."""

    def neutral(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value

    import pandas as pd

    table = table.copy()
    for column in table.columns:
        if not pd.api.types.is_numeric_dtype(table[column]):
            table[column] = table[column].map(neutral)
    return table.to_csv(index=False)
