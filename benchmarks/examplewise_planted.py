"""Do planted mislabeled images and near-duplicates of target images surface at the extremes of
example-wise influence? And how many models does a pool of a given size need?

A real (trained, CPU) example-level run of the built-in trainer on the demo's task: the pool is
every image of the 4 clear-stripes source classes plus planted mislabeled images and
near-duplicates of target test images (``transfer_influence.datasets.synthetic.planted_pool``).

Each model pretrains on a random half of the pool (no other source image) and is transferred
to the target by fixed features. Reported: the recall of the mislabeled images among the 10
most harmful pool images overall, the recall of each duplicate among the 10 most helpful pool
images for the target image it copies, the same for a random ranking, and the split-half
stability of the overall ranking with its Spearman-Brown projection of the models needed.

    python benchmarks/examplewise_planted.py [--models 400] [--per-class 40,80] [--seeds 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import save_result
from transfer_influence.config import Config
from transfer_influence.datasets.arrays import save_npz
from transfer_influence.datasets.synthetic import planted_pool
from transfer_influence.engines import LocalEngine
from transfer_influence.estimation import ExampleInfluence
from transfer_influence.store import RunStore
from transfer_influence.trainers import load_trainer

PLANTED = 10  # mislabeled images, and near-duplicates
TOP = 10
# Small batches and many epochs: a model pretrains on only half the pool, and too few steps
# leave it near its initialisation, where no single image matters.
RECIPE = {"widths": [16, 32, 64], "epochs": 40, "batch_size": 16, "stack": 8}


def planted_task(root: Path, seed: int, per_class: int) -> dict:
    """Write the planted pool's source and target as npz files; return their specs and the
    planted ids."""
    pool = planted_pool(seed, per_class, PLANTED)
    save_npz(root / "source.npz", pool.source_train, pool.source_test)
    save_npz(root / "target.npz", pool.target_train, pool.target_test)
    return {
        "source": {"kind": "npz", "path": str(root / "source.npz")},
        "target": {"kind": "npz", "path": str(root / "target.npz"), "name": "stripes"},
        "classes": list(pool.source_train.class_names),
        "mislabeled": list(pool.mislabeled),
        "duplicates": pool.duplicates,
    }


def _recall_at_extremes(fitted: ExampleInfluence, task: dict) -> dict:
    """Recall of the planted images at the extremes, and their median rank (0 = most
    extreme; a random ranking puts them at (pool size - 1) / 2)."""
    overall = fitted.overall_["source_example"].tolist()
    from_bottom = [len(overall) - 1 - overall.index(i) for i in task["mislabeled"]]
    duplicate_ranks = []
    for duplicate, target_example in task["duplicates"].items():
        table = fitted.per_example_[fitted.per_example_["target_example"] == target_example]
        duplicate_ranks.append(table["source_example"].tolist().index(duplicate))
    return {
        "mislabeled_in_bottom_10_overall": sum(r < TOP for r in from_bottom) / PLANTED,
        "duplicate_in_top_10_of_its_target_image": sum(r < TOP for r in duplicate_ranks) / PLANTED,
        "duplicates_in_top_10_overall": sum(i in set(overall[:TOP]) for i in task["duplicates"])
        / PLANTED,
        "mislabeled_median_rank_from_bottom": float(np.median(from_bottom)),
        "duplicate_median_rank_for_its_image": float(np.median(duplicate_ranks)),
    }


def one_run(per_class: int, models: int, seed: int, workdir: Path, output: str) -> dict:
    task = planted_task(workdir, seed, per_class)
    pool_size = 4 * per_class + 2 * PLANTED
    config = Config.from_dict(
        {
            "run": {
                "seed": seed,
                "alpha": 0.5,
                "models": models,
                "chunk_size": 16,
                "seeds": "run",
                "keep_logits": False,
            },  # fmt: skip
            "trainer": {
                "type": "builtin",
                "params": {
                    "source": task["source"],
                    "targets": [task["target"]],
                    "pool": {"classes": task["classes"], "context": "none"},
                    "recipe": RECIPE,
                },
            },
        }
    )
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    store = RunStore.open_or_create(workdir / "run", config, trainer.describe())
    start = time.perf_counter()
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    seconds = time.perf_counter() - start
    result: dict = {"output": output, "per_class": per_class, "pool_size": pool_size,
                    "models": models, "seed": seed,
                    "seconds_per_model": seconds / models}  # fmt: skip
    examples = list(task["duplicates"].values())
    for estimator in ("sparse", "difference"):
        fitted = ExampleInfluence(output=output, examples=examples, estimator=estimator)
        fitted.fit(store)
        result[estimator] = _recall_at_extremes(fitted, task)
    result["split_half"] = fitted.stability_.spearman
    for level in (0.5, 0.7, 0.9):
        result[f"models_for_{level}"] = fitted.stability_.models_needed(level)
    result["random_ranking_recall"] = TOP / pool_size
    result["random_ranking_median_rank"] = (pool_size - 1) / 2
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=400)
    parser.add_argument("--per-class", default="40", help="clean pool images per class")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--output", default="margin", help="model output (default: margin)")
    args = parser.parse_args()
    rows = []
    for per_class in map(int, args.per_class.split(",")):
        for seed in map(int, args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as workdir:
                rows.append(one_run(per_class, args.models, seed, Path(workdir), args.output))
    path = save_result("examplewise_planted", {"runs": rows, "recipe": RECIPE})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
