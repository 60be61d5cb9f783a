"""Chunk claims: which worker is training which chunk, held with an exclusive file create.

A claim is a small file linked into place (link() fails if it exists), so of two racing
workers exactly one wins.
Its holder touches it while it works (a heartbeat). A claim is stale when its holder died on
this host (its pid is gone) or it has not been touched for ``timeout_s``; a stale claim is
broken by renaming it away, which also only one worker can do. Claims only save duplicate
work: chunk files are written atomically under a name fixed by the chunk, so even two workers
training the same chunk can never corrupt or double it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from ..files import CorruptFileError, open_regular, temporary_name

__all__ = ["Claim", "claim_state", "try_claim"]

HOST = socket.gethostname()


class Claim:
    """A held claim; use as a context manager to heartbeat while working and release after."""

    def __init__(self, path: Path, heartbeat_s: float) -> None:
        self.path = path
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return  # broken as stale by someone else; our atomic write is still safe

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_state(path: Path, timeout_s: float) -> str:
    """'free', 'held' or 'stale'."""
    try:
        age = time.time() - path.stat().st_mtime
        with open_regular(path) as handle:
            owner = json.loads(handle.read())
    except FileNotFoundError:
        return "free"
    except (OSError, ValueError, RecursionError, CorruptFileError):
        return "stale"  # claims are linked into place whole, so an unreadable one is damage
    if not isinstance(owner, dict):
        return "stale"  # not what the tool writes: damage, or a hand-made file
    pid = owner.get("pid")
    if owner.get("host") == HOST and isinstance(pid, int) and not _pid_alive(pid):
        return "stale"
    return "stale" if age > timeout_s else "held"


def try_claim(path: Path, worker: str, timeout_s: float) -> Claim | None:
    """Claim ``path`` for ``worker``, breaking a stale claim; None if someone else holds it."""
    if claim_state(path, timeout_s) == "stale":
        graveyard = path.with_name(temporary_name(path.name))
        try:
            os.rename(path, graveyard)
            if graveyard.is_dir() and not graveyard.is_symlink():
                shutil.rmtree(graveyard)
            else:
                graveyard.unlink()
        except FileNotFoundError:
            pass  # another worker broke it first
    # Write the claim whole under a private name, then link it into place: link() fails if the
    # claim exists (like O_EXCL) and a reader never sees a half-written claim.
    tmp = path.with_name(temporary_name(path.name))
    owner = {"worker": worker, "host": HOST, "pid": os.getpid(), "time": time.time()}
    tmp.write_text(json.dumps(owner))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        tmp.unlink()
    return Claim(path, heartbeat_s=max(1.0, min(30.0, timeout_s / 4)))
