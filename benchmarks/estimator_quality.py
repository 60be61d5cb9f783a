"""Ranking quality per model spent: the paper's estimator and design versus the improved ones.

(a) Simulated overall outputs with effect sizes like the reference case's (per-class effects
    with a standard deviation of 0.14 points, training noise 0.15 points, so models differ by
    about 0.7 points as on the fixture): split-half rank stability, rank correlation with the
    true influence, and held-out LDS at growing m, for {random, complementary} subsets x
    {difference, regression}.
(b) The shared fixture (149 real models): LDS with 119 models fitted and 30 held out (200
    splits), and the split-half stability of the difference in means with its projection.
(c) A GPU run of the reference case (``--run DIR``, e.g. the accumulated reference run
    unpacked from benchmarks/results/): the same measurements on its models.

    python benchmarks/estimator_quality.py [--repeats 3] [--run DIR] [--skip-simulated]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import save_result
from transfer_influence import estimate_influence, make_jobs
from transfer_influence.estimation.diagnostics import (
    _ranks,
    explained_by_subsets,
    linear_datamodeling_score,
    split_half_stability,
)

GROUPS = 100
SIZES = (100, 200, 240, 320, 400, 800, 1600, 3200)
FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/cifar100-to-cifar10-149-models.npz"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def simulate(m: int, design: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 99])
    effects = rng.normal(0, 0.0014, size=GROUPS)  # 0.14 points of p_correct
    masks = np.stack([j.mask for j in make_jobs(range(m), GROUPS, 0.5, seed, design)])
    outputs = 0.625 + masks @ effects + rng.normal(0, 0.0015, size=m)
    truth = GROUPS / (GROUPS - 1) * (effects - effects.mean())
    return masks, outputs, truth


def simulated(repeats: int) -> list[dict]:
    rows = []
    for design in ("random", "complementary"):
        for estimator in ("difference", "regression"):
            for m in SIZES:
                if estimator == "regression" and m // 2 < GROUPS + 10:
                    continue  # each half must be fittable
                stats = []
                for seed in range(repeats):
                    masks, y, truth = simulate(m, design, seed)
                    est = estimate_influence(masks, y[:, None], estimator=estimator)
                    stats.append(
                        (
                            split_half_stability(masks, y, splits=20, estimator=estimator).spearman,
                            _spearman(est.overall.values[:, 0], truth),
                            linear_datamodeling_score(
                                masks, y, m // 5, splits=20, estimator=estimator
                            )[0]
                            if estimator == "difference" or m - m // 5 >= GROUPS + 10
                            else np.nan,
                        )
                    )
                split_half, truth_corr, lds = np.nanmean(np.array(stats, dtype=float), axis=0)
                rows.append(
                    {
                        "design": design,
                        "estimator": estimator,
                        "models": m,
                        "split_half": split_half,
                        "truth_spearman": truth_corr,
                        "lds": lds,
                    }
                )
                print(
                    f"{design:13s} {estimator:10s} m={m:5d}  split-half {split_half:.3f}  "
                    f"truth {truth_corr:.3f}  LDS {lds:.3f}",
                    flush=True,
                )
    return rows


def models_for(rows: list[dict], design: str, estimator: str, target: float = 0.9) -> float:
    """Smallest m on the grid whose split-half reaches ``target``, interpolated in log m."""
    points = [
        (r["models"], r["split_half"])
        for r in rows
        if r["design"] == design and r["estimator"] == estimator
    ]
    for (m0, r0), (m1, r1) in zip(points, points[1:], strict=False):
        if r0 < target <= r1:
            return float(np.exp(np.log(m0) + (target - r0) / (r1 - r0) * np.log(m1 / m0)))
    return points[0][0] if points and points[0][1] >= target else float("nan")


def real_models(masks: np.ndarray, y: np.ndarray) -> dict:
    """Plain versus improved on real models' overall outputs: LDS with a fifth held out
    (200 splits) for both estimators; split-half stability for the difference in means, and
    for the regression where each half has enough models to fit it; the share of the spread
    between models that their subsets explain (what the regression can remove)."""
    m = masks.shape[0]
    held_out = max(1, m // 5)
    stability = split_half_stability(masks, y, splits=200)
    result = {
        "models": int(m),
        "held_out": held_out,
        "lds_difference": linear_datamodeling_score(masks, y, held_out, 200)[0],
        "split_half_difference": stability.spearman,
        "models_for_0.9_difference": stability.models_needed(0.9),
        "explained_by_subsets": explained_by_subsets(masks, y),
    }
    if m - held_out >= GROUPS + 10:
        result["lds_regression"] = linear_datamodeling_score(masks, y, held_out, 200, "regression")[
            0
        ]
    if m // 2 >= GROUPS + 10:
        regression = split_half_stability(masks, y, splits=50, estimator="regression")
        result["split_half_regression"] = regression.spearman
        result["models_for_0.9_regression"] = regression.models_needed(0.9)
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})
    return result


def fixture() -> dict:
    if not FIXTURE.exists():
        return {"skipped": f"{FIXTURE} not found"}
    with np.load(FIXTURE, allow_pickle=False) as data:
        masks, y = data["masks"], data["p_correct"].astype(np.float32).mean(axis=1)
    return real_models(masks, y)


def gpu_run(run_dir: str) -> dict:
    from transfer_influence.store import RunStore

    store = RunStore(Path(run_dir))
    key = store.resolve_key(None, None)
    masks, means = [], []
    for chunk in store.iter_outputs(key, "p_correct"):
        masks.append(chunk.masks)
        means.append(chunk.values.mean(axis=1, dtype=np.float64))
    result = real_models(np.concatenate(masks), np.concatenate(means))
    return {
        "run": str(run_dir),
        "recipe": store.meta["config"]["trainer"]["params"].get("recipe"),
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", help="(c): a run directory of the reference case")
    parser.add_argument("--skip-simulated", action="store_true", help="only (b) and (c)")
    args = parser.parse_args()
    result: dict = {}
    if not args.skip_simulated:
        rows = simulated(args.repeats)
        needed = {
            f"{d}/{e}": models_for(rows, d, e)
            for d in ("random", "complementary")
            for e in ("difference", "regression")
        }
        print(
            "models for split-half 0.9:",
            {k: round(v) if v == v else None for k, v in needed.items()},
        )
        result.update(simulated=rows, **{"models_for_split_half_0.9": needed})
    result["fixture"] = fixture()
    if args.run:
        result["gpu_run"] = gpu_run(args.run)
    path = save_result("estimator_quality", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
