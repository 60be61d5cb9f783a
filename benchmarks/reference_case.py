"""The reference case on a GPU: how far its ranking can be trusted as the run grows, what a
trustworthy one would cost, and what removing the least helpful classes does.

    python benchmarks/reference_case.py [--sizes 48,96,144,192,240,288] [--archive FILE.npz]
                                        [--prune-dir DIR] [--old-recipe TARBALL]
                                        [--splits N] [--replicates N]

Reads the archived GPU runs of configs/cifar100-to-cifar10-validation.toml
(benchmarks/data/reference-validation.npz, grown by benchmarks/reference_archive.py). At each
size, on the archive's first models, for the difference in means and for the regression:
whether an independent run of that size would agree (the top and bottom 10, Spearman; 80%
ranges), the models and GPU-minutes projected to a bottom 10 that repeats 8 of 10 and to
Spearman 0.9, the held-out LDS, the explained share and split-half as measured; whether one
half of the archive expects what the other half gives (two independent runs), and how far
that check strays by chance on outputs simulated from the archive's own fit. Beside it,
at equal size, the old recipe's 160-model run (../shared/fixtures; skipped without it).
Pruning: `transfer-influence prune` of the run (its results.csv and plan.json, kept in
benchmarks/data/reference-prune/), summarised as the tool does, with the figure written to
docs/figures/reference-pruning.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from _common import save_result
from transfer_influence import ClassInfluence, RunStore
from transfer_influence.estimation import InfluenceWarning, estimate_influence
from transfer_influence.estimation.agreement import (
    _posterior_draws,
    agreement_curve,
    effect_prior,
    independent_agreement,
)
from transfer_influence.estimation.diagnostics import end_size, shared_ends
from transfer_influence.experiments.pruning.summary import headline, summarise
from transfer_influence.report.figures import pruning_accuracy
from transfer_influence.store.importing import record_arrays

HERE = Path(__file__).resolve().parent
ARCHIVE = HERE / "data" / "reference-validation.npz"
PRUNE = HERE / "data" / "reference-prune"
FIGURE = HERE.parent / "docs" / "figures" / "reference-pruning.png"
OLD_RECIPE = HERE.parents[1] / "shared" / "fixtures" / "reference-run-160-old-recipe.tar.gz"
PER_MODEL = ("masks", "p_correct", "correct")


def trust(store: RunStore, seconds_per_model: float | None) -> dict:
    """The trust figures of one run, for both estimators (None where one cannot fit)."""
    figures: dict = {}
    for estimator in ("difference", "regression"):
        try:
            fit = ClassInfluence(estimator=estimator).fit(store)
        except (ValueError, RuntimeError) as error:
            figures[estimator] = {"error": str(error).splitlines()[0]}
            continue
        agreement, split = fit.agreement_, fit.stability_
        needed = agreement.to_record()["needed"]  # out of reach "inf", no projection None
        minutes = {
            name: None
            if seconds_per_model is None or not isinstance(values[0], float)
            else values[0] * seconds_per_model / 60
            for name, values in needed.items()
        }
        figures[estimator] = {
            "estimator_used": fit.estimate_.estimator,
            "expected": agreement.expected,
            "ranges": {name: list(pair) for name, pair in agreement.ranges.items()},
            "chance_share": agreement.chance_share,
            "needed": needed,
            "ties": dataclasses.asdict(agreement.ties),
            "gpu_minutes_needed": minutes,
            "lds": fit.lds_,
            "explained": fit.explained_,
            "median_stderr_points": float(fit.classes_["stderr"].median()),
            "split_half": None
            if split is None
            else {"spearman": split.spearman, "top": split.top_overlap,
                  "bottom": split.bottom_overlap, "estimator": split.estimator},
            "top_10": fit.classes_["group"].head(10).tolist(),
            "bottom_10": fit.classes_["group"].tail(10).tolist(),
        }  # fmt: skip
    return figures


def growth(archive: dict, sizes: list[int], seconds: float, scratch: Path) -> list[dict]:
    rows = []
    for m in sizes:
        arrays = {k: (v[:m] if k in PER_MODEL else v) for k, v in archive.items()}
        record_arrays(scratch / f"m{m}", arrays, "cifar10", "fixed_feature", 0.5)
        rows.append({"models": m, **trust(RunStore(scratch / f"m{m}"), seconds)})
        d = rows[-1]["difference"]
        print(f"m={m}: top {d['expected']['top']:.2f} bottom {d['expected']['bottom']:.2f} "
              f"spearman {d['expected']['spearman']:.2f}", flush=True)  # fmt: skip
    return rows


def _model_means(archive: dict) -> np.ndarray:
    """Each model's mean p(correct) over the target images (models x 1)."""
    return archive["p_correct"].astype(np.float64).mean(axis=1, keepdims=True)


def _split(masks: np.ndarray, means: np.ndarray, rng: np.random.Generator) -> tuple:
    """One random split into two disjoint halves: their fits and the agreement they show."""
    half, k = len(masks) // 2, end_size(masks.shape[1])
    order = rng.permutation(len(masks))
    fits = [
        estimate_influence(masks[part], means[part]).overall
        for part in (order[:half], order[half : 2 * half])
    ]
    a, b = (fit.values[:, 0] for fit in fits)
    top, bottom = shared_ends(a, b, k)
    measured = {"top": float(top), "bottom": float(bottom),
                "spearman": float(spearmanr(a, b).statistic)}  # fmt: skip
    return fits, measured


def halves(archive: dict, splits: int, seed: int = 0) -> dict:
    """Two disjoint random halves of the archive are two independent runs of half its size:
    does what one half expects of an independent run of its size match what the other half
    gives? Both directions of every split; the splits share models, so they are not
    independent checks."""
    masks, means = archive["masks"], _model_means(archive)
    half, k = len(masks) // 2, end_size(masks.shape[1])
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    ranked = np.argsort(estimate_influence(masks, means).overall.values[:, 0])
    z = []  # the halves' difference in units of its standard error: N(0, 1) if errors are right
    for _ in range(splits):
        fits, measured = _split(masks, means, rng)
        a, b = (fit.values[:, 0] for fit in fits)
        z.append((a - b) / np.hypot(fits[0].stderr[:, 0], fits[1].stderr[:, 0]))
        for fit in fits:
            expected = independent_agreement(fit.values[:, 0], fit.stderr[:, 0], half, k)
            for name, value in measured.items():
                low, high = expected.ranges[name]
                rows.setdefault(name, []).append((expected.expected[name], value, low, high))
    summary = {}
    for name, values in rows.items():
        expected, measured, low, high = np.array(values).T
        # The ranges are for the expected agreement, which the measured mean estimates; a
        # single pair of runs scatters around it by the measured spread.
        summary[name] = {
            "expected_mean": float(expected.mean()),
            "measured_mean": float(measured.mean()),
            "measured_sd": float(measured.std()),
            "ranges_holding_measured_mean": float(
                np.mean((low <= measured.mean()) & (measured.mean() <= high))
            ),
        }
    z = np.array(z)
    summary["error_check"] = {
        "z_sd_all": float(z.std()),
        "z_sd_bottom": float(z[:, ranked[:k]].std()),
        "z_sd_top": float(z[:, ranked[-k:]].std()),
    }
    return {"models_per_half": half, "splits": splits, "k": k, **summary}


def halves_by_chance(archive: dict, splits: int, replicates: int, seed: int = 1) -> dict:
    """How far the halves check strays by chance alone, when every assumption of the agreement
    holds: the archive's own masks, true effects drawn from its deconvolved posterior,
    additive, with Gaussian noise of its residual spread. Each replicate runs the halves
    check on such outputs (the expected agreement without its ranges); its gap is the
    measured mean minus the expected mean. A real gap inside their spread is chance; one
    beyond it says the real effects or errors are not what the agreement assumes."""
    masks, means = archive["masks"], _model_means(archive)
    models, groups = masks.shape
    half, k = models // 2, end_size(groups)
    fit = estimate_influence(masks, means).overall
    values, stderr = fit.values[:, 0], fit.stderr[:, 0]
    prior = effect_prior(values, stderr)
    design = np.column_stack([np.ones(models), masks])
    residual = means[:, 0] - design @ np.linalg.lstsq(design, means[:, 0], rcond=None)[0]
    noise = float(np.sqrt(residual @ residual / (models - np.linalg.matrix_rank(design))))
    rng = np.random.default_rng(seed)
    gaps: dict[str, list[float]] = {name: [] for name in ("spearman", "top", "bottom")}
    for _ in range(replicates):
        # An additive effect theta gives K / (K - 1) (theta - mean) with fixed-size subsets.
        truth = _posterior_draws(values, stderr, prior, 1, rng)[0] * (groups - 1) / groups
        outputs = (masks @ truth + rng.normal(0.0, noise, models))[:, None]
        expected, measured = [], []
        for _ in range(splits):
            fits, shown = _split(masks, outputs, rng)
            measured.append([shown[name] for name in gaps])
            for part in fits:
                curve = agreement_curve(part.values[:, 0], part.stderr[:, 0], half, [half], k)
                expected.append(curve[0])
        gap = np.mean(measured, axis=0) - np.mean(expected, axis=0)
        for name, value in zip(gaps, gap, strict=True):
            gaps[name].append(float(value))
    return {
        "replicates": replicates,
        "residual_sd": noise,
        **{
            name: {"gap_median": float(np.median(g)), "gap_range_80": [
                float(x) for x in np.percentile(g, [10, 90])], "gaps": g}
            for name, g in gaps.items()
        },
    }  # fmt: skip


def old_recipe(tarball: Path, scratch: Path) -> dict | None:
    if not tarball.exists():
        return None
    with tarfile.open(tarball) as archive:
        archive.extractall(scratch / "old", filter="data")
    store = RunStore(scratch / "old" / "reference")
    done = [c for c in store.chunks if store.is_done(c)]
    metas = [(store.chunk_meta(c), c.size) for c in done]
    seconds = float(np.median([(m["finished"] - m["started"]) / size for m, size in metas]))
    return {
        "models": sum(c.size for c in done),
        "seconds_per_model": seconds,
        "device_name": metas[0][0]["provenance"].get("device_name"),
        "recipe": store.config.trainer.params.get("recipe"),
        **trust(store, seconds),
    }


def pruning(folder: Path) -> dict | None:
    if not (folder / "results.csv").exists():
        return None
    results = pd.read_csv(folder / "results.csv")
    plan = json.loads((folder / "plan.json").read_text())
    summary, chosen = summarise(results)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    FIGURE.write_bytes(pruning_accuracy(summary))
    return {
        "ranked_on_models": plan["n_models"],
        "ranked_by": plan["estimator"],
        "chosen_k": chosen,
        "headline": headline(summary, chosen),
        "conditions": summary.to_dict("records"),
        "seconds_per_model": float(results["seconds"].median()),
        "figure": str(FIGURE.relative_to(HERE.parent)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="48,96,144,192,240,288")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--prune-dir", type=Path, default=PRUNE)
    parser.add_argument("--splits", type=int, default=40, help="random halvings checked")
    parser.add_argument("--replicates", type=int, default=40, help="halves checks by chance")
    parser.add_argument("--old-recipe", type=Path, default=OLD_RECIPE, help="its run's tarball")
    args = parser.parse_args()
    warnings.simplefilter("ignore", InfluenceWarning)
    info = json.loads(args.archive.with_suffix(".json").read_text())
    with np.load(args.archive, allow_pickle=False) as stored:
        archive = {name: stored[name] for name in stored.files}
    total = len(archive["masks"])
    sizes = [m for m in map(int, args.sizes.split(",")) if m <= total]
    runs = info["runs"]
    seconds = sum(r["gpu_seconds_per_model"] * r["models"] for r in runs) / total
    made_on = [entry for r in runs for entry in r["made_on"]]
    result: dict = {
        "archived_models": total,
        "runs": runs,
        "gpu_seconds_per_model": seconds,
        "trained_on": sorted({entry["device_name"] for entry in made_on}),
        "recipe": info["config"]["trainer"]["params"].get("recipe"),
    }
    with tempfile.TemporaryDirectory() as scratch:
        result["growth"] = growth(archive, sizes, seconds, Path(scratch))
        if total >= 160:
            result["new_recipe_160"] = growth(archive, [160], seconds, Path(scratch))[0]
        result["old_recipe_160"] = old_recipe(args.old_recipe, Path(scratch))
    result["halves"] = halves(archive, args.splits)
    result["halves"]["by_chance"] = halves_by_chance(archive, args.splits, args.replicates)
    result["pruning"] = pruning(args.prune_dir)
    print(save_result("reference_case", result))


if __name__ == "__main__":
    main()
