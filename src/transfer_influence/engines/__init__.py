"""Execution engines: where chunks run. The run store decides what runs.

Every engine has one method, ``run(store, time_limit=None, progress=True)``: train every
missing chunk of ``store`` (a sweep, a drill-down, pruning conditions: all are run stores),
starting none after ``time_limit`` seconds. Options are the engine's constructor parameters::

    LocalEngine(workers=4).run(store)
    RayEngine(address="head:6379", gpus_per_worker=1).run(store)
    SlurmEngine(workers=32, partition="gpu", gpus_per_worker=1).run(store)

Any engine resumes: claims, heartbeats and atomic chunks make a killed engine's work safe to
take over by the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..store import RunStore
from ..trainers import Trainer
from .local import prepare, run_local, work

__all__ = ["Engine", "LocalEngine", "RayEngine", "SlurmEngine", "work"]


class Engine(Protocol):
    def run(self, store: RunStore, time_limit: float | None = None, progress: bool = True) -> None:
        """Train every missing chunk of ``store``."""
        ...


@dataclass(frozen=True, kw_only=True)
class LocalEngine:
    """``workers`` processes on this machine (default: one per GPU, or 1); ``trainer``: one
    already built, used in this process when ``workers`` is 1; ``verify``: read every finished
    chunk first (damaged and foreign ones are redone)."""

    workers: int | None = None
    trainer: Trainer | None = None
    verify: bool = True

    def run(self, store: RunStore, time_limit: float | None = None, progress: bool = True) -> None:
        run_local(store, self.workers, progress, time_limit, self.trainer, self.verify)


@dataclass(frozen=True, kw_only=True)
class RayEngine:
    """One Ray task per chunk on the cluster at ``address`` (default: a local one), at most
    ``workers`` at once, each asking for ``cpus_per_worker`` and ``gpus_per_worker``."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    verify: bool = True

    def run(self, store: RunStore, time_limit: float | None = None, progress: bool = True) -> None:
        from .ray_cluster import run_ray

        prepare(store, self.verify)
        run_ray(
            store,
            address=self.address,
            workers=self.workers,
            cpus_per_worker=self.cpus_per_worker,
            gpus_per_worker=self.gpus_per_worker,
            progress=progress,
            time_limit=time_limit,
        )


@dataclass(frozen=True, kw_only=True)
class SlurmEngine:
    """A checkpointable job array of ``workers`` jobs (default: one per missing chunk, at most
    64) that claim chunks until none is left; ``executor = "local"`` runs the same jobs as
    local processes (submitit's local executor)."""

    workers: int | None = None
    partition: str | None = None
    timeout_min: int = 240
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0
    parallelism: int | None = None
    executor: str = "slurm"
    verify: bool = True

    def run(self, store: RunStore, time_limit: float | None = None, progress: bool = True) -> None:
        from .slurm import run_slurm

        prepare(store, self.verify)
        run_slurm(
            store,
            jobs=self.workers,
            partition=self.partition,
            timeout_min=self.timeout_min,
            cpus_per_job=self.cpus_per_worker,
            gpus_per_job=self.gpus_per_worker,
            parallelism=self.parallelism,
            executor=self.executor,
            progress=progress,
            time_limit=time_limit,
        )
