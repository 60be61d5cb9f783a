"""Disk access: the run directory, its atomic files, chunk claims and recorded outputs."""

from .files import CorruptFileError
from .records import RecordError
from .run import Chunk, RunError, RunStore

__all__ = ["Chunk", "CorruptFileError", "RecordError", "RunError", "RunStore"]
