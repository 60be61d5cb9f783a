"""Would an independent run of this size rank the same? (pure numpy and scipy, no I/O)

The question a user asks of a ranking is whether another run like theirs — same number of
models, other subsets, other seeds — would put the same classes at the top and the bottom.
Split-half stability answers it for runs of half the size. Here it is answered for the run's
own size, and for any other, from the estimates and their standard errors:

1. The distribution of the true effects is estimated by deconvolution: the nonparametric
   maximum-likelihood prior (Kiefer-Wolfowitz, fitted by EM on a grid) of estimates that are
   true effects plus Gaussian noise of the known standard errors. It may be continuous,
   heavy-tailed or hold many exact ties (classes with the same effect, whose order no number
   of models can settle): the prior keeps point masses where the data put them.
2. True effects are drawn from each class's posterior under that prior, and two independent
   runs of n models are drawn around them (errors scaled by sqrt(m / n)); their agreement —
   Spearman correlation, the share of the top and bottom k they share — is averaged.
3. The models needed for an agreement is projected from the expected agreement at m: read as
   the reliability a Gaussian model of effects and errors would need to give it, which
   Spearman-Brown scales with the number of models (the deconvolved prior is discrete, and
   extrapolated far beyond m its atoms would tie classes that are not tied). A target above
   what many models reach under the prior (the ceiling where classes truly tie) is said to
   be out of reach.
4. The ranges are a parametric bootstrap: new estimates drawn around the posterior draws,
   deconvolved and projected again; percentiles of their spread about their median, placed
   around the estimate, make an 80% range: the 10th and 90th for the agreement, the 5th and
   95th for the models needed, whose error the bootstrap sees only in part (it cannot see
   where the Gaussian reading of step 3 is wrong for the effects at hand); in simulation its
   10th to 90th held the oracle in 69% of runs, its 5th to 95th in 80%.

benchmarks/trust_calibration.py checks predictions, projections and ranges against
independent simulated runs with a known answer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .diagnostics import (
    _ranks,
    reliability_for_overlap,
    reliability_for_spearman,
    shared_ends,
)

__all__ = ["Agreement", "agreement_curve", "effect_prior", "independent_agreement"]

GRID = 200  # support points of the deconvolved prior
EM_STEPS = 300
DRAWS = 100  # posterior draws per expected agreement
CEILING = 4096  # "many more models": the ceiling of the agreement is read at 4096 m
BOOTSTRAP = 30
RANGE = (10.0, 90.0)  # percentiles of the bootstrap: an 80% range of the agreement
PROJECTION_RANGE = (5.0, 95.0)  # an 80% range of the models needed (see step 4 above)
METRICS = ("spearman", "top", "bottom")


def effect_prior(
    values: np.ndarray, stderr: np.ndarray, grid: int = GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Support and weights of the nonparametric maximum-likelihood prior of the true effects,
    given estimates ``values`` with Gaussian errors ``stderr`` (both K,)."""
    from scipy.stats import norm  # here: a third of a second to import, for every command

    support = np.linspace(values.min(), values.max(), grid)
    likelihood = norm.pdf((values[:, None] - support) / stderr[:, None]) / stderr[:, None]
    weights = np.full(grid, 1.0 / grid)
    for _ in range(EM_STEPS):
        posterior = likelihood * weights
        posterior /= posterior.sum(axis=1, keepdims=True)
        weights = posterior.mean(axis=0)
    return support, weights


def _posterior_draws(
    values: np.ndarray,
    stderr: np.ndarray,
    prior: tuple[np.ndarray, np.ndarray],
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``draws`` x K true effects, each class's drawn from its posterior under ``prior``."""
    from scipy.stats import norm

    support, weights = prior
    posterior = norm.pdf((values[:, None] - support) / stderr[:, None]) * weights
    cumulative = np.cumsum(posterior / posterior.sum(axis=1, keepdims=True), axis=1)
    picks = (rng.random((draws, values.size, 1)) > cumulative[None]).sum(axis=2)
    return support[np.minimum(picks, support.size - 1)]


def _agreement(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Mean Spearman, top-k share and bottom-k share of rows of ``a`` against ``b``."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    spearman = (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    top, bottom = shared_ends(a, b, k)
    return np.array([spearman.mean(), top.mean(), bottom.mean()])


def agreement_curve(
    values: np.ndarray,
    stderr: np.ndarray,
    models: int,
    sizes: np.ndarray,
    k: int,
    seed: int = 0,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Expected agreement (len(sizes) x 3: Spearman, top share, bottom share) of two
    independent runs of each of ``sizes`` models, for estimates ``values`` with errors
    ``stderr`` from ``models`` models. The same random numbers serve every size, so the curve
    is smooth in n."""
    rng = np.random.default_rng(seed)
    prior = effect_prior(values, stderr) if prior is None else prior
    truth = _posterior_draws(values, stderr, prior, DRAWS, rng)
    noise = rng.standard_normal((2, *truth.shape)) * stderr
    return np.array(
        [
            _agreement(truth + noise[0] * scale, truth + noise[1] * scale, k)
            for scale in np.sqrt(models / np.asarray(sizes, dtype=np.float64))
        ]
    )


def _needed(name: str, agreement: float, target: float, models: int, groups: int, k: int) -> float:
    """Models for ``target`` given ``agreement`` at ``models``: both read as reliabilities
    (Spearman: the correlation of Gaussian scores whose expected Spearman over ``groups`` is
    it; shares: the Gaussian model of :func:`.diagnostics.expected_overlap`), then
    Spearman-Brown. NaN while the agreement is no more than chance's: there is nothing to
    project from yet."""
    if name == "spearman":
        have, want = (reliability_for_spearman(x, groups) for x in (agreement, target))
    else:
        have = reliability_for_overlap(agreement, groups, k)
        want = reliability_for_overlap(target, groups, k)
    if not have > 0.0:
        return math.nan
    if have >= 1.0:
        return float(models)
    return models * want * (1.0 - have) / (have * (1.0 - want))


@dataclass(frozen=True)
class Agreement:
    """The agreement expected between this run and an independent run of the same size.

    ``expected``: metric -> expected agreement at ``models`` ("spearman": rank correlation of
    the whole ranking; "top", "bottom": the share of the k most / least helpful the two runs
    share); ``ranges``: metric -> its 80% range; ``needed``: metric -> (models for the target
    in ``targets``, 80% range), inf where no number of models reaches it, NaN while the
    agreement is no more than chance's; ``ceiling``: metric -> what the expected agreement
    tends to with many models (below 1 where classes tie).
    """

    models: int
    groups: int
    k: int
    expected: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    targets: dict[str, float]
    needed: dict[str, tuple[float, float, float]]
    ceiling: dict[str, float] = field(default_factory=dict)

    @property
    def chance_share(self) -> float:
        """The share of its top (or bottom) k that a ranking ignoring the data would share."""
        return self.k / self.groups

    def to_record(self) -> dict:
        """As JSON holds it: a target out of reach is "inf", no projection yet None."""
        record = dataclasses.asdict(self)
        record["needed"] = {
            name: [x if math.isfinite(x) else None if math.isnan(x) else "inf" for x in values]
            for name, values in self.needed.items()
        }
        return record

    @classmethod
    def from_record(cls, record: dict) -> Agreement:
        """The inverse of :meth:`to_record`."""
        fields = dict(record)
        fields["ranges"] = {name: tuple(pair) for name, pair in record["ranges"].items()}
        fields["needed"] = {
            name: tuple(math.nan if x is None else float(x) for x in values)
            for name, values in record["needed"].items()
        }
        return cls(**fields)


def _project(
    values: np.ndarray,
    stderr: np.ndarray,
    models: int,
    k: int,
    seed: int,
    prior: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Expected agreement (3,) at ``models`` and with many more (the ceiling)."""
    sizes = np.array([models, CEILING * models])
    curve = agreement_curve(values, stderr, models, sizes, k, seed, prior)
    return curve[0], curve[1]


def _centred_range(point: float, boot: np.ndarray, log: bool = False) -> tuple[float, float]:
    """The 80% range around ``point`` that the bootstrap's spread about its own median gives
    (for model counts: on the log scale, between wider percentiles, see step 4 above, and
    the high end out of reach where more of the bootstrap than that percentile's share is).
    The bootstrap's world has its own truth, so its spread, not its centre, is what it says
    of the estimate."""
    if not math.isfinite(point):
        return point, point
    finite = boot[np.isfinite(boot)]
    if log:
        if finite.size < 2:
            return point, math.inf
        shift = np.log(finite) - np.median(np.log(finite))
        low, high = point * np.exp(np.percentile(shift, PROJECTION_RANGE))
        reachable = finite.size >= PROJECTION_RANGE[1] / 100.0 * boot.size
        return float(low), float(high) if reachable else math.inf
    low, high = point + np.percentile(boot - np.median(boot), RANGE)
    return float(low), float(high)


def independent_agreement(
    values: np.ndarray,
    stderr: np.ndarray,
    models: int,
    k: int,
    targets: dict[str, float] | None = None,
    seed: int = 0,
    bootstrap: int = BOOTSTRAP,
) -> Agreement:
    """The agreement between this run (estimates ``values`` with errors ``stderr``, K each,
    from ``models`` models) and an independent run of its size, the models each target in
    ``targets`` (default: Spearman 0.9, 8 of 10 at each end) needs, with 80% ranges."""
    targets = {"spearman": 0.9, "top": 0.8, "bottom": 0.8} if targets is None else targets
    keep = np.isfinite(values) & np.isfinite(stderr) & (stderr > 0)
    values, stderr = np.asarray(values, float)[keep], np.asarray(stderr, float)[keep]
    if values.size < max(3, 2 * k):
        raise ValueError(f"agreement needs at least {max(3, 2 * k)} groups with estimates")
    prior = effect_prior(values, stderr)
    at_m, ceiling = _project(values, stderr, models, k, seed, prior)
    rng = np.random.default_rng(seed + 1)
    again = []
    for b, truth in enumerate(_posterior_draws(values, stderr, prior, bootstrap, rng), start=2):
        redrawn = truth + rng.standard_normal(truth.size) * stderr
        refit = effect_prior(redrawn, stderr)
        again.append(_project(redrawn, stderr, models, k, seed + b, refit))
    ranges, needed = {}, {}
    for i, name in enumerate(METRICS):
        boot = np.array([a[0][i] for a in again])
        ranges[name] = _centred_range(float(at_m[i]), boot)
        if name not in targets:
            continue
        projected = [
            math.inf
            if top[i] < targets[name]
            else _needed(name, now[i], targets[name], models, values.size, k)
            for now, top in [(at_m, ceiling), *again]
        ]
        needed[name] = (
            projected[0],
            *_centred_range(projected[0], np.array(projected[1:]), log=True),
        )
    return Agreement(
        models=models,
        groups=int(values.size),
        k=k,
        expected={name: float(at_m[i]) for i, name in enumerate(METRICS)},
        ranges=ranges,
        targets=dict(targets),
        needed=needed,
        ceiling={name: float(ceiling[i]) for i, name in enumerate(METRICS)},
    )
