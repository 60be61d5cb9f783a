"""A seed per chunk in a simulation with known truth: are the intervals honest, and how much
closer are the estimates than with an own seed per model?

The simulated trainer's noise mostly follows the training seed (model 0.1, per example 0.3)
with a little that does not (0.05 per example); 20 groups, 200 target examples, 160 models,
margin output (exactly additive, so the truth is known). For each of three simulated tasks,
five runs (subset and seed draws), design (random, balanced), seeding (own seed per model in
chunks of 16; a seed per chunk of 16, 4 or 2 models) and estimator: coverage of the
per-example 95% intervals, mean standard error, mean absolute error, and the slope of the
estimates on the truth (1: not shrunk); for a seed per chunk also what earlier versions
reported (the plain difference in means of the centred outputs). One run's coverage varies a
lot (the groups' part of the error is shared by all examples), so the summary is over the 15
runs of each arm.

    python benchmarks/seed_per_chunk_sim.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from _common import save_result
from transfer_influence import ClassInfluence, RunStore
from transfer_influence.config import Config
from transfer_influence.engines.local import run_local
from transfer_influence.estimation import estimate_influence
from transfer_influence.trainers import load_trainer

NOISE = {"model_noise": 0.1, "example_noise": 0.3, "unshared_noise": 0.05}
TASK = {"groups": 20, "examples": 200, "classes": 4, "modes": ["fixed_feature"]}


RUN_SEEDS = (7, 8, 9, 10, 11)
SEEDINGS = ((False, 16), (True, 16), (True, 4), (True, 2))  # (seed per chunk, chunk size)


def _fit(folder: Path, task_seed: int, run: dict) -> list[dict]:
    params = {**TASK, **NOISE, "effect_scale": 0.05, "seed": task_seed}
    config = Config.from_dict(
        {
            "run": {"models": 160, **run},
            "trainer": {"type": "simulated", "params": params},
        }
    )
    trainer = load_trainer("simulated", params)
    store = RunStore.open_or_create(folder, config, trainer.describe())
    run_local(store, 1, progress=False, trainer=trainer)
    truth = trainer.true_influence("sim", "fixed_feature")
    estimates = {
        name: ClassInfluence(output="margin", estimator=name).fit(store).estimate_.per_example
        for name in ("difference", "regression")
    }
    if run["seed_per_chunk"]:
        # What earlier versions reported: the plain difference in means of centred outputs,
        # pooled error (shrunk by (C - 1) / C; over-counted degrees of freedom).
        chunks = list(store.iter_outputs("sim/fixed_feature", "margin"))
        estimates["plain on centred outputs"] = estimate_influence(
            np.concatenate([c.masks for c in chunks]), np.concatenate([c.values for c in chunks])
        ).per_example
    rows = []
    for estimator, per_example in estimates.items():
        low, high = per_example.ci(0.95)
        rows.append(
            {
                "task_seed": task_seed,
                **run,
                "estimator": estimator,
                "coverage": float(np.mean((low <= truth) & (truth <= high))),
                "mean_stderr": float(per_example.stderr.mean()),
                "mean_abs_error": float(np.abs(per_example.values - truth).mean()),
                "slope_on_truth": float(np.sum(per_example.values * truth) / np.sum(truth**2)),
            }
        )
    return rows


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for task_seed in (4, 5, 6):
            for run_seed in RUN_SEEDS:
                for design in ("random", "balanced"):
                    for per_chunk, size in SEEDINGS:
                        run = {"seed": run_seed, "design": design, "seed_per_chunk": per_chunk}
                        name = f"{task_seed}-{run_seed}-{design}-{per_chunk}-{size}"
                        rows += _fit(Path(scratch) / name, task_seed, run | {"chunk_size": size})
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["design", "seed_per_chunk", "chunk_size", "estimator"])
        .agg(
            runs=("coverage", "size"),
            coverage=("coverage", "mean"),
            coverage_min=("coverage", "min"),
            coverage_max=("coverage", "max"),
            mean_stderr=("mean_stderr", "mean"),
            mean_abs_error=("mean_abs_error", "mean"),
            slope_on_truth=("slope_on_truth", "mean"),
        )
        .reset_index()
    )
    print(summary.to_string(index=False, float_format="{:.4f}".format))
    result = {"noise": NOISE, "task": TASK, "summary": summary.to_dict("records"), "rows": rows}
    print(save_result("seed_per_chunk_sim", result))


if __name__ == "__main__":
    main()
