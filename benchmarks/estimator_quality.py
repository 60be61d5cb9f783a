"""What the regression estimator gains over the difference in means, and the statistic that
predicts it, checked for bias on simulated outputs with a known answer.

With fixed-size subsets the difference in means carries, in every class's error, the spread
that the *other* classes cause; the regression removes it but pays for fitting K effects. Its
gain in models (the ratio of error variances) is about

    gain(m) = (m - K) / (m (1 - s)),   s = the share of the spread the subsets explain,

so s decides the estimator at scale, and near m = K the difference in means wins regardless.

(a) Bias of the explained share (adjusted R^2): outputs simulated on the shared fixture's own
    masks with a known share s (additive class effects plus Gaussian noise), 40 draws per s.
(b) The gain measured at growing m on simulated masks (K = 100, s = 0.7), against gain(m).
(c) Real runs in ../shared/fixtures: the fixture (149 models of an independent script) and the
    160-model run of the old built-in recipe: the explained share and the spread of its
    jackknife, the measured gain at their m and the share it implies, the projected gain at
    m = 1,000 and 4,000, and the default estimator's choice; split-half stability (Spearman,
    top and bottom 10 with chance) and LDS of each estimator where it can be fitted.

    python benchmarks/estimator_quality.py [--draws 40]
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _common import save_result
from transfer_influence import RunStore, estimate_influence, make_jobs, record_file
from transfer_influence.estimation import ClassInfluence, InfluenceWarning
from transfer_influence.estimation.diagnostics import (
    explained_by_subsets,
    linear_datamodeling_score,
    split_half_stability,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURE = SHARED / "cifar100-to-cifar10-149-models.npz"
OLD_RECIPE = SHARED / "reference-run-160-old-recipe.tar.gz"


def predicted_gain(m: int, groups: int, share: float) -> float:
    return (m - groups) / (m * (1.0 - share))


def simulated_outputs(masks: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    composition = masks @ rng.normal(0.0, 1.0, masks.shape[1])
    composition -= composition.mean()
    noise = np.sqrt(composition.var() * (1.0 - share) / share)
    return composition + rng.normal(0.0, noise, len(masks))


def measured_gain(masks: np.ndarray, y: np.ndarray) -> float:
    errors = [
        np.median(estimate_influence(masks, y[:, None], estimator=e).overall.stderr)
        for e in ("difference", "regression")
    ]
    return float((errors[0] / errors[1]) ** 2)


def share_bias(draws: int) -> list[dict]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        masks = data["masks"]
    rows = []
    for share in (0.2, 0.46, 0.72):
        rng = np.random.default_rng([7, round(100 * share)])
        readings = [
            explained_by_subsets(masks, simulated_outputs(masks, share, rng)) for _ in range(draws)
        ]
        rows.append(
            {"share": share, "mean_reading": float(np.mean(readings)),
             "sd_reading": float(np.std(readings)), "draws": draws}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def gain_by_models(draws: int, share: float = 0.7, groups: int = 100) -> list[dict]:
    rows = []
    for m in (150, 300, 1000, 4000):
        gains = []
        for seed in range(max(3, draws // 8)):
            rng = np.random.default_rng([seed, m])
            masks = np.stack([j.mask for j in make_jobs(range(m), groups, 0.5, base_seed=seed)])
            gains.append(measured_gain(masks, simulated_outputs(masks, share, rng)))
        rows.append(
            {"models": m, "share": share, "measured_gain": float(np.median(gains)),
             "predicted_gain": predicted_gain(m, groups, share)}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def jackknife_spread(masks: np.ndarray, y: np.ndarray) -> float:
    """The delete-one jackknife's standard error of the explained share (conservative)."""
    m = len(y)
    keep = np.ones(m, bool)
    values = []
    for i in range(m):
        keep[i] = False
        values.append(explained_by_subsets(masks[keep], y[keep]))
        keep[i] = True
    return float(np.sqrt((m - 1) / m * np.sum((np.array(values) - np.mean(values)) ** 2)))


def real_run(store: RunStore) -> dict:
    fits = {e: ClassInfluence(estimator=e).fit(store) for e in ("difference", "regression")}
    chosen = ClassInfluence(diagnostics=False).fit(store).estimate_.estimator
    plain = fits["difference"]
    masks, y = _model_means(store)
    m, groups = masks.shape
    share = plain.explained_
    gain = measured_gain(masks, y)
    result = {
        "models": m,
        "groups": groups,
        "explained_by_subsets": share,
        "explained_jackknife_stderr": jackknife_spread(masks, y),
        "measured_gain": gain,
        "share_implied_by_gain": 1.0 - (m - groups) / (m * gain),
        "projected_gain": {n: predicted_gain(n, groups, share) for n in (1000, 4000)},
        "default_estimator": chosen,
    }
    for name, fit in fits.items():
        s = fit.stability_
        result[name] = {
            "lds": fit.lds_,
            "median_stderr_points": float(fit.classes_["stderr"].median()),  # unit_: points
            "split_half_spearman": s.spearman,
            "top_overlap": s.top_overlap,
            "bottom_overlap": s.bottom_overlap,
            "chance_overlap": s.chance_overlap,
            "models_for_spearman_0.9": s.models_needed(0.9),
            "models_for_bottom_8_of_10": s.overlap_models_needed("bottom", 0.8),
            "models_for_top_8_of_10": s.overlap_models_needed("top", 0.8),
        }
    if m // 2 >= groups + 10:
        regression = split_half_stability(masks, y, estimator="regression")
        result["regression"]["split_half_spearman_of_regression_halves"] = regression.spearman
    if m - m // 5 >= groups + 10:
        result["regression"]["lds_of_regression"] = linear_datamodeling_score(
            masks, y, m // 5, estimator="regression"
        )[0]
    print({k: v for k, v in result.items() if not isinstance(v, dict)}, flush=True)
    return result


def _model_means(store: RunStore) -> tuple[np.ndarray, np.ndarray]:
    masks, means = [], []
    for chunk in store.iter_outputs(store.resolve_key(None, None), "p_correct"):
        masks.append(chunk.masks)
        means.append(chunk.values.mean(axis=1, dtype=np.float64))
    return np.concatenate(masks), np.concatenate(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=40)
    args = parser.parse_args()
    if not FIXTURE.exists() or not OLD_RECIPE.exists():
        raise SystemExit(f"needs {FIXTURE} and {OLD_RECIPE}")
    warnings.simplefilter("ignore", InfluenceWarning)
    result: dict = {
        "share_bias": share_bias(args.draws),
        "gain_by_models": gain_by_models(args.draws),
    }
    with tempfile.TemporaryDirectory() as scratch:
        record_file(Path(scratch) / "fixture", FIXTURE, "cifar10")
        result["fixture"] = real_run(RunStore(Path(scratch) / "fixture"))
        with tarfile.open(OLD_RECIPE) as archive:
            archive.extractall(scratch, filter="data")
        result["old_recipe_160"] = real_run(RunStore(Path(scratch) / "reference"))
    print(save_result("estimator_quality", result))


if __name__ == "__main__":
    main()
