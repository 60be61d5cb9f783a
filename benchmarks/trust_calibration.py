"""Do the intervals, flags and estimator choice a user reads hold at their stated rates?
Checked on outputs simulated with a known answer (additive class effects plus Gaussian
training noise, on the tool's own fixed-size random subsets, alpha = 0.5).

(a) The ends as picked: coverage of the five most and five least helpful classes' intervals,
    plain and simultaneous (what `estimate`, `top` and the report's chart print), for
    K in {40, 100}, m in {150, 600} and three shapes of true effects: Gaussian, heavy-tailed
    (Student t, 3 degrees of freedom) and many exact ties (60% of classes with no effect).
    The estimator is the default, auto. The truth of class k is what both estimators estimate
    with fixed-size subsets: K / (K - 1) times its effect minus the mean effect.
(b) The per-target-class table under the null (no effect anywhere, K = 100, C = 10,
    m = 150): the share of runs that flag anything anywhere, with a family per target class
    and with one family for the whole table (what the tool does).
(c) The estimator choice: at K = 100, m = 150, subsets explaining 2/3 of the spread (both
    estimators about as good), 0.73 and 0.78 (where the regression gains about 1.2x and 1.5x
    in models), and at settings where the regression gains clearly (K = 40, m = 150 and
    K = 100, m = 300): coverage of every class's plain interval by the difference, the
    regression, the narrower of the two after seeing them, and auto (decided on half of
    the models), and how often auto took the regression.
(d) Would an independent run of the same size agree? Predicted against true agreement
    (Spearman, top and bottom shares of end_size(K)) at the settings of (a), with the
    difference in means; how often each 80% range holds the truth; how often the projected
    models for Spearman 0.9 and 8 of 10 at each end are at least the oracle's (the size at
    which the known effects give that agreement, interpolated in log size on a curve drawn
    with the same random numbers at every size), and how often their range holds it.
(e) `run configs/simulated.toml --set run.models=40 --until-stable top=8` (and top=9) over
    run seeds: where it stops, against the oracle measured with pairs of independent runs of
    the same simulated trainer on a grid of sizes; and `--until-stable spearman=0.9`, which no
    number of models reaches there (most groups have no effect and tie): where the run stops
    and whether it says the target is out of reach. Beside it, how often any rule that reads
    one run could stop within 1.5x of the oracle: the error of the predicted top share at the
    oracle's size (30 independent runs) against the true share's slope in log size.

    python benchmarks/trust_calibration.py [--runs 400] [--agreement-runs 40] [--sections abcde]

With --sections, the sections not named are carried over from the newest result, which the
JSON names for each (``carried_over``), so one section can be measured again after a change.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _common import RESULTS, save_result
from transfer_influence import RunStore, estimate_influence, load_config, make_jobs
from transfer_influence.cli import main as cli_main
from transfer_influence.estimation import InfluenceWarning
from transfer_influence.estimation.agreement import _agreement, independent_agreement
from transfer_influence.estimation.diagnostics import end_size, overall_difference
from transfer_influence.trainers.simulated import SimulatedTrainer

NOISE = 3.5  # training noise of a model's mean output, against effects of sd 1


def effects(shape: str, groups: int, rng: np.random.Generator) -> np.ndarray:
    if shape == "gaussian":
        theta = rng.normal(0.0, 1.0, groups)
    elif shape == "t3":
        theta = rng.standard_t(3, groups) / math.sqrt(3.0)
    else:  # ties: most classes have exactly no effect
        theta = np.where(rng.random(groups) < 0.6, 0.0, rng.normal(0.0, 1.6, groups))
    return theta


def truth(theta: np.ndarray) -> np.ndarray:
    k = theta.size
    return k / (k - 1) * (theta - theta.mean())


def masks_for(m: int, groups: int, seed: int) -> np.ndarray:
    return np.stack([j.mask for j in make_jobs(range(m), groups, 0.5, base_seed=seed)])


def ends_coverage(runs: int, seed: int) -> list[dict]:
    rows = []
    for groups in (40, 100):
        for m in (150, 600):
            for shape in ("gaussian", "t3", "ties"):
                rng = np.random.default_rng([seed, groups, m, len(shape)])
                plain, simultaneous, joint, chosen = [], [], [], []
                for r in range(runs):
                    theta = effects(shape, groups, rng)
                    masks = masks_for(m, groups, seed * 100_000 + r)
                    y = masks @ theta + rng.normal(0.0, NOISE, m)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", InfluenceWarning)
                        estimate = estimate_influence(masks, y[:, None], estimator="auto")
                    overall = estimate.overall
                    order = np.argsort(-overall.values[:, 0])
                    ends = np.concatenate([order[:5], order[-5:]])
                    true = truth(theta)[ends]
                    low, high = overall.ci(0.95)
                    s_low, s_high = overall.simultaneous_ci(0.95)
                    plain.append(np.mean((low[ends, 0] <= true) & (true <= high[ends, 0])))
                    held = (s_low[ends, 0] <= true) & (true <= s_high[ends, 0])
                    simultaneous.append(np.mean(held))
                    joint.append(bool(held.all()))
                    chosen.append(estimate.estimator)
                rows.append(
                    {
                        "groups": groups,
                        "models": m,
                        "shape": shape,
                        "plain": float(np.mean(plain)),
                        "simultaneous": float(np.mean(simultaneous)),
                        "simultaneous_all_ten": float(np.mean(joint)),
                        "regression_chosen": float(np.mean(np.array(chosen) == "regression")),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def null_table(runs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    masks = masks_for(150, 100, seed)
    whole, separate = [], []
    for _ in range(runs):
        est = estimate_influence(masks, rng.normal(0.0, 1.0, (150, 10))).per_example
        whole.append(bool((est.q_values(whole_table=True) <= 0.05).any()))
        separate.append(bool((est.q_values() <= 0.05).any()))
    return {
        "runs": runs,
        "any_flag_whole_table": float(np.mean(whole)),
        "any_flag_family_per_target_class": float(np.mean(separate)),
    }


def estimator_choice(runs: int, seed: int, groups: int, m: int, share: float) -> dict:
    rng = np.random.default_rng([seed, groups, m, round(share * 1000)])
    covered: dict[str, list[float]] = {"difference": [], "regression": [], "narrower": []}
    covered["auto"] = []
    auto_regression, gain = [], []
    for r in range(runs):
        theta = rng.normal(0.0, 1.0, groups)
        masks = masks_for(m, groups, seed * 100_000 + r)
        signal = masks @ theta
        noise = math.sqrt(signal.var() * (1 - share) / share)
        y = (signal + rng.normal(0.0, noise, m))[:, None]
        true = truth(theta)
        fits = {}
        for name in ("difference", "regression", "auto"):
            fits[name] = estimate_influence(masks, y, estimator=name)
        errors = {n: np.median(fits[n].overall.stderr[:, 0]) for n in ("difference", "regression")}
        gain.append((errors["difference"] / errors["regression"]) ** 2)
        fits["narrower"] = fits[min(errors, key=errors.get)]
        for name, fit in fits.items():
            low, high = fit.overall.ci(0.95)
            covered[name].append(float(np.mean((low[:, 0] <= true) & (true <= high[:, 0]))))
        auto_regression.append(fits["auto"].estimator == "regression")
    return {
        "groups": groups,
        "models": m,
        "explained_share": share,
        "runs": runs,
        "coverage": {name: float(np.mean(values)) for name, values in covered.items()},
        "coverage_se": {
            name: float(np.std(values) / math.sqrt(len(values))) for name, values in covered.items()
        },
        "auto_took_regression": float(np.mean(auto_regression)),
        "regression_gain_in_models": float(np.median(gain)),
    }


SIZES = 2.0 ** np.arange(-3, 13.5, 0.25)  # oracle run sizes, as multiples of m


def true_agreement(theta: np.ndarray, n: float, k: int, noise: np.ndarray) -> np.ndarray:
    """Expected agreement (Spearman, top share, bottom share) of two independent runs of n
    models under the known effects, from ``noise``: standard normals (2, pairs, K). The
    difference in means' error is 2 sd(y) / sqrt(n)."""
    groups = theta.size
    variance = 0.25 * groups / (groups - 1) * ((theta - theta.mean()) ** 2).sum() + NOISE**2
    runs = truth(theta) + noise * 2.0 * math.sqrt(variance / n)
    return _agreement(runs[0], runs[1], k)


def _crossing(shares, sizes, goal: float) -> float:
    """The size where a curve first reaches ``goal``, interpolated in log size."""
    shares, sizes = np.asarray(shares), np.asarray(sizes, dtype=np.float64)
    above = np.flatnonzero(shares >= goal)
    if not above.size:
        return float("inf")
    i = above[0]
    if i == 0:
        return float(sizes[0])
    t = (goal - shares[i - 1]) / (shares[i] - shares[i - 1])
    return float(np.exp(np.log(sizes[i - 1]) + t * np.log(sizes[i] / sizes[i - 1])))


def _per_metric(values: list, how: Callable = np.mean) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {n: float(how(array[:, i])) for i, n in enumerate(("spearman", "top", "bottom"))}


def agreement_calibration(runs: int, seed: int) -> list[dict]:
    """Predicted against true agreement with an independent run of the same size, the
    projected models against the oracle's, and how often each 80% range holds the truth."""
    rows = []
    for groups in (40, 100):
        for m in (150, 600):
            for shape in ("gaussian", "t3", "ties"):
                rng = np.random.default_rng([seed, groups, m, len(shape), 7])
                k = end_size(groups)
                error, held, above, held_needed = [], [], [], []
                for r in range(runs):
                    theta = effects(shape, groups, rng)
                    masks = masks_for(m, groups, seed * 100_000 + r)
                    y = masks @ theta + rng.normal(0.0, NOISE, m)
                    overall = estimate_influence(masks, y[:, None]).overall
                    found = independent_agreement(
                        overall.values[:, 0], overall.stderr[:, 0], m, k, seed=r
                    )
                    at_m = true_agreement(theta, m, k, rng.standard_normal((2, 200, groups)))
                    # The same random numbers at every size: a smooth curve, a clean crossing.
                    noise = rng.standard_normal((2, 200, groups))
                    curve = np.array([true_agreement(theta, n, k, noise) for n in SIZES * m])
                    row_error, row_held, row_above, row_needed = [], [], [], []
                    for i, name in enumerate(("spearman", "top", "bottom")):
                        low, high = found.ranges[name]
                        oracle = _crossing(curve[:, i], SIZES * m, found.targets[name])
                        point, n_low, n_high = found.needed[name]
                        row_error.append(found.expected[name] - at_m[i])
                        row_held.append(low <= at_m[i] <= high)
                        row_above.append(point >= oracle)
                        row_needed.append(n_low <= oracle <= n_high)
                    error.append(row_error)
                    held.append(row_held)
                    above.append(row_above)
                    held_needed.append(row_needed)
                rows.append(
                    {
                        "groups": groups,
                        "models": m,
                        "shape": shape,
                        "runs": runs,
                        "bias": _per_metric(error),
                        "error_sd": _per_metric(error, np.std),
                        "range_holds_truth": _per_metric(held),
                        "projection_at_least_oracle": _per_metric(above),
                        "projection_range_holds_oracle": _per_metric(held_needed),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _simulated_means(trainer: SimulatedTrainer, models: int, seed: int) -> tuple:
    jobs = make_jobs(range(models), trainer.groups, 0.5, base_seed=seed)
    labels = trainer.describe().targets[0].labels
    means = []
    for result in trainer.train(jobs):
        logits = result.logits["sim/fixed_feature"].astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        means.append(p[np.arange(labels.size), labels].mean())
    return np.stack([j.mask for j in jobs]), np.array(means)


def _top_share(trainer: SimulatedTrainer, k: int, n: int, pairs: int) -> float:
    """The mean share of their top ``k`` that two independent runs of ``n`` models share."""
    shared = []
    for p in range(pairs):
        a = overall_difference(*_simulated_means(trainer, n, 1000 + 2 * p))
        b = overall_difference(*_simulated_means(trainer, n, 1001 + 2 * p))
        shared.append(np.intersect1d(np.argsort(-a)[:k], np.argsort(-b)[:k]).size / k)
    return float(np.mean(shared))


def until_stable(seeds: int, pairs: int, fine_models: int = 200_000) -> dict:
    """`run configs/simulated.toml --until-stable top=8` (9) over run seeds: where it stops,
    against the oracle (the size at which two independent runs of the same trainer share 8
    of their top 10 on average). The oracle is found on a coarse grid of sizes (``pairs``
    pairs of runs each), then on a fine grid around its crossing with about ``fine_models``
    models a size: with 20 pairs the share's error (about 0.02) moved the oracle by 1.4x,
    where the curve is flat."""
    config = Path(__file__).resolve().parents[1] / "configs" / "simulated.toml"
    params = load_config(config).trainer.params
    trainer = SimulatedTrainer(**{**params, "modes": ["fixed_feature"]})
    k = end_size(trainer.groups)
    sizes = (20 * 2.0 ** np.arange(0, 9.5, 0.5)).astype(int)
    curve = []
    for n in sizes:
        curve.append(_top_share(trainer, k, n, pairs))
        print("oracle", n, curve[-1], flush=True)
    result: dict = {"oracle_sizes": sizes.tolist(), "oracle_top_share": curve, "targets": {}}
    for top in (8, 9):
        smooth = np.convolve(np.pad(curve, 1, mode="edge"), np.ones(3) / 3, mode="valid")
        coarse = _crossing(smooth, sizes, top / k)
        fine_sizes = (coarse * 2.0 ** np.arange(-0.75, 0.76, 0.25)).astype(int)
        fine_pairs = [max(pairs, fine_models // (2 * int(n))) for n in fine_sizes]
        fine = []
        for n, n_pairs in zip(fine_sizes, fine_pairs, strict=True):
            fine.append(_top_share(trainer, k, n, n_pairs))
            print("oracle, fine", n, n_pairs, fine[-1], flush=True)
        oracle = _crossing(fine, fine_sizes, top / k)
        stops = _stops(config, f"top={top}", seeds)
        ratio = np.array([s["models"] for s in stops], dtype=np.float64) / oracle
        result["targets"][f"top={top}"] = {
            "oracle_models": oracle,
            "oracle_fine_sizes": fine_sizes.tolist(),
            "oracle_fine_pairs": fine_pairs,
            "oracle_fine_top_share": fine,
            "stops": stops,
            "median_stop_over_oracle": float(np.median(ratio)),
            "within_1_5x_of_oracle": float(np.mean((ratio <= 1.5) & (ratio >= 1 / 1.5))),
            **_best_one_run_can_do(trainer, k, oracle, fine_sizes, fine, runs=3 * seeds),
        }
    # Spearman 0.9 cannot be reached: groups with no effect at all tie, and their order is
    # chance's in any run. Where does the run stop, and does it say why?
    truth = trainer.true_influence(trainer.targets[0], "fixed_feature")
    tied = int(np.unique(truth, axis=0, return_counts=True)[1].max())
    groups = trainer.groups
    result["unreachable"] = {
        "target": "spearman=0.9",
        "tied_groups": tied,
        "true_ceiling": 1.0 - tied * (tied**2 - 1) / (groups * (groups**2 - 1)),
        "stops": _stops(config, "spearman=0.9", seeds),
    }
    return result


def _best_one_run_can_do(
    trainer: SimulatedTrainer, k: int, oracle: float, sizes, shares, runs: int
) -> dict:
    """How often any rule that reads one run's estimates can stop within 1.5x of the oracle:
    one that stops where its expected top share crosses the target, without bias, errs in
    log size by that prediction's error at the oracle's size (measured over ``runs``
    independent runs of that size) over the slope of the true share in log size."""
    from scipy.stats import norm

    n = int(round(oracle))
    predicted = []
    for r in range(runs):
        masks, means = _simulated_means(trainer, n, 5000 + r)
        overall = estimate_influence(masks, means[:, None]).overall
        found = independent_agreement(overall.values[:, 0], overall.stderr[:, 0], n, k)
        predicted.append(found.expected["top"])
    spread = float(np.std(predicted, ddof=1))
    slope = float(np.polyfit(np.log(sizes), shares, 1)[0])
    return {
        "predicted_top_share_sd_at_oracle": spread,
        "true_share_slope_per_e_fold": slope,
        "ideal_within_1_5x": float(2.0 * norm.cdf(math.log(1.5) * slope / spread) - 1.0),
    }


def _stops(config: Path, target: str, seeds: int) -> list[dict]:
    """Where `run --until-stable TARGET` stops on ``config`` for run seeds 0 to seeds - 1."""
    stops = []
    with tempfile.TemporaryDirectory() as folder:
        for s in range(seeds):
            run = Path(folder) / f"run{s}"
            argv = ["run", str(config), "--run-dir", str(run), "--quiet", "--set"]
            argv += [f"run.seed={s}", "--set", "run.models=40", "--until-stable"]
            argv += [target, "--max-models", "20000"]
            with contextlib.redirect_stdout(io.StringIO()) as said:
                code = cli_main(argv)
            text = said.getvalue()
            stops.append(
                {
                    "code": code,
                    "models": RunStore(run).planned_models,
                    "met": "target met" in text,
                    "out_of_reach": "target is out of reach" in text,
                }
            )
            print(target, stops[-1], flush=True)
    return stops


def _measured_where(earlier: dict, file: str, section: str) -> dict:
    """Which file and commit measured a section of an earlier result."""
    if section in earlier.get("carried_over", {}):
        return earlier["carried_over"][section]
    if section in "abcd" and "sections_a_to_d_from" in earlier:  # the older record of it
        return earlier["sections_a_to_d_from"]
    return {"file": file, "git_sha": earlier.get("git_sha")}


CHOICE_SETTINGS = [(100, 150, 2 / 3), (100, 150, 0.73), (100, 150, 0.78)]
CHOICE_SETTINGS += [(40, 150, 0.5), (40, 150, 0.73), (100, 300, 0.5), (100, 300, 0.73)]
KEYS = {  # section: the keys of the result it writes
    "a": ("runs", "ends"),
    "b": ("null_per_target_class",),
    "c": ("estimator_choice",),
    "d": ("agreement",),
    "e": ("until_stable",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement-runs", type=int, default=40)
    parser.add_argument("--stable-seeds", type=int, default=10)
    parser.add_argument("--sections", default="abcde", help="measure only these, e.g. ac")
    args = parser.parse_args()
    started = time.perf_counter()
    measure = {
        "a": lambda: {"runs": args.runs, "ends": ends_coverage(args.runs, args.seed)},
        "b": lambda: {"null_per_target_class": null_table(max(args.runs, 1000), args.seed + 1)},
        "c": lambda: {
            "estimator_choice": [
                estimator_choice(args.runs, args.seed + 2, *setting) for setting in CHOICE_SETTINGS
            ]
        },
        "d": lambda: {"agreement": agreement_calibration(args.agreement_runs, args.seed + 3)},
        "e": lambda: {"until_stable": until_stable(args.stable_seeds, pairs=20)},
    }
    result: dict = {"noise": NOISE, "seed": args.seed, "carried_over": {}}  # of those measured
    unknown = set(args.sections) - set(KEYS)
    if unknown:
        parser.error(f"unknown sections {''.join(sorted(unknown))}; choose from abcde")
    for section in args.sections:
        result.update(measure[section]())
        print(section, "done", flush=True)
    # Read at the end, so that sections measured side by side carry each other's results.
    newest = sorted(RESULTS.glob("trust_calibration-*.json"))
    earlier = json.loads(newest[-1].read_text()) if newest else {}
    for section, keys in KEYS.items():
        if section not in args.sections and all(key in earlier for key in keys):
            result.update({key: earlier[key] for key in keys})
            result["carried_over"][section] = _measured_where(earlier, newest[-1].name, section)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(save_result("trust_calibration", result))


if __name__ == "__main__":
    main()
