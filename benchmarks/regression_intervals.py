"""Do the regression estimator's 95% intervals hold the truth?

Ridge shrinks estimates toward zero, most for the largest effects. This compares, on outputs
exactly additive in the groups (truth known), three intervals for the overall influence:
the ridge fit's own variance (what the estimator reported before), the one it reports now
(the unpenalised fit's interval, widened where needed to hold the ridge estimate), and plain
least squares; over all groups and over the most influential tenth (at least 3), for K = 20
and 100 groups, a few model counts and noise levels (effects N(0, 0.02) per group).

    python benchmarks/regression_intervals.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from _common import save_result
from transfer_influence.estimation import estimate_influence
from transfer_influence.subsets import make_jobs

CASES = [(20, 160), (100, 150), (100, 300)]  # (groups, models)
NOISE = (0.05, 0.1, 0.2, 0.4)  # per model, for K = 20; scaled by sqrt(K / 20)
REPEATS = {20: 100, 100: 30}


def ridge_variance_only(masks: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """The ridge fit's own standard error of each contrast, ignoring its bias."""
    x = masks.astype(np.float64)
    m, k = x.shape
    xc, yc = x - x.mean(axis=0), y - y.mean()
    g = xc.T @ xc
    a = np.linalg.inv(g + ridge * np.eye(k))
    beta = a @ (xc.T @ yc)
    dof = m - 1 - np.trace(a @ g)
    sigma2 = np.sum((yc - xc @ beta) ** 2) / dof
    contrast = k / (k - 1) * (np.eye(k) - 1.0 / k)
    return np.sqrt(np.einsum("ij,jk,ik->i", contrast, a @ g @ a, contrast) * sigma2)


def main() -> None:
    rows = []
    for k, m in CASES:
        for noise in NOISE:
            for seed in range(REPEATS[k]):
                rng = np.random.default_rng(seed)
                masks = np.stack([j.mask for j in make_jobs(range(m), k, 0.5, base_seed=seed)])
                effects = rng.normal(0.0, 0.02, k)
                scale = noise * np.sqrt(k / 20)
                y = masks @ effects + rng.normal(0.0, scale, m)
                truth = k / (k - 1) * (effects - effects.mean())
                top = np.argsort(-np.abs(truth))[: max(3, k // 10)]
                fit = estimate_influence(masks, y[:, None], estimator="regression")
                plain = estimate_influence(masks, y[:, None], estimator="regression", ridge=0.0)
                ridge = fit.ridge or 0.0
                t = stdtrit(fit.overall.dof, 0.975)
                own = ridge_variance_only(masks, y, ridge) if ridge else plain.overall.stderr[:, 0]
                values = fit.overall.values[:, 0]
                intervals = {
                    "ridge variance only": (values - t * own, values + t * own),
                    "reported": tuple(bound[:, 0] for bound in fit.overall.ci(0.95)),
                    "least squares": tuple(bound[:, 0] for bound in plain.overall.ci(0.95)),
                }
                for name, (low, high) in intervals.items():
                    held = (low <= truth) & (truth <= high)
                    estimate = plain.overall.values[:, 0] if name == "least squares" else values
                    rows.append(
                        {
                            "groups": k,
                            "models": m,
                            "noise": noise,
                            "seed": seed,
                            "interval": name,
                            "ridge": ridge,
                            "coverage": float(held.mean()),
                            "coverage_top": float(held[top].mean()),
                            "mean_half_width": float(np.mean(high - low) / 2),
                            "mean_abs_error": float(np.abs(estimate - truth).mean()),
                        }
                    )
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["groups", "models", "noise", "interval"], sort=False)
        .agg(
            runs=("seed", "size"),
            coverage=("coverage", "mean"),
            coverage_top=("coverage_top", "mean"),
            mean_half_width=("mean_half_width", "mean"),
            mean_abs_error=("mean_abs_error", "mean"),
        )
        .reset_index()
    )
    print(summary.to_string(index=False, float_format="{:.4f}".format))
    print(save_result("regression_intervals", {"summary": summary.to_dict("records")}))


if __name__ == "__main__":
    main()
