"""The trainer protocol: what the tool asks of its own trainer and of a user's.

A trainer gets *identifiers*, never data: a batch of jobs, each a model index, a seed and a
boolean mask over source groups. It loads its own data (so ImageNet-scale pipelines stay the
user's), pretrains one model per job on the groups in the mask, transfers it to every target
in every mode it describes, and returns the logits on every target evaluation example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..subsets import Job

__all__ = [
    "JobResult",
    "TargetInfo",
    "TaskDescription",
    "Trainer",
    "output_key",
    "parse_key",
    "warm_up",
]

STATUSES = ("ok", "nan", "diverged")


def output_key(target: str, mode: str) -> str:
    """The key under which outputs of one (target, transfer mode) pair are stored."""
    return f"{target}/{mode}"


def parse_key(key: str) -> tuple[str, str]:
    """(target, mode) of an :func:`output_key`: the one place a key is taken apart."""
    target, _, mode = key.partition("/")
    return target, mode


@dataclass(frozen=True)
class TargetInfo:
    """A target task's evaluation examples, identified stably across runs and machines."""

    name: str
    example_ids: np.ndarray  # n unique strings, e.g. "cat/00012.jpg"
    labels: np.ndarray  # n ints in [0, C)
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        ids = np.asarray(self.example_ids).astype(str)
        labels = np.asarray(self.labels)
        if ids.ndim != 1 or labels.shape != ids.shape:
            raise ValueError(f"target {self.name!r}: example_ids and labels must be equal 1-D")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"target {self.name!r}: example ids are not unique")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"target {self.name!r}: labels must be integers")
        if ids.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"target {self.name!r}: labels outside [0, {len(self.class_names)})")
        object.__setattr__(self, "example_ids", ids)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))


@dataclass(frozen=True)
class TaskDescription:
    """What a trainer's runs are over: source groups, targets, transfer modes, data identity."""

    groups: tuple[str, ...]
    targets: tuple[TargetInfo, ...]
    modes: tuple[str, ...]
    fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.groups) < 2:
            raise ValueError("a task needs at least 2 source groups")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError("source group names must be unique")
        if not self.targets or not self.modes:
            raise ValueError("a task needs at least one target and one transfer mode")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("target names must be unique")
        for name in (*names, *self.modes):
            if not name or "/" in name:
                raise ValueError(f"target and mode names must be non-empty without '/': {name!r}")

    @property
    def keys(self) -> list[str]:
        return [output_key(t.name, mode) for t in self.targets for mode in self.modes]

    def target(self, name: str) -> TargetInfo:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)


@dataclass
class JobResult:
    """One trained model's results.

    ``logits`` maps :func:`output_key` to n x C logits on that target's examples; a trainer may
    instead (or also) give ``outputs``: key -> {output name: n values}.
    """

    index: int
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    source_accuracy: float = math.nan
    status: str = "ok"  # "ok", or "diverged" when the trainer knows the model is unusable
    seconds: float = math.nan


@runtime_checkable
class Trainer(Protocol):
    """Implement these two methods to attribute your own training pipeline."""

    def describe(self) -> TaskDescription:
        """The groups, targets and modes this trainer's jobs are over (cheap; no training)."""
        ...

    def train(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Train one model per job (several at once if you can) and return their results."""
        ...


def warm_up(trainer: Trainer) -> None:
    """Let a trainer pay its one-time costs before the first chunk is timed, where it can (an
    optional ``warm_up()`` method, called once per worker before it claims anything)."""
    method = getattr(trainer, "warm_up", None)
    if callable(method):
        method()
