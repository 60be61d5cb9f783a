"""The engine options every training command takes (run, drill, prune), and the engine they
choose."""

from __future__ import annotations

import argparse

from ..engines import Engine, LocalEngine, RayEngine, SlurmEngine

__all__ = ["add_engine_arguments", "engine_from_args"]


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    from .analysis import count

    parser.add_argument(
        "--workers", type=count,
        help="worker processes, Ray tasks at once or Slurm jobs (default: one per GPU, or 1 "
        "locally; as many as fit on Ray; one per missing chunk, at most 64, on Slurm)",
    )  # fmt: skip
    engine = parser.add_argument_group("engines")
    engine.add_argument(
        "--engine", choices=("local", "ray", "slurm"), default="local",
        help="local processes (default), a Ray cluster, or a Slurm job array",
    )  # fmt: skip
    engine.add_argument("--address", help="ray: cluster address (default: start a local one)")
    engine.add_argument("--cpus-per-worker", type=count, default=1, help="ray/slurm (default: 1)")
    engine.add_argument("--gpus-per-worker", type=float, default=0, help="ray/slurm (default: 0)")
    engine.add_argument("--slurm-partition", help="slurm: partition")
    engine.add_argument(
        "--slurm-timeout-min", type=count, default=240, help="slurm: job time limit (minutes)"
    )
    engine.add_argument("--slurm-parallelism", type=count, help="slurm: array jobs at once")
    engine.add_argument(
        "--slurm-executor", choices=("slurm", "local"), default="slurm",
        help="slurm: 'local' runs the jobs as local processes (submitit's local executor)",
    )  # fmt: skip


def engine_from_args(args: argparse.Namespace, trainer=None) -> Engine:
    """The engine the command line chose, with its options; ``trainer`` (already built) is
    used by a single local worker."""
    if args.engine == "ray":
        return RayEngine(
            address=args.address, workers=args.workers,
            cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        )  # fmt: skip
    if args.engine == "slurm":
        return SlurmEngine(
            workers=args.workers, partition=args.slurm_partition,
            timeout_min=args.slurm_timeout_min, cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=int(args.gpus_per_worker), parallelism=args.slurm_parallelism,
            executor=args.slurm_executor,
        )  # fmt: skip
    return LocalEngine(workers=args.workers, trainer=trainer)
