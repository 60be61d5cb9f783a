"""Plain versus improved estimator and design on real CNNs, trained on CPU.

A scaled-down reference case that a 2-core machine can train hundreds of times: CIFAR-100 ->
CIFAR-10 from ``../shared/datasets`` at 16 x 16 pixels, 50 images per source class, the source
grouped into its 20 superclasses (a model pretrains on every class of a random 10 of them),
small CNNs (widths 16-32-64, 6 epochs) transferred with fixed features (head fitted on 5,000
CIFAR-10 training images, outputs on 2,000 test images). Runs ("arms") train the same number
of models on independently drawn random subsets:

- ``independent``: every model its own seed (the paper's design);
- ``shared`` and ``shared-2``: every model of the run the same seed (``run.shared_seed``: the
  same initialisation and sampling stream, so models differ by their subsets, not by their
  luck), a different seed in each of the two runs;
- ``chunk-seeds`` and ``chunk4-seeds``: a seed per chunk of 16 (or 4) models
  (``run.seed_per_chunk``): each chunk's outputs are centred, which removes its seed's
  offset, so the ranking is the seed-averaged one; split-half stability splits whole chunks,
  so it is stability across seeds;
- ``pair-seeds``: the balanced design (at alpha = 0.5: a subset and its complement) with a
  seed per pair, so each pair's contrast is free of its seed's offset and centring loses no
  information about the groups (every group is in exactly one model of a pair);
- ``shared-coupled`` and ``chunk4-coupled``: the subsets and seeds of ``shared`` and
  ``chunk4-seeds`` with ``recipe.data_order = "coupled"`` (a seed's models meet the images they
  share in the same order, cropped and flipped alike): what the data order adds to sharing the
  initialisation, model for model.

For each arm and estimator (difference in means, regression), at growing m (the first m
models): split-half rank stability of the overall group ranking with its Spearman-Brown
projection of the models needed for 0.9, and the held-out LDS (a fifth held out, 200 splits);
the share of the across-model spread the subsets explain. Between arms: the rank correlation
of their estimates against the ceiling their reliabilities allow — a shared seed could make a
ranking stable but specific to that seed, and two shared-seed arms with different seeds would
then disagree.

Error gains: each arm's median standard error of the overall influence from all its models, as
``estimate`` reports it, squared against the own-seed difference in means'. At equal signal
that ratio is the factor by which the arm needs fewer models. A shared seed's error is its
error within that seed (the seed's own view of the groups is fitted, not counted as noise), so
its gain bounds what any design that averages over seeds, and any estimator, can reach.
Runs resume from ``--workdir``.

    python benchmarks/designs_real.py [--models 240] [--arms independent,chunk-seeds,...]
        [--epochs 6] [--batch-size 128] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from _common import save_result
from transfer_influence import ClassInfluence, estimate_influence
from transfer_influence.attribution import seed_blocks
from transfer_influence.config import Config
from transfer_influence.datasets.arrays import save_npz
from transfer_influence.datasets.folder import load_folder
from transfer_influence.engines.local import run_local
from transfer_influence.stability import (
    explained_by_subsets,
    linear_datamodeling_score,
    split_half_stability,
)
from transfer_influence.store import RunStore
from transfer_influence.trainers import load_trainer

SHARED = Path(__file__).resolve().parents[2] / "shared/datasets"
SIZE, SOURCE_PER_CLASS, TARGET_TRAIN, TARGET_TEST = 16, 50, 5000, 2000
RECIPE = {"widths": [16, 32, 64], "epochs": 6, "batch_size": 128, "stack": 8}
ESTIMATORS = ("difference", "regression")
# arm -> its run settings (each its own base seed: independent subset draws)
ARMS = {
    "independent": {"seed": 0},
    "shared": {"seed": 1, "shared_seed": True},
    "shared-2": {"seed": 2, "shared_seed": True},
    "chunk-seeds": {"seed": 3, "seed_per_chunk": True, "chunk_size": 16},
    "chunk4-seeds": {"seed": 4, "seed_per_chunk": True, "chunk_size": 4},
    "pair-seeds": {"seed": 5, "design": "balanced", "seed_per_chunk": True, "chunk_size": 2},
    # The same subsets and seeds as "shared" and "chunk4-seeds", with the coupled data order.
    "shared-coupled": {"seed": 1, "shared_seed": True, "recipe": {"data_order": "coupled"}},
    "chunk4-coupled": {
        "seed": 4, "seed_per_chunk": True, "chunk_size": 4, "recipe": {"data_order": "coupled"}
    },
}  # fmt: skip


def _per_class(dataset, n: int, seed: int):
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(dataset.labels == c), n, replace=False)
        for c in range(len(dataset.class_names))
    ]
    return dataset.subset(np.sort(np.concatenate(chosen)))


def prepare_data(workdir: Path, recipe: dict) -> dict:
    """The scaled-down datasets as npz files and the superclass map; their specs."""
    source, target = workdir / "cifar100-16px.npz", workdir / "cifar10-16px.npz"
    groups = workdir / "coarse.json"
    if not (source.exists() and target.exists() and groups.exists()):
        c100 = [load_folder(str(SHARED / "cifar100"), s, size=SIZE) for s in ("train", "test")]
        c10 = [load_folder(str(SHARED / "cifar10"), s, size=SIZE) for s in ("train", "test")]
        save_npz(source, _per_class(c100[0], SOURCE_PER_CLASS, 0), _per_class(c100[1], 10, 1))
        train, test = (
            _per_class(c10[0], TARGET_TRAIN // 10, 2),
            _per_class(c10[1], TARGET_TEST // 10, 3),
        )
        save_npz(target, train, test)
        groups.write_text((SHARED / "cifar100/coarse.json").read_text())
    return {
        "source": {"kind": "npz", "path": str(source)},
        "targets": [{"kind": "npz", "path": str(target), "name": "cifar10"}],
        "groups": str(groups),
        "modes": ["fixed_feature"],
        "recipe": recipe,
    }


def train_arm(workdir: Path, params: dict, arm: str, models: int) -> tuple[RunStore, float]:
    run = dict(ARMS[arm])
    params = dict(params, recipe=params["recipe"] | run.pop("recipe", {}))
    config = Config.from_dict(
        {
            "run": {"alpha": 0.5, "models": models, "chunk_size": 8, "keep_logits": False} | run,
            "trainer": {"type": "builtin", "params": params},
        }
    )
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    store = RunStore.open_or_create(workdir / arm, config, trainer.describe())
    missing = sum(c.stop - c.start for c in store.missing_chunks())
    start = time.perf_counter()
    run_local(store, 1, progress=True, trainer=trainer)
    seconds = time.perf_counter() - start
    return store, (seconds / missing if missing else float("nan"))


def overall_outputs(store: RunStore) -> tuple[np.ndarray, ...]:
    """Masks, each model's mean p_correct (centred per chunk where seeds are per chunk), its
    accuracy (as recorded), and which models share a seed (None: none do, or all)."""
    key = store.resolve_key(None, None)
    masks, means, accuracy = [], [], []
    for chunk in store.iter_outputs(key, "p_correct"):
        masks.append(chunk.masks)
        means.append(chunk.values.mean(axis=1, dtype=np.float64))
    for chunk in store.iter_outputs(key, "correct"):
        accuracy.append(chunk.values.mean(axis=1, dtype=np.float64) + chunk.offset.mean())
    blocks = seed_blocks(store, masks)
    return np.concatenate(masks), np.concatenate(means), np.concatenate(accuracy), blocks


def measure(masks: np.ndarray, y: np.ndarray, blocks, sizes) -> list[dict]:
    rows = []
    k = masks.shape[1]
    for m in sizes:
        # The smallest half: half the models, or the smallest half of the seed blocks.
        counts = (
            np.sort(np.bincount(blocks[:m])[np.unique(blocks[:m])]) if blocks is not None else None
        )
        half = m // 2 if counts is None else int(counts[: counts.size // 2].sum())
        seed_levels = 0 if counts is None else counts.size // 2 - 1  # spent on seeds in a half
        first = None if blocks is None else blocks[:m]
        for estimator in ESTIMATORS:
            if estimator == "regression" and half < k + 10 + seed_levels:
                continue
            split = split_half_stability(
                masks[:m], y[:m], splits=50, estimator=estimator, blocks=first
            )
            row = {
                "models": m,
                "estimator": estimator,
                "split_half": split.spearman,
                "models_for_0.9": split.models_needed(0.9),
                "lds": linear_datamodeling_score(
                    masks[:m], y[:m], m // 5, splits=200, estimator=estimator, blocks=first
                )[0],
            }
            rows.append(row)
            print(
                f"  m={m:4d} {estimator:10s} split-half {row['split_half']:.3f} "
                f"(0.9 needs ~{row['models_for_0.9']:.0f})  LDS {row['lds']:.3f}",
                flush=True,
            )
    return rows


def agreement(data: dict, a: str, b: str) -> dict:
    """Rank correlation of two arms' difference-in-means estimates from all their models, and
    its ceiling if both estimated the same ranking: sqrt(reliability_a * reliability_b), each
    reliability the split-half correlation stepped up to the whole run (Spearman-Brown). A
    ratio well below 1 means the arms rank differently, not only noisily."""
    values, reliability = {}, {}
    for arm in (a, b):
        masks, y, _, blocks = data[arm]
        values[arm] = estimate_influence(masks, y[:, None], chunks=blocks).overall.values[:, 0]
        r = split_half_stability(masks, y, splits=50, blocks=blocks).spearman
        reliability[arm] = 2 * r / (1 + r)
    raw = float(spearmanr(values[a], values[b]).statistic)
    ceiling = float(np.sqrt(max(reliability[a], 0.0) * max(reliability[b], 0.0)))
    result = {"arms": [a, b], "spearman": raw, "ceiling": ceiling, "ratio": raw / ceiling}
    print(f"{a} vs {b}: Spearman {raw:.3f}, ceiling {ceiling:.3f}, ratio {raw / ceiling:.2f}")
    return result


def median_errors(store: RunStore) -> dict[str, float]:
    """Median standard error of the overall influence, per estimator, as ``estimate`` gives it."""
    return {
        estimator: float(np.median(ClassInfluence(estimator=estimator).fit(store).classes_.stderr))
        for estimator in ESTIMATORS
    }


def error_gains(arms: dict) -> dict[str, dict[str, float]]:
    """(own-seed difference-in-means error / each arm's error)^2: at equal signal, how many
    times fewer models the arm needs."""
    if "independent" not in arms:
        return {}
    base = arms["independent"]["median_stderr"]["difference"]
    gains = {
        arm: {name: (base / error) ** 2 for name, error in values["median_stderr"].items()}
        for arm, values in arms.items()
    }
    for arm, values in gains.items():
        print(f"error gain {arm}: " + ", ".join(f"{k} {v:.2f}x" for k, v in values.items()))
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=240, help="models per arm")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--workdir", default="/tmp/ti-designs-real", help="kept: runs resume")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    recipe = dict(RECIPE, epochs=args.epochs, batch_size=args.batch_size)
    params = prepare_data(workdir, recipe)
    # What pretraining must beat: an untrained backbone with the same head.
    control = load_trainer("builtin", params).untrained_control(models=8)
    print(f"untrained backbone, same head: {control}", flush=True)
    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    data, seconds, stores = {}, {}, {}
    for arm in arms:
        print(f"training arm {arm!r}: {args.models} models", flush=True)
        stores[arm], seconds[arm] = train_arm(workdir, params, arm, args.models)
        data[arm] = overall_outputs(stores[arm])
    sizes = [m for m in (60, 120, 240, 480, 960) if m <= args.models]
    data_spec = {"size": SIZE, "source_per_class": SOURCE_PER_CLASS}
    data_spec.update(target_train=TARGET_TRAIN, target_test=TARGET_TEST)
    result: dict = {"recipe": recipe, "data": data_spec, "control": control, "arms": {}}
    for arm in arms:
        masks, y, accuracy, blocks = data[arm]
        share = explained_by_subsets(masks, y)
        print(
            f"arm {arm}: {len(y)} models, accuracy {accuracy.mean():.1%} (std "
            f"{accuracy.std() * 100:.2f} points), p_correct std {y.std() * 100:.2f} points, "
            f"subsets explain {share:.0%}",
            flush=True,
        )
        result["arms"][arm] = {
            "models": len(y),
            "seconds_per_model_this_call": seconds[arm],
            "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std()),
            "p_correct_std": float(y.std()),
            "share_explained_by_subsets": share,
            "rows": measure(masks, y, blocks, sizes),
            "median_stderr": median_errors(stores[arm]),
        }
    result["error_gains"] = error_gains(result["arms"])
    result["agreement"] = [agreement(data, a, b) for i, a in enumerate(arms) for b in arms[i + 1 :]]
    path = save_result("designs_real", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
