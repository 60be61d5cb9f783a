"""``--engine slurm``: a submitit job array of workers, each claiming chunks until none is left.

Every array job runs the same loop as ``transfer-influence worker RUN`` (so the run directory
must be on storage every node sees). The jobs are checkpointable: after a preemption or near
their time limit Slurm signals them and submitit requeues them, and the requeued job simply
claims chunks again — finished chunks are kept, the interrupted one is redone. Logs go to
RUN/slurm/. ``executor = "local"`` runs the same jobs as local processes (submitit's local
executor), for machines without Slurm.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from tqdm import tqdm

from ..store import RunError, RunStore

__all__ = ["ChunkWorker", "run_slurm"]

_POLL_S = 2.0
_ROUNDS = 3  # rounds of resubmission for chunks left behind by jobs that died


def _submitit():
    try:
        import submitit
    except ImportError:
        raise RunError(
            "the Slurm engine needs submitit: pip install 'transfer-influence[slurm]'"
        ) from None
    return submitit


class ChunkWorker:
    """The callable each array job runs; requeued as it is after preemption or timeout."""

    def __init__(self, root: str, threads: int) -> None:
        self.root = root
        self.threads = threads

    def __call__(self) -> int:
        import torch

        from .local import work

        torch.set_num_threads(self.threads)
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "local")
        worker = f"slurm:{job}:{socket.gethostname()}:{os.getpid()}"
        return work(RunStore(self.root), worker)

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any) -> Any:
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _queued(jobs: list[Any]) -> set[str] | None:
    """Ids of the array tasks Slurm still holds (pending, running, completing); None where
    squeue cannot tell."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    arrays = sorted({str(job.job_id).split("_")[0] for job in jobs})
    listed = subprocess.run(
        [squeue, "-h", "-r", "-o", "%i", "-j", ",".join(arrays)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if listed.returncode == 0:
        return set(listed.stdout.split())
    # Jobs that ended long ago are forgotten by the controller: none of them is queued.
    return set() if "Invalid job id" in listed.stderr else None


def _ended(jobs: list[Any], executor: str) -> tuple[bool, list[Any]]:
    """Whether every job has ended, and those that ended without a result (killed, lost).

    A Slurm job has ended when it wrote its result or left the queue. (submitit's own
    ``done()`` asks sacct, which clusters without job accounting cannot answer: a job killed
    before it wrote its result was never done, and sacct's complaint came at every poll.) A
    local job ended without a result is lost at once: submitit would wait 15 s for its result
    at every question asked of it."""
    if executor == "local":  # a local process writes its result before it exits, or never
        if not all(job.done() for job in jobs):
            return False, []
        return True, [job for job in jobs if not job.paths.result_pickle.exists()]
    running = [job for job in jobs if not job.paths.result_pickle.exists()]
    if not running:
        return True, []
    queued = _queued(running)
    if queued is None:  # squeue could not tell: submitit decides
        return all(job.done() for job in running), []
    if any(str(job.job_id) in queued for job in running):
        return False, []
    return True, running


def run_slurm(
    store: RunStore,
    *,
    jobs: int | None = None,
    partition: str | None = None,
    timeout_min: int = 240,
    cpus_per_job: int = 1,
    gpus_per_job: int = 0,
    parallelism: int | None = None,
    executor: str = "slurm",
    progress: bool = True,
    time_limit: float | None = None,
) -> None:
    """Submit ``jobs`` array jobs (default: one per missing chunk, at most 64), at most
    ``parallelism`` running at once, and wait until every chunk is done, or until
    ``time_limit`` seconds have passed (the jobs go on; chunks they finish are kept)."""
    deadline = None if time_limit is None else time.time() + time_limit
    submitit = _submitit()
    if executor not in ("slurm", "local"):
        raise RunError(f"slurm executor must be 'slurm' or 'local', got {executor!r}")
    folder = store.path("slurm")
    bar = tqdm(total=len(store.chunks), unit="chunk", disable=not progress, desc="training (slurm)")
    with bar:
        for _ in range(_ROUNDS):
            missing = store.missing_chunks()
            if not missing:
                return
            runner = submitit.AutoExecutor(folder=folder / "%j", cluster=executor)
            runner.update_parameters(
                name=f"ti-{store.root.name}",
                timeout_min=timeout_min,
                cpus_per_task=cpus_per_job,
                gpus_per_node=gpus_per_job,
                slurm_array_parallelism=parallelism or 64,
                **({"slurm_partition": partition} if partition else {}),
            )
            count = jobs or min(len(missing), 64)
            with runner.batch():
                submitted = [
                    runner.submit(ChunkWorker(str(store.root), cpus_per_job)) for _ in range(count)
                ]
            print(f"submitted {count} job(s) (first {submitted[0].job_id}); logs in {folder}")
            ended, lost = _ended(submitted, executor)
            while not ended:
                if deadline is not None and time.time() >= deadline:
                    print(f"time limit reached; the jobs go on in Slurm (logs in {folder})")
                    return
                time.sleep(_POLL_S)
                bar.n = len(store.chunks) - len(store.missing_chunks())
                bar.refresh()
                ended, lost = _ended(submitted, executor)
            left = store.missing_chunks()
            bar.n = len(store.chunks) - len(left)
            bar.refresh()
            failed = lost + [job for job in submitted if job not in lost and job.exception()]
            if left and len(left) == len(missing):  # no progress at all: a real error
                error = _why(failed[0], lost) if failed else "jobs finished without training"
                raise RunError(f"slurm jobs trained nothing: {str(error).strip()[-400:]}")
            if failed and left:
                print(f"{len(failed)} job(s) ended early ({_why(failed[0], lost)}); resubmitting")
    if store.missing_chunks():
        raise RunError(
            f"{len(store.missing_chunks())} chunk(s) still missing after {_ROUNDS} rounds of "
            f"jobs; see the logs in {folder}"
        )


def _why(job: Any, lost: list[Any]) -> str:
    if job in lost:
        return f"job {job.job_id} left the queue without a result (killed?)"
    return str(job.exception())
