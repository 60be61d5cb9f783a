"""Atomic, checksummed files: nothing half-written is ever read as valid.

Every write goes to a temporary file in the destination folder, is fsynced, then renamed over
the destination (atomic on POSIX), and the folder is fsynced. Arrays are stored as ``.npz``
with a SHA-256 over their names, dtypes, shapes and bytes; a file whose checksum does not
match is reported corrupt, never returned.

A set of files that belong together (an estimate, a report) is written as a folder: built under
a temporary name, then swapped in whole (:func:`write_folder`), so a reader never sees the
files of one set beside another's. Temporary names carry their writer's host and pid, so the
next command removes what a killed writer left (:func:`remove_abandoned`).

Only regular files are read: a FIFO or device under a run directory named like one of its
files is reported as damage, never opened for a blocking read.

For crash tests, ``TRANSFER_INFLUENCE_CRASH_AT=<point>:<n>`` makes the process SIGKILL itself
at the n-th time it reaches ``point`` (write, fsync or rename), and
``TRANSFER_INFLUENCE_CRASH_COUNT=FILE`` appends every point reached to FILE (how a test learns
every crash point a command has).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "CorruptFileError",
    "arrays_bytes",
    "arrays_digest",
    "atomic_write_bytes",
    "csv_text",
    "exclusive_lock",
    "json_bytes",
    "open_regular",
    "read_arrays",
    "read_json",
    "remove_abandoned",
    "replace_file",
    "settle_folder",
    "write_arrays",
    "write_files",
    "write_folder",
    "write_json",
]

_CHECKSUM_KEY = "_sha256"
_crash_counts: dict[str, int] = {}


class CorruptFileError(Exception):
    """A stored file is truncated, unreadable or fails its checksum."""


def _maybe_crash(point: str) -> None:
    counting = os.environ.get("TRANSFER_INFLUENCE_CRASH_COUNT")
    if counting:
        with open(counting, "a") as handle:
            handle.write(point + "\n")
    spec = os.environ.get("TRANSFER_INFLUENCE_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
MAX_TEMPORARY_AGE_S = 3600.0


def temporary_name(name: str, suffix: str = "tmp") -> str:
    """A hidden name beside ``name`` that says who is writing it (host and pid): the next
    command removes it once that writer is gone."""
    return f".{name}.{uuid.uuid4().hex[:12]}.{os.getpid()}.{_HOST}.{suffix}"


def _writer_gone(path: Path, max_age_s: float) -> bool:
    """Whether the writer of a temporary (named by :func:`temporary_name`) is gone: its pid
    is dead on this host, or the file has been untouched for ``max_age_s``."""
    parts = path.name.rsplit(".", 4)
    if len(parts) == 5 and parts[3] == _HOST and parts[2].isdigit():
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    try:
        return time.time() - path.lstat().st_mtime > max_age_s
    except FileNotFoundError:
        return False


def remove_abandoned(folder: Path, max_age_s: float = MAX_TEMPORARY_AGE_S) -> int:
    """Remove the temporary files and folders that dead writers left in ``folder``; returns
    how many. A live writer's temporaries stay."""
    removed = 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in Path(folder).glob(".*.tmp"):
            if path.is_dir() and not path.is_symlink():
                continue  # a set being built: settle_folder's, under the set's lock
            if _writer_gone(path, max_age_s):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file; a FIFO, device or socket named
    like a file is damage (opening it for a read could block forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptFileError(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
            temps[folder / name] = tmp = folder / temporary_name(name)
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


def replace_file(source: Path, destination: Path) -> None:
    """Move a finished file (written and synced by its writer) over ``destination``, for good:
    the folder is synced after the rename."""
    _maybe_crash("rename")
    os.replace(source, destination)
    _fsync_dir(Path(destination).parent)


_MARK = ".transfer-influence"


def write_folder(folder: Path, contents: dict[str, bytes]) -> None:
    """Replace ``folder`` by one holding exactly ``contents`` (relative paths: bytes), as one
    set: readers see the old set or the new, never files of both.

    The new set is built and fsynced under a temporary name, marked ready with one rename, then
    swapped in; :func:`settle_folder` (which every reader and writer calls) finishes a swap a
    crash interrupted. A folder that is not empty, was not written here and is not a run
    directory's own (``RUN/influence``) is refused rather than replaced, so a user's folder
    given as ``--out`` is never deleted.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        _settle(folder)
        if not _replaceable(folder):
            raise OSError(
                f"{folder} holds files this tool did not write; choose an empty or new folder"
            )
        building = folder.parent / temporary_name(folder.name)
        try:
            for name, data in {**contents, _MARK: b"written by transfer-influence\n"}.items():
                path = building / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as handle:
                    handle.write(data)
                    _maybe_crash("write")
                    os.fsync(handle.fileno())
            for sub in sorted({(building / n).parent for n in contents}, reverse=True):
                _fsync_dir(sub)
            ready = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.ready"
            _maybe_crash("rename")
            os.rename(building, ready)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        _fsync_dir(folder.parent)
        _settle(folder)


def _replaceable(folder: Path) -> bool:
    if not folder.is_dir() or (folder / _MARK).exists() or (folder.parent / "run.json").is_file():
        return True
    return not any(folder.iterdir())


def settle_folder(folder: Path) -> None:
    """Finish what a writer of :func:`write_folder` left when it was killed: a set that was
    complete takes its place, half-built sets and swapped-out old ones are removed."""
    folder = Path(folder)
    pending = (
        path
        for suffix in ("ready", "old", "tmp")
        for path in folder.parent.glob(f".{glob.escape(folder.name)}.*.{suffix}")
    )
    if not folder.parent.is_dir() or next(pending, None) is None:
        return  # the common case: nothing to settle, and no lock taken
    with _folder_lock(folder):
        _settle(folder)


@contextlib.contextmanager
def exclusive_lock(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (created if absent). The kernel drops the
    lock when the holder dies, so a killed holder never blocks the next, provided no child it
    forked while holding it outlives it (the descriptor is shared with the child)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{lock} is not a regular file; remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _folder_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One writer (or settler) of ``folder`` at a time."""
    return exclusive_lock(folder.parent / f".{folder.name}.lock")


def _settle(folder: Path) -> None:
    """Under the folder's lock: no writer is midway, so every temporary is abandoned."""
    prefix = f".{glob.escape(folder.name)}."
    ready = sorted(folder.parent.glob(prefix + "*.ready"), key=lambda p: p.stat().st_mtime)
    if ready:
        newest = ready.pop()
        if folder.exists():
            retired = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}.old"
            _maybe_crash("rename")
            os.rename(folder, retired)
        _maybe_crash("rename")
        os.rename(newest, folder)
        _fsync_dir(folder.parent)
    for leftover in (
        *ready,
        *folder.parent.glob(prefix + "*.old"),
        *(p for p in folder.parent.glob(prefix + "*.tmp") if p.is_dir()),
    ):
        shutil.rmtree(leftover, ignore_errors=True)


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


def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of an ``.npz`` with an embedded checksum (no pickled
    objects), as :func:`read_arrays` reads them."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which would need pickling")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_CHECKSUM_KEY: np.array(arrays_digest(arrays))})
    return buffer.getvalue()


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Store named arrays atomically with an embedded checksum (no pickled objects)."""
    atomic_write_bytes(path, arrays_bytes(arrays))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load arrays written by :func:`write_arrays`, verifying the checksum."""
    try:
        with open_regular(path) as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (FileNotFoundError, CorruptFileError):
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, MemoryError) as error:
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
        with open_regular(path) as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, CorruptFileError):
        raise
    except (OSError, ValueError) as error:
        raise CorruptFileError(f"{path}: unreadable JSON ({error})") from None
    except RecursionError:
        raise CorruptFileError(f"{path}: JSON nested too deeply to be the tool's") from None


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(table: Any) -> str:
    """A DataFrame as CSV text that a spreadsheet opens as data: a text cell or header that
    starts like a formula (=, +, -, @, tab, return: a class name from a user's folder, say)
    is prefixed with a single quote, so it is never evaluated. Numbers are left as they are."""

    def neutral(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value

    import pandas as pd

    table = table.copy()
    for column in table.columns:
        if not pd.api.types.is_numeric_dtype(table[column]):
            table[column] = table[column].map(neutral)
    table.columns = [neutral(str(column)) for column in table.columns]
    return table.to_csv(index=False)
