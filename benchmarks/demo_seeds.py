"""The demo's verdict over run seeds: how often the planted truth is recovered, how often a
planted-irrelevant class is told apart from the average by its simultaneous interval (the
claim: in at most 1 run of 20) and how often one is flagged at q <= 0.05 (by chance alone
about 1 run in 4, with all eight planted classes flagged).

    python benchmarks/demo_seeds.py [--seeds 20] [--models 96] [--control]

Each seed draws other subsets and another training seed on the same task, as another user's
demo would. The result is rewritten after every seed, so a stopped benchmark keeps what it
measured. Writes benchmarks/results/demo_seeds-*.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import save_result
from transfer_influence.experiments.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first", type=int, default=0, help="first run seed")
    parser.add_argument("--models", type=int, default=96)
    parser.add_argument("--control", action="store_true", help="nothing planted")
    args = parser.parse_args()
    runs, path = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.first, args.first + args.seeds):
            started = time.perf_counter()
            summary = run_demo(Path(scratch) / str(seed), models=args.models,
                               control=args.control, progress=False, seed=seed)  # fmt: skip
            planted = summary["planted"]
            runs.append({
                "seed": seed,
                "seconds": round(time.perf_counter() - started, 1),
                "recovered": planted["recovered"],
                "flagged": planted["flagged"],
                "irrelevant_flagged": planted["irrelevant_flagged"],
                "irrelevant_told_apart": planted["irrelevant_told_apart"],
                "ranks": planted["ranks"],
            })  # fmt: skip
            result = {
                "models": args.models,
                "control": args.control,
                "seeds_run": len(runs),
                "recovered": sum(r["recovered"] for r in runs),
                "runs_with_an_irrelevant_class_flagged": sum(
                    bool(r["irrelevant_flagged"]) for r in runs
                ),
                "runs_with_an_irrelevant_class_told_apart": sum(
                    bool(r["irrelevant_told_apart"]) for r in runs
                ),
                "median_seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2],
                "runs": runs,
            }
            if path is not None:
                path.unlink()
            path = save_result("demo_seeds", result)
            print(f"seed {seed}: recovered {planted['recovered']}, irrelevant told apart "
                  f"{planted['irrelevant_told_apart'] or 'none'}, flagged "
                  f"{planted['irrelevant_flagged'] or 'none'} ({runs[-1]['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
    print(path)


if __name__ == "__main__":
    main()
