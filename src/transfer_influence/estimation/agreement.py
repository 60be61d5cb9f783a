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
3. The models needed for an agreement is projected from the expected agreement at m. For
   the shares of the ends: read as the reliability a Gaussian model of effects and errors
   would need to give it, which Spearman-Brown scales with the number of models. For the
   Spearman, which also depends on how crowded the middle of the effects is: the agreement
   is simulated at sizes from m/8 to 4096 m under a smooth prior, a Student t whose scale
   and degrees of freedom are fitted by maximum marginal likelihood, and the projection is
   where that curve reaches the target. The deconvolved prior is discrete: its atoms tie
   classes that are not tied, which already reads the agreement at m low where 40 classes
   are estimated well, and far beyond m ties them more; the Gaussian shape asks too few
   models where the effects are heavy-tailed (many crowded near zero, a few far out). Where
   the estimates hardly tell a spread of effects from none (a likelihood-ratio test at 5%),
   the smooth prior's scale and tails, and with them the curve, are all but unknown: there
   the Gaussian reading. A projection never lies on the other side of m from the agreement
   at m, so it does not contradict the agreement shown beside it.
4. Classes with exactly the same effect keep their order to chance with any number of
   models, so a target may be out of reach. Priors under which a share of the classes tie
   exactly and the rest spread as a Gaussian are fitted for shares from 0 to 95%; the shares
   whose likelihood is within ``PLAUSIBLE`` of the best are those the estimates do not rule
   out. Where ties fit clearly better than both the smooth prior and no ties, a target that
   even the fewest plausible ties keep out of reach (the agreement with many models under
   that prior is below it) is projected out of reach; a target that the most plausible ties
   would keep out of reach ends its range there. No run can tell exact ties from
   differences far below its errors, so the range says what the point cannot.
5. The ranges are a parametric bootstrap: new estimates drawn around the posterior draws,
   deconvolved and projected again; percentiles of their spread about their median, placed
   around the estimate, make an 80% range. The bootstrap sees the estimate's spread but not
   all of its error, so the percentiles are set in simulation (other runs than those the
   results page reports) to hold the truth at 80%: the 7.5th and 92.5th for the agreement,
   whose deconvolution reads it up to 0.03 low where 40 classes are well estimated; the
   5th and 95th for the models an end needs, whose Gaussian reading (step 3) the bootstrap
   repeats but cannot check; the 10th and 90th for the models the Spearman needs, whose
   curve it draws anew.

benchmarks/trust_calibration.py checks predictions, projections and ranges against
independent simulated runs with a known answer.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .diagnostics import (
    _ranks,
    reliability_for_overlap,
    reliability_for_spearman,
    shared_ends,
    spearman_brown,
)

__all__ = [
    "Agreement",
    "agreement_curve",
    "effect_prior",
    "independent_agreement",
    "smooth_prior",
]

GRID = 200  # support points of the deconvolved prior
EM_STEPS = 300
DRAWS = 100  # posterior draws per expected agreement
CEILING = 4096  # "many more models": the ceiling of the agreement is read at 4096 m
BOOTSTRAP = 30
# Percentiles of the bootstrap that make 80% ranges (see step 5 above): of the agreement,
# and of the models each metric needs.
RANGE = (7.5, 92.5)
PROJECTION_RANGES = {"spearman": (10.0, 90.0), "top": (5.0, 95.0), "bottom": (5.0, 95.0)}
METRICS = ("spearman", "top", "bottom")
DEGREES = (1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, math.inf)  # the smooth prior's: t to Gaussian
SMOOTH_GRID = 400
SPREAD = 3.84  # twice the log-likelihood a spread of effects must gain over none (chi-square 1, 5%)
STEPS = 2.0 ** np.arange(-3, 13)  # run sizes, in multiples of m, the Spearman is projected on
TIED_SHARES = np.arange(20) / 20  # shares of exactly tied classes the tie check weighs
AKAIKE = 2.0  # twice the log-likelihood a prior with one more fitted parameter must gain
LOG_FLOAT_MAX = math.log(sys.float_info.max)  # the largest log a model count can be
PLAUSIBLE = 1.64  # twice the log-likelihood a share may lose and stay plausible (chi-square 1, 80%)


def effect_prior(
    values: np.ndarray, stderr: np.ndarray, grid: int = GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Support and weights of the nonparametric maximum-likelihood prior of the true effects,
    given estimates ``values`` with Gaussian errors ``stderr`` (both K,)."""
    from scipy.stats import norm  # here: a third of a second to import, for every command

    support = np.linspace(values.min(), values.max(), grid)
    likelihood = norm.pdf((values[:, None] - support) / stderr[:, None]) / stderr[:, None]
    weights = np.full(grid, 1.0 / grid)
    for _ in range(EM_STEPS):  # each weight times its mean share of the classes' likelihood
        weights = weights * (likelihood.T @ (1.0 / (likelihood @ weights))) / values.size
    return support, weights


def _likelihood(values: np.ndarray, stderr: np.ndarray, support: np.ndarray) -> np.ndarray:
    """K x len(support): the density of each estimate in ``values`` (Gaussian errors
    ``stderr``) were its true effect each point of ``support``."""
    density = np.exp(-0.5 * ((values[:, None] - support) / stderr[:, None]) ** 2)
    return density / (math.sqrt(2.0 * math.pi) * stderr[:, None])


def _log_likelihood(
    values: np.ndarray, stderr: np.ndarray, prior: tuple[np.ndarray, np.ndarray]
) -> float:
    """Log marginal likelihood of estimates ``values`` with Gaussian errors ``stderr`` when
    the true effects come from ``prior`` (support, weights)."""
    support, weights = prior
    return float(np.log(_likelihood(values, stderr, support) @ weights + 1e-300).sum())


def _wide_support(values: np.ndarray, grid: int) -> np.ndarray:
    """A grid reaching half the estimates' range beyond them on each side, where the smooth
    and tied priors put their weight."""
    spread = max(float(values.max() - values.min()), 1e-12)
    return np.linspace(values.min() - spread / 2, values.max() + spread / 2, grid)


def smooth_prior(
    values: np.ndarray, stderr: np.ndarray, grid: int = SMOOTH_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Support and weights of a Student t prior of the true effects, centred on the median
    estimate, its scale and degrees of freedom (one of ``DEGREES``) by maximum marginal
    likelihood given estimates ``values`` with Gaussian errors ``stderr``. Smooth where the
    nonparametric prior is atomic, so it can be extrapolated to many more models;
    heavy-tailed where the effects are."""
    from scipy.optimize import minimize_scalar

    support = _wide_support(values, grid)
    spread = (support[-1] - support[0]) / 2  # the estimates' range
    likelihood = _likelihood(values, stderr, support)
    centred = (support - np.median(values)) ** 2

    def weights(log_scale: float, degrees: float) -> np.ndarray:
        z2 = centred / math.exp(2.0 * log_scale)
        density = (
            np.exp(-0.5 * z2) if math.isinf(degrees) else (1 + z2 / degrees) ** (-(degrees + 1) / 2)
        )
        return density / density.sum()

    def loss(log_scale: float, degrees: float) -> float:
        return -float(np.log(likelihood @ weights(log_scale, degrees) + 1e-300).sum())

    bounds = (math.log(spread) - 9.0, math.log(spread))
    fits = [(minimize_scalar(loss, bounds=bounds, args=(d,), method="bounded"), d) for d in DEGREES]
    best, degrees = min(fits, key=lambda fit: fit[0].fun)
    return support, weights(float(best.x), degrees)


def tied_prior(
    values: np.ndarray, stderr: np.ndarray, share: float, grid: int = SMOOTH_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Support and weights of a prior under which ``share`` of the classes have exactly the
    same effect and the rest a Gaussian spread around it, the common value and the spread
    fitted by maximum marginal likelihood to estimates ``values`` with errors ``stderr``."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    support = _wide_support(values, grid)
    spread = (support[-1] - support[0]) / 2  # the estimates' range

    def loss(params: np.ndarray) -> float:
        centre, log_scale = params
        slab = norm.pdf(values, centre, np.sqrt(stderr**2 + math.exp(2.0 * log_scale)))
        return -float(np.log(share * norm.pdf(values, centre, stderr) + (1 - share) * slab).sum())

    start = np.array([np.median(values), math.log(max(float(values.std()), spread / 100))])
    centre, log_scale = minimize(loss, start, method="Nelder-Mead").x
    support = np.sort(np.append(support, np.clip(centre, support[0], support[-1])))
    weights = norm.pdf(support, centre, max(math.exp(log_scale), spread / grid))
    weights *= (1.0 - share) / weights.sum()
    weights[np.searchsorted(support, np.clip(centre, support[0], support[-1]))] += share
    return support, weights


@dataclass(frozen=True)
class Ties:
    """How many classes may share exactly one effect, whose order no number of models
    settles: ``likely``, the share that fits the estimates best, and ``fewest``, the least
    they do not rule out (both 0 unless ties fit clearly better than both the smooth prior
    and no ties); ``plausible``, the largest share they do not rule out (the shares within
    ``PLAUSIBLE`` of the best fit: an 80% range)."""

    fewest: float
    likely: float
    plausible: float


def tie_check(
    values: np.ndarray, stderr: np.ndarray, smooth: tuple[np.ndarray, np.ndarray] | None = None
) -> Ties:
    """The shares of tied classes that estimates ``values`` with errors ``stderr`` support:
    the profile likelihood over ``TIED_SHARES``, against ``smooth`` (their
    :func:`smooth_prior`, fitted here if not given). Errors large enough to hide a crowd of
    classes near one value leave many ties plausible, even where the effects differ."""
    fits = np.array(
        [_log_likelihood(values, stderr, tied_prior(values, stderr, s)) for s in TIED_SHARES]
    )
    best = int(np.argmax(fits))
    smooth = _log_likelihood(
        values, stderr, smooth_prior(values, stderr) if smooth is None else smooth
    )
    plausible = TIED_SHARES[2.0 * (fits[best] - fits) <= PLAUSIBLE]
    # Clear where ties fit better than the smooth prior and than no ties by more than
    # Akaike's charge for the share they fit (and, against no ties, the test's margin).
    clear = 2.0 * (fits[best] - smooth) > AKAIKE
    clear = clear and 2.0 * (fits[best] - fits[0]) > AKAIKE + PLAUSIBLE
    if not clear:
        return Ties(0.0, 0.0, float(plausible.max()))
    return Ties(float(plausible.min()), float(TIED_SHARES[best]), float(plausible.max()))


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
    uniform = rng.random((draws, values.size))
    # How many of each class's cumulative weights lie below its uniform: its pick.
    picks = np.stack(
        [
            np.searchsorted(row, u, side="left")
            for row, u in zip(cumulative, uniform.T, strict=True)
        ],
        axis=1,
    )
    return support[np.minimum(picks, support.size - 1)]


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (no ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    return (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))


def _agreement(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Mean Spearman, top-k share and bottom-k share of rows of ``a`` against ``b``."""
    top, bottom = shared_ends(a, b, k)
    return np.array([_spearman(a, b).mean(), top.mean(), bottom.mean()])


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
    prior = effect_prior(values, stderr) if prior is None else prior
    scales = np.sqrt(models / np.asarray(sizes, dtype=np.float64))
    return _simulated(values, stderr, prior, DRAWS, seed, scales, lambda a, b: _agreement(a, b, k))


def _simulated(
    values: np.ndarray,
    stderr: np.ndarray,
    prior: tuple[np.ndarray, np.ndarray],
    draws: int,
    seed: int,
    scales: np.ndarray,
    measure: Callable[[np.ndarray, np.ndarray], np.ndarray | float],
) -> np.ndarray:
    """``measure`` of two independent runs around ``draws`` posterior draws of the true
    effects, their errors ``stderr`` times each of ``scales``. The same random numbers serve
    every scale, so the result is smooth in the run's size."""
    rng = np.random.default_rng(seed)
    truth = _posterior_draws(values, stderr, prior, draws, rng)
    noise = rng.standard_normal((2, *truth.shape)) * stderr
    return np.array([measure(truth + noise[0] * c, truth + noise[1] * c) for c in scales])


def _ends_needed(agreement: float, target: float, models: int, groups: int, k: int) -> float:
    """Models for a share ``target`` of an end given its ``agreement`` at ``models``: both
    read as reliabilities of the Gaussian model of :func:`.diagnostics.expected_overlap`,
    then Spearman-Brown. NaN while the agreement is no more than chance's: there is nothing
    to project from yet."""
    have = reliability_for_overlap(agreement, groups, k)
    return spearman_brown(have, reliability_for_overlap(target, groups, k), models)


def _logit_reliability(spearman: np.ndarray, groups: int) -> np.ndarray:
    """Expected Spearman correlations read as the logit of the reliability of Gaussian scores
    that gives them: straight in log n for Gaussian effects, and near it for others."""
    r = np.clip([reliability_for_spearman(x, groups) for x in spearman], 1e-9, 1 - 1e-9)
    return np.log(r) - np.log1p(-r)


def _log_size_at(curve: np.ndarray, value: float) -> float:
    """Where (in log multiples of m, on ``STEPS``) ``curve`` first reaches ``value``:
    interpolated, or extended along the segment at either end."""
    log_sizes = np.log(STEPS)
    crossed = np.flatnonzero(curve >= value)
    i = int(np.clip(crossed[0] if crossed.size else curve.size - 1, 1, curve.size - 1))
    slope = (curve[i] - curve[i - 1]) / (log_sizes[i] - log_sizes[i - 1])
    if not slope > 0.0:
        return float(log_sizes[i]) if curve[i] >= value else math.inf
    return float(log_sizes[i - 1] + (value - curve[i - 1]) / slope)


def _spearman_needed(
    values: np.ndarray,
    stderr: np.ndarray,
    models: int,
    agreement: float,
    target: float,
    seed: int,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Models for an expected Spearman of ``target``: where the agreement simulated under the
    smooth prior (``prior``, fitted here if not given; at ``STEPS`` times ``models``, on the
    logit reliability scale) reaches it. Never on the other side of ``models`` from
    ``agreement``, the agreement expected at ``models``, so a projection does not contradict
    the agreement shown beside it. Where the estimates hardly tell a spread of effects from
    none, the smooth prior's scale and tails are all but unknown: there the Gaussian reading,
    Spearman-Brown from ``agreement``. Fewer posterior draws serve many classes, each of
    whose draws averages over more pairs."""
    prior = smooth_prior(values, stderr) if prior is None else prior
    if _spread_is_clear(values, stderr, prior):
        draws = max(10, DRAWS * 100 // max(values.size, 100))
        spearman = lambda a, b: _spearman(a, b).mean()  # noqa: E731
        curve = _simulated(values, stderr, prior, draws, seed, np.sqrt(1.0 / STEPS), spearman)
        have = _logit_reliability(curve, values.size)
        want = _logit_reliability(np.array([target]), values.size)[0]
        # Extended along a nearly flat end, the curve may cross past any float: out of reach.
        log_needed = math.log(models) + _log_size_at(have, want)
        needed = math.exp(log_needed) if log_needed < LOG_FLOAT_MAX else math.inf
        return max(needed, models) if agreement < target else min(needed, models)
    have, want = (reliability_for_spearman(x, values.size) for x in (agreement, target))
    return spearman_brown(have, want, models)


def _spread_is_clear(
    values: np.ndarray, stderr: np.ndarray, prior: tuple[np.ndarray, np.ndarray]
) -> bool:
    """Whether ``prior`` fits estimates ``values`` (errors ``stderr``) better than all effects
    equal by a likelihood-ratio test at 5%."""
    flat = (np.array([np.median(values)]), np.ones(1))
    return (
        2.0 * (_log_likelihood(values, stderr, prior) - _log_likelihood(values, stderr, flat))
        > SPREAD
    )


@dataclass(frozen=True)
class _World:
    """Estimates (this run's, or one the bootstrap drew), the random seed they are projected
    with, their expected agreement at m and its ceiling (one per metric), and their smooth
    prior where it was already fitted."""

    estimates: np.ndarray
    seed: int
    agreement: np.ndarray
    ceiling: np.ndarray
    smooth: tuple[np.ndarray, np.ndarray] | None = None


def _models_for(
    name: str, target: float, world: _World, stderr: np.ndarray, models: int, k: int
) -> float:
    """Models an independent run of which would agree with another at ``target``: inf above
    the ceiling, NaN while the agreement is no more than chance's."""
    i = METRICS.index(name)
    if world.ceiling[i] < target:
        return math.inf
    if name != "spearman":
        return _ends_needed(world.agreement[i], target, models, world.estimates.size, k)
    if not world.agreement[i] > 0.0:
        return math.nan
    return _spearman_needed(
        world.estimates, stderr, models, world.agreement[i], target, world.seed, world.smooth
    )


@dataclass(frozen=True)
class Agreement:
    """The agreement expected between this run and an independent run of the same size.

    ``expected``: metric -> expected agreement at ``models`` ("spearman": rank correlation of
    the whole ranking; "top", "bottom": the share of the k most / least helpful the two runs
    share); ``ranges``: metric -> its 80% range; ``needed``: metric -> (models for the target
    in ``targets``, 80% range), inf where no number of models reaches it, NaN while the
    agreement is no more than chance's; ``ceiling``: metric -> what the expected agreement
    tends to with many models (below 1 where classes tie); ``ties``: the shares of classes
    that may share one effect exactly (:func:`tie_check`).
    """

    models: int
    groups: int
    k: int
    expected: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    targets: dict[str, float]
    needed: dict[str, tuple[float, float, float]]
    ceiling: dict[str, float] = field(default_factory=dict)
    ties: Ties = Ties(0.0, 0.0, 0.0)

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
        if "ties" in record:
            fields["ties"] = Ties(**record["ties"])
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


def _tied_ceiling(
    values: np.ndarray, stderr: np.ndarray, models: int, k: int, seed: int, share: float
) -> np.ndarray:
    """The agreement (3,) with many more models if ``share`` of the classes are tied."""
    if share <= 0.0:
        return np.ones(len(METRICS))
    prior = tied_prior(values, stderr, share)
    return agreement_curve(values, stderr, models, np.array([CEILING * models]), k, seed, prior)[0]


def _centred_range(
    point: float, boot: np.ndarray, percentiles: tuple[float, float], log: bool = False
) -> tuple[float, float]:
    """The range around ``point`` between ``percentiles`` of the bootstrap's spread about its
    own median (for model counts: on the log scale, and the high end out of reach where more
    of the bootstrap than the high percentile's share is). The bootstrap's world has its own
    truth, so its spread, not its centre, is what it says of the estimate."""
    if not math.isfinite(point):
        return point, point
    finite = boot[np.isfinite(boot)]
    if log:
        if finite.size < 2:
            return point, math.inf
        shift = np.log(finite) - np.median(np.log(finite))
        low, high = point * np.exp(np.percentile(shift, percentiles))
        reachable = finite.size >= percentiles[1] / 100.0 * boot.size
        return float(low), float(high) if reachable else math.inf
    low, high = point + np.percentile(boot - np.median(boot), percentiles)
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
    prior, smooth = effect_prior(values, stderr), smooth_prior(values, stderr)
    worlds = [_World(values, seed, *_project(values, stderr, models, k, seed, prior), smooth)]
    rng = np.random.default_rng(seed + 1)
    for b, truth in enumerate(_posterior_draws(values, stderr, prior, bootstrap, rng), start=2):
        redrawn = truth + rng.standard_normal(truth.size) * stderr
        refit = effect_prior(redrawn, stderr)
        worlds.append(
            _World(redrawn, seed + b, *_project(redrawn, stderr, models, k, seed + b, refit))
        )
    ties = tie_check(values, stderr, smooth)
    fewest, most = (
        _tied_ceiling(values, stderr, models, k, seed, share)
        for share in (ties.fewest, ties.plausible)
    )
    here = worlds[0]
    ranges, needed = {}, {}
    for i, name in enumerate(METRICS):
        boot = np.array([world.agreement[i] for world in worlds[1:]])
        ranges[name] = _centred_range(float(here.agreement[i]), boot, RANGE)
        if name in targets:
            projected = [_models_for(name, targets[name], w, stderr, models, k) for w in worlds]
            point = projected[0]
            low, high = _centred_range(
                point, np.array(projected[1:]), PROJECTION_RANGES[name], log=True
            )
            # Tied classes keep the target out of reach: the fewest the estimates allow
            # decide the projection, the most they allow the top of its range.
            needed[name] = (
                math.inf if fewest[i] < targets[name] else point,
                low,
                math.inf if most[i] < targets[name] else high,
            )
    ceiling = np.minimum(here.ceiling, fewest)
    return Agreement(
        models=models,
        groups=int(values.size),
        k=k,
        expected={name: float(here.agreement[i]) for i, name in enumerate(METRICS)},
        ranges=ranges,
        targets=dict(targets),
        needed=needed,
        ceiling={name: float(ceiling[i]) for i, name in enumerate(METRICS)},
        ties=ties,
    )
