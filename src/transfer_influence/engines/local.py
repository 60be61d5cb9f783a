"""Running chunks: one worker loop that any engine calls, and N local worker processes.

A worker repeatedly claims a missing chunk, trains its jobs, and writes the chunk atomically.
Everything a worker needs is in the run directory, so ``transfer-influence worker RUN`` under
any scheduler does exactly what a local worker does.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable

from tqdm import tqdm

from ..files import write_json
from ..provenance import provenance
from ..store import Chunk, RunError, RunStore
from ..store.records import pack_results
from ..trainers import Trainer, load_trainer, warm_up

__all__ = ["build_trainer", "prepare", "record_control", "run_local", "work"]

_POLL_S = 0.5
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def build_trainer(store: RunStore) -> Trainer:
    if store.external:
        raise RunError(f"{store.root} holds imported results; there is nothing to train")
    trainer = load_trainer(store.config.trainer.type, store.config.trainer.params)
    store.check_task(trainer.describe())
    return trainer


def work(
    store: RunStore,
    worker: str | None = None,
    shard: tuple[int, int] | None = None,
    trainer: Trainer | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
    deadline: float | None = None,
    chunks: list[Chunk] | None = None,
    warmed: bool = False,
) -> int:
    """Train every missing, unclaimed chunk (of ``shard`` = (i, N), or of ``chunks``, if
    given). Returns how many.

    With a ``deadline`` (a ``time.time()`` value) no new chunk is started after it. The
    trainer warms up first unless the caller has ``warmed`` it.
    """
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    trainer = trainer or build_trainer(store)
    targets = {name: store.target(name) for name in store.target_names}
    device = getattr(trainer, "device", "cpu")
    done = 0
    todo = store.missing_chunks(shard) if chunks is None else chunks
    if todo and not warmed:
        warm_up(trainer)  # so that no chunk's times hold the process's one-time costs
    for chunk in todo:
        if deadline is not None and time.time() >= deadline:
            break
        claim = store.claim(chunk, worker)
        if claim is None:
            continue
        with claim:
            if store.is_done(chunk):  # finished by another worker since we listed it
                continue
            jobs = store.jobs(chunk)
            started = time.time()
            results = trainer.train(jobs)
            arrays = pack_results(
                jobs,
                results,
                targets,
                store.modes,
                store.config.run.outputs,
                store.config.run.keep_logits,
            )
            meta = {
                "worker": worker,
                "started": started,
                "finished": time.time(),
                "provenance": provenance(str(device)),
            }
            store.write_chunk(chunk, arrays, meta)
        done += 1
        if on_chunk is not None:
            on_chunk(chunk)
    if done:
        record_control(store, trainer)
    return done


def prepare(store: RunStore, verify: bool = True) -> None:
    """Before any engine trains (``verify``): read every finished chunk, so that damaged ones
    and those of another run are moved aside and redone. (Opening the store has already
    removed what killed writers left.)"""
    if verify:
        store.verify()


def record_control(store: RunStore, trainer: Trainer) -> None:
    """Once per run: the target accuracy of an untrained backbone with the same transfer, the
    baseline that pretraining must beat (for trainers that can say; written atomically)."""
    path = store.path("control.json")
    control = getattr(trainer, "untrained_control", None)
    if control is None or path.exists():
        return
    what = " ".join(control.__doc__.split("\n\n")[0].split())  # the docstring's first paragraph
    write_json(path, {"accuracy": control(), "what": what})


def _worker_process(
    root: str,
    worker: str,
    errors: multiprocessing.Queue,
    ready: multiprocessing.Queue,
    deadline: float | None,
) -> None:
    try:
        store = RunStore(root)
        trainer = build_trainer(store)
        warm_up(trainer)
        ready.put(worker)
        work(store, worker, trainer=trainer, deadline=deadline, warmed=True)
    except BaseException as error:  # reported to the parent, which exits non-zero
        errors.put(f"{worker}: {error}\n{traceback.format_exc()}")
        raise SystemExit(1) from None


def _default_workers() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def run_local(
    store: RunStore,
    workers: int | None = None,
    progress: bool = True,
    time_limit: float | None = None,
    trainer: Trainer | None = None,
    verify: bool = True,
) -> None:
    """Train all missing chunks with ``workers`` processes (one per GPU by default); with a
    ``time_limit`` in seconds, start no chunk after it (finished chunks stay, run again to go
    on). ``verify=False`` skips re-reading the finished chunks, for a caller that already has."""
    workers = workers or _default_workers()
    deadline = time.time() + time_limit if time_limit is not None else None
    prepare(store, verify)
    warmed = False
    while True:
        missing = store.missing_chunks()
        if not missing or (deadline is not None and time.time() >= deadline):
            return
        if workers == 1:
            if not warmed:  # before the bar, whose estimate of the time left starts at once
                trainer = trainer or build_trainer(store)
                warm_up(trainer)
                warmed = True
            with _bar(store, workers, progress) as bar:
                work(
                    store,
                    trainer=trainer,
                    on_chunk=lambda _chunk, b=bar: b.update(),
                    deadline=deadline,
                    warmed=True,
                )
        else:
            _run_processes(store, workers, progress, deadline)
        _wait_for_others(store, progress)


def _bar(store: RunStore, workers: int, progress: bool) -> tqdm:
    total = len(store.chunks)
    return tqdm(
        total=total,
        initial=total - len(store.missing_chunks()),
        unit="chunk",
        disable=not progress,
        desc=f"training ({workers} worker{'s' * (workers > 1)})",
    )


def _run_processes(store: RunStore, workers: int, progress: bool, deadline: float | None) -> None:
    context = multiprocessing.get_context("spawn")
    errors, ready = context.Queue(), context.Queue()
    gpus = _default_workers() if _has_cuda() else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    saved = {name: os.environ.get(name) for name in (*_THREAD_VARIABLES, "CUDA_VISIBLE_DEVICES")}
    processes = []
    try:
        for i in range(workers):
            for name in _THREAD_VARIABLES:
                os.environ[name] = str(threads)
            if gpus:
                os.environ["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            worker = f"{socket.gethostname()}:{os.getpid()}:{i}"
            process = context.Process(
                target=_worker_process,
                args=(str(store.root), worker, errors, ready, deadline),
                daemon=True,
            )
            process.start()
            processes.append(process)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _wait_until_ready(processes, ready)
    with _bar(store, workers, progress) as bar:
        while any(p.is_alive() for p in processes):
            time.sleep(_POLL_S)
            bar.n = len(store.chunks) - len(store.missing_chunks())
            bar.refresh()
    failures = [p for p in processes if p.exitcode != 0]
    if failures:
        message = errors.get() if not errors.empty() else f"exit code {failures[0].exitcode}"
        raise RunError(f"a worker failed: {message.splitlines()[0]}")


def _wait_until_ready(processes: list, ready: multiprocessing.Queue) -> None:
    """Until every worker has loaded its data and warmed up (or exited): the bar starts after,
    so that its estimate of the time left is the training's alone."""
    waiting = len(processes)
    while waiting and any(p.is_alive() for p in processes):
        try:
            ready.get(timeout=_POLL_S)
            waiting -= 1
        except queue.Empty:
            pass


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _wait_for_others(store: RunStore, progress: bool) -> None:
    """Chunks claimed by workers elsewhere: wait until they finish or their claims go stale."""
    announced = False
    while True:
        missing = store.missing_chunks()
        held = [c for c in missing if store.claim_state(c) == "held"]
        if not held or len(held) < len(missing):
            return  # done, or some chunk is free again: the caller trains it
        if progress and not announced:
            print(f"waiting for {len(held)} chunk(s) claimed by other workers")
            announced = True
        time.sleep(_POLL_S * 4)
