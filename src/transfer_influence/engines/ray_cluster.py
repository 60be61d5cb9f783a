"""``--engine ray``: every missing chunk is one Ray task, on an existing cluster or a local one.

The run directory stays the single source of truth: a task claims its chunk, trains it and
writes it exactly as a local worker does (so the directory must be on storage every node
sees). Ray only decides where chunks run. A task whose worker dies is retried by Ray; the
dead worker's claim is taken over (at once on the same host, after ``run.claim_timeout_s``
elsewhere), so a dead worker costs at most the chunk it was on. A local cluster listens on
127.0.0.1 only and has no dashboard.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from tqdm import tqdm

from ..store import Chunk, RunError, RunStore

__all__ = ["run_ray"]

_TRAINERS: dict[str, Any] = {}  # per worker process: the trainer of each run, built once
_ROUNDS = 5  # rounds of resubmission for chunks whose tasks failed for good


def _train_chunk(root: str, start: int, stop: int, threads: int) -> str:
    """One Ray task: claim, train and write chunk [start, stop) of the run at ``root``."""
    import torch

    from .local import build_trainer, work

    torch.set_num_threads(threads)
    store = RunStore(root)
    if root not in _TRAINERS:
        _TRAINERS[root] = build_trainer(store)
    worker = f"ray:{socket.gethostname()}:{os.getpid()}"
    trained = work(store, worker, trainer=_TRAINERS[root], chunks=[Chunk(start, stop)])
    return "trained" if trained else "skipped"


def _connect(address: str | None, workers: int | None) -> bool:
    """Join the cluster at ``address``, or start a local one; True when started here."""
    if not address:
        # A single-machine Ray binds every server to 127.0.0.1 (read when ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise RunError("the Ray engine needs Ray: pip install 'transfer-influence[ray]'") from None
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": "warning",
    }
    if address:
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RunError(f"cannot connect to the Ray cluster at {address}: {error}") from None
        return False
    # "local": a new cluster of our own, even where another one runs on this machine.
    ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **options)
    return True


def run_ray(
    store: RunStore,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    progress: bool = True,
    time_limit: float | None = None,
) -> None:
    """Train every missing chunk as a Ray task.

    ``workers`` caps the tasks in flight (default: as many as the cluster's CPUs or GPUs
    allow); each task asks for ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs.
    """
    started = _connect(address, workers)
    import ray

    deadline = None if time_limit is None else time.time() + time_limit
    try:
        resources = ray.cluster_resources()
        fits = resources.get("CPU", 1) // max(cpus_per_worker, 1e-9)
        if gpus_per_worker:
            fits = min(fits, resources.get("GPU", 0) // gpus_per_worker)
        if fits < 1:
            raise RunError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
                f"{resources.get('GPU', 0):g} GPUs: no task of {cpus_per_worker:g} CPU(s) and "
                f"{gpus_per_worker:g} GPU(s) fits"
            )
        in_flight_cap = int(min(workers or fits, fits))
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_retries=3)(
            _train_chunk
        )
        threads = max(1, int(cpus_per_worker))
        total = len(store.chunks)
        bar = tqdm(total=total, unit="chunk", disable=not progress, desc="training (ray)")
        with bar:
            for _ in range(_ROUNDS):
                failures = _round(store, task, threads, in_flight_cap, deadline, bar)
                missing = store.missing_chunks()
                if not missing or (deadline is not None and time.time() >= deadline):
                    break
                if not failures:  # only chunks held by live workers elsewhere remain
                    time.sleep(2.0)
            else:
                raise RunError(
                    f"{len(store.missing_chunks())} chunk(s) failed on Ray {_ROUNDS} times; "
                    "see the Ray logs"
                )
    finally:
        if started:
            ray.shutdown()


def _round(store, task, threads: int, cap: int, deadline: float | None, bar: tqdm) -> int:
    """Submit the missing chunks, at most ``cap`` at a time; returns how many failed."""
    import ray

    queue = list(store.missing_chunks())
    in_flight: dict[Any, Chunk] = {}
    failures = 0
    root = str(store.root)
    while queue or in_flight:
        while queue and len(in_flight) < cap and (deadline is None or time.time() < deadline):
            chunk = queue.pop(0)
            in_flight[task.remote(root, chunk.start, chunk.stop, threads)] = chunk
        if not in_flight:
            break
        finished, _ = ray.wait(list(in_flight), num_returns=1)
        chunk = in_flight.pop(finished[0])
        try:
            ray.get(finished[0])
        except ray.exceptions.RayTaskError as error:  # the training itself failed: stop
            cause = error.cause if error.cause is not None else error
            raise RunError(f"chunk {chunk.name} failed on Ray: {cause}") from None
        except ray.exceptions.RayError:
            failures += 1  # its worker or node died, even after Ray's retries: next round
        bar.n = len(store.chunks) - len(store.missing_chunks())
        bar.refresh()
    return failures
