"""Margins of the planted-image test (tests/test_examplewise.py) over seeds and thread counts.

The test trains 96 small CNNs on a pool of 100 source images with 10 near-duplicates of target
images and 10 target-like mislabeled images planted in it, and asserts that the duplicates rank
near the top for the image they copy. This script reruns that run for several pool and run seeds
with 1 and 2 torch threads and records, per run, the median rank of the duplicates (for their
image) and of the mislabeled images (from the bottom overall), next to the same statistics'
quantiles under a random ranking. The test's bound is set from these: it must lie beyond what
a random ranking reaches by chance, and far enough from the measured runs that it never fails
by chance.

    python research/planted_margins.py [--models 96] [--pool-seeds 1 2 3] [--run-seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
os.environ.setdefault("TI_RESULTS", str(Path(__file__).resolve().parent / "results"))
from _common import save_result  # noqa: E402
from transfer_influence import RunStore, estimate_influence  # noqa: E402
from transfer_influence.config import Config  # noqa: E402
from transfer_influence.datasets.synthetic import planted_pool  # noqa: E402
from transfer_influence.engines import LocalEngine  # noqa: E402
from transfer_influence.estimation import ExampleInfluence  # noqa: E402
from transfer_influence.trainers import load_trainer  # noqa: E402


def planted_ranks(folder: Path, models: int, pool_seed: int, run_seed: int, planted: int) -> dict:
    pool = planted_pool(seed=pool_seed, per_class=20, planted=planted)
    recipe = {"widths": [16, 32, 64], "epochs": 40, "batch_size": 16, "stack": 8}
    params = pool.trainer_params(folder, recipe)  # as the test's
    config = Config.from_dict(
        {"run": {"models": models, "chunk_size": 16, "seeds": "run", "seed": run_seed,
                 "keep_logits": False},
         "trainer": {"type": "builtin", "params": params}}
    )  # fmt: skip
    trainer = load_trainer("builtin", params)
    store = RunStore.open_or_create(folder / "run", config, trainer.describe())
    start = time.perf_counter()
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    seconds = time.perf_counter() - start
    fitted = ExampleInfluence(
        output="margin", examples=list(pool.duplicates.values()), estimator="difference"
    ).fit(store)
    size = len(store.groups)
    duplicate = []
    for copy, original in pool.duplicates.items():
        table = fitted.per_example_[fitted.per_example_["target_example"] == original]
        duplicate.append(table["source_example"].tolist().index(copy))
    overall = fitted.overall_["source_example"].tolist()
    mislabeled = [size - 1 - overall.index(i) for i in pool.mislabeled]
    return {
        "duplicate_t": duplicate_t(store, pool.duplicates),
        "pool_seed": pool_seed,
        "run_seed": run_seed,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "duplicate_ranks": duplicate,
        "duplicate_median": float(np.median(duplicate)),
        "duplicates_in_top_10": int(np.sum(np.array(duplicate) < 10)),
        "duplicate_mean_log_rank": float(np.log1p(duplicate).mean()),
        "mislabeled_ranks": mislabeled,
        "mislabeled_median": float(np.median(mislabeled)),
    }


def duplicate_t(store: RunStore, duplicates: dict[str, str]) -> list[float]:
    """Each copy's t statistic (difference in means over its standard error) for the margin
    on the target image it copies; about N(0, 1) if copies did nothing."""
    key = store.resolve_key(None, None)
    ids = store.target(key.split("/")[0]).example_ids.tolist()
    chunks = list(store.iter_outputs(key, "margin"))
    masks = np.concatenate([c.masks for c in chunks])
    columns = [ids.index(original) for original in duplicates.values()]
    outputs = np.concatenate([c.values[:, columns] for c in chunks])
    est = estimate_influence(masks, outputs).per_example
    rows = [list(store.groups).index(copy) for copy in duplicates]
    return [float(est.values[r, c] / est.stderr[r, c]) for c, r in enumerate(rows)]


def null_quantiles(pool: int = 100, planted: int = 10, draws: int = 100_000) -> dict:
    """Quantiles of both statistics when the ranking ignores the data."""
    rng = np.random.default_rng(0)
    # Duplicates: each copy's rank for its own image, independently uniform over the pool.
    duplicate = np.median(rng.integers(0, pool, (draws, planted)), axis=1)
    # Mislabeled: distinct ranks in one overall ranking.
    mislabeled = np.median(np.argsort(rng.random((draws, pool)), axis=1)[:, :planted], axis=1)
    levels = [0.001, 0.01, 0.05]
    independent = rng.integers(0, pool, (draws, planted))
    in_top_10 = (independent < 10).sum(axis=1)
    mean_log = np.log1p(independent).mean(axis=1)
    return {
        "pool": pool,
        "levels": levels,
        "duplicates_in_top_10_upper": np.quantile(in_top_10, [1 - q for q in levels]).tolist(),
        "duplicate_mean_log_rank": np.quantile(mean_log, levels).tolist(),
        "duplicate_median": np.quantile(duplicate, levels).tolist(),
        "mislabeled_median": np.quantile(mislabeled, levels).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=96)
    parser.add_argument("--pool-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--run-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--planted", type=int, default=10, help="images of each kind")
    args = parser.parse_args()
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for pool_seed in args.pool_seeds:
            for run_seed in args.run_seeds:
                with tempfile.TemporaryDirectory() as folder:
                    runs.append(
                        planted_ranks(Path(folder), args.models, pool_seed, run_seed, args.planted)
                    )
                print(json.dumps(runs[-1]), flush=True)
    result = {
        "models": args.models,
        "planted": args.planted,
        "runs": runs,
        "null": null_quantiles(pool=80 + 2 * args.planted, planted=args.planted),
    }
    print(save_result("planted_margins", result))


if __name__ == "__main__":
    main()
