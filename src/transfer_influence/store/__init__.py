"""Disk access: the run directory, its atomic files, chunk claims and recorded outputs."""

from ..files import CorruptFileError
from .records import RecordError
from .run import Chunk, ChunkOutputs, RunError, RunStore, RunWarning

__all__ = [
    "Chunk",
    "ChunkOutputs",
    "CorruptFileError",
    "RecordError",
    "RunError",
    "RunStore",
    "RunWarning",
]
