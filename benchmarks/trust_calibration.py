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
(c) The estimator choice where the two are close (K = 100, m = 150, subsets explaining 2/3
    of the spread between models, so both have about the same error; and 0.73 and 0.78, where
    the regression gains about auto's margin and 1.5x): coverage of every class's plain
    interval by the difference, the regression, the old rule (the narrower of the two after
    seeing them) and auto (the regression only with a margin).

    python benchmarks/trust_calibration.py [--runs 400]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np

from _common import save_result
from transfer_influence import estimate_influence, make_jobs
from transfer_influence.estimation import InfluenceWarning

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


def estimator_choice(runs: int, seed: int, share: float) -> dict:
    groups, m = 100, 150
    rng = np.random.default_rng([seed, round(share * 1000)])
    covered: dict[str, list[float]] = {"difference": [], "regression": [], "narrower": []}
    covered["auto"] = []
    auto_regression = []
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    result = {
        "runs": args.runs,
        "noise": NOISE,
        "ends": ends_coverage(args.runs, args.seed),
        "null_per_target_class": null_table(max(args.runs, 1000), args.seed + 1),
        # Shares where the regression's gain in models is 1.0, about auto's margin, and 1.5.
        "estimator_choice": [
            estimator_choice(args.runs, args.seed + 2, share) for share in (2 / 3, 0.73, 0.78)
        ],
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(result["null_per_target_class"], *result["estimator_choice"], sep="\n")
    print(save_result("trust_calibration", result))


if __name__ == "__main__":
    main()
