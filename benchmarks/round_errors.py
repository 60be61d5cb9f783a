"""Errors of the difference in means in designs whose models come in rounds.

In the complementary and balanced designs a round's models partition the groups, so the
pooled two-sample error (models as independent) is too small where the groups explain most
of the spread. Outputs exactly additive in 100 groups (effects N(0, 0.01) times a per-example
factor, noise 0.003), 200 models, 20 target examples, 8 seeded draws per design: coverage of
the per-example 95% intervals with the pooled error and with errors over rounds.

    python benchmarks/round_errors.py
"""

from __future__ import annotations

import numpy as np

from _common import save_result
from transfer_influence.estimation import estimate_influence
from transfer_influence.subsets import make_jobs, round_size

DESIGNS = (("complementary", 0.5), ("balanced", 0.25))


def main() -> None:
    result = {}
    for design, alpha in DESIGNS:
        covered = {"pooled": [], "rounds": []}
        for seed in range(8):
            rng = np.random.default_rng(seed)
            masks = np.stack([j.mask for j in make_jobs(range(200), 100, alpha, seed, design)])
            effects = rng.normal(0.0, 0.01, 100)
            per_example = rng.normal(1.0, 0.3, 20)
            outputs = 0.5 + (masks @ effects)[:, None] * per_example
            outputs += rng.normal(0.0, 0.003, outputs.shape)
            truth = 100 / 99 * (effects - effects.mean())[:, None] * per_example
            rounds = np.arange(200) // round_size(design, alpha)
            for name, given in (("pooled", None), ("rounds", rounds)):
                est = estimate_influence(masks, outputs, estimator="difference", rounds=given)
                low, high = est.per_example.ci(0.95)
                covered[name].append(float(np.mean((low <= truth) & (truth <= high))))
        result[design] = {name: float(np.mean(c)) for name, c in covered.items()}
        print(design, {name: f"{c:.1%}" for name, c in result[design].items()})
    print(save_result("round_errors", {"coverage": result}))


if __name__ == "__main__":
    main()
