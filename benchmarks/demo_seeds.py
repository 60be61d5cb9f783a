"""The demo's verdict over run seeds: how often the planted truth is recovered, how often a
planted-irrelevant class is told apart from the average by its simultaneous interval (the
claim: in at most 1 run of 20) and how often one is flagged at q <= 0.05 (by chance alone
about 1 run in 5, with all eight planted classes flagged).

    python benchmarks/demo_seeds.py [--seeds 20] [--models 128] [--control] [--processes 2]

Each seed draws other subsets and other training seeds on the same task, as another user's
demo would. With --processes N the seeds run N at a time, each process on one thread (CPU
kernels on one thread train other numbers than on two, as another seed would; the demo's own
time is then not measured). The result is rewritten after every seed, so a stopped benchmark
keeps what it measured. Writes benchmarks/results/demo_seeds-*.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from _common import save_result
from transfer_influence.experiments.demo import DEMO_MODELS, run_demo


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def one_seed(seed: int, models: int, control: bool, scratch: str) -> dict:
    import torch

    started = time.perf_counter()
    summary = run_demo(Path(scratch) / str(seed), models=models, control=control,
                       progress=False, seed=seed)  # fmt: skip
    planted = summary["planted"]
    return {
        "seed": seed,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 1),
        "recovered": planted["recovered"],
        "flagged": planted["flagged"],
        "irrelevant_flagged": planted["irrelevant_flagged"],
        "irrelevant_told_apart": planted["irrelevant_told_apart"],
        "ranks": planted["ranks"],
    }


def summarise(runs: list[dict], models: int, control: bool, processes: int) -> dict:
    runs = sorted(runs, key=lambda r: r["seed"])
    result = {
        "models": models,
        "control": control,
        "processes": processes,
        "seeds_run": len(runs),
        "recovered": sum(r["recovered"] for r in runs),
        "runs_with_an_irrelevant_class_flagged": sum(bool(r["irrelevant_flagged"]) for r in runs),
        "runs_with_an_irrelevant_class_told_apart": sum(
            bool(r["irrelevant_told_apart"]) for r in runs
        ),
        "runs": runs,
    }
    if processes == 1:
        result["median_seconds"] = sorted(r["seconds"] for r in runs)[len(runs) // 2]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=0, help="first run seed")
    parser.add_argument("--models", type=int, default=DEMO_MODELS)
    parser.add_argument("--control", action="store_true", help="nothing planted")
    parser.add_argument("--processes", type=int, default=1, help="seeds run at a time")
    args = parser.parse_args()
    seeds = range(args.first, args.first + args.seeds)
    runs: list[dict] = []
    path = None
    initializer = _one_thread if args.processes > 1 else None
    with (
        tempfile.TemporaryDirectory() as scratch,
        ProcessPoolExecutor(args.processes, initializer=initializer) as pool,
    ):
        futures = [pool.submit(one_seed, s, args.models, args.control, scratch) for s in seeds]
        for future in as_completed(futures):
            run = future.result()
            runs.append(run)
            if path is not None:
                path.unlink()
            path = save_result("demo_seeds", summarise(runs, args.models, args.control,
                                                       args.processes))  # fmt: skip
            print(f"seed {run['seed']}: recovered {run['recovered']}, irrelevant told apart "
                  f"{run['irrelevant_told_apart'] or 'none'}, flagged "
                  f"{run['irrelevant_flagged'] or 'none'} ({run['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
