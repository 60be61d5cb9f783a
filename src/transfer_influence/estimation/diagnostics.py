"""How far to trust a class ranking (pure numpy, no I/O).

- Split-half stability of what a user reads: the rank correlation of the whole ranking and
  the share of its top and bottom that two random halves of the models agree on, each beside
  its chance level, with a projection of the models each needs.
- The held-out linear datamodeling score (LDS): do the influences predict the outputs of
  models they were not fitted on? Stability alone is fooled by any ranking that ignores the
  data; the LDS is not.
- The share of the differences between models that their subsets explain (adjusted R^2 of the
  least-squares fit): the rest is training noise, which no estimator removes and only more
  models average away. It bounds what the regression estimator can gain over the difference
  in means: about 1 / (1 - share) in models, once there are many more models than groups.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .accumulator import InfluenceWarning, estimate_influence
from .centring import centre_within
from .regression import explained_by_subsets

__all__ = [
    "SplitHalf",
    "end_size",
    "expected_overlap",
    "explained_by_subsets",
    "reliability_for_spearman",
    "shared_ends",
    "linear_datamodeling_score",
    "split_half_stability",
]

_OVERLAP_DRAWS = 400  # Monte Carlo draws of the Gaussian model behind the overlap projection


def end_size(n_groups: int) -> int:
    """How many groups a user reads at each end of a ranking: 10, or a quarter of fewer."""
    return max(1, min(10, n_groups // 4))


@dataclass(frozen=True)
class SplitHalf:
    """Agreement between two random halves of the models, averaged over ``splits`` splits.

    ``spearman``: rank correlation of the whole ranking; ``top_overlap`` and
    ``bottom_overlap``: the share of the ``k`` most (least) helpful groups of one half that
    are among the other half's; ``chance_overlap``: the same for rankings that ignore the data
    (k / groups). Each half has about ``models / 2`` models.
    """

    spearman: float
    spread: float  # standard deviation of the Spearman correlation over the splits
    splits: int
    models: int
    top_overlap: float = math.nan
    bottom_overlap: float = math.nan
    k: int = 10
    groups: int = 0
    estimator: str = "difference"  # what each half was estimated with

    @property
    def chance_overlap(self) -> float:
        return self.k / self.groups if self.groups else math.nan

    @property
    def top_shared(self) -> float:
        """How many of the top ``k`` the halves share on average, as the console and report
        print it ("3.9 of 10"); ``top_overlap`` is the same as a share of k."""
        return self.top_overlap * self.k

    @property
    def bottom_shared(self) -> float:
        """As :attr:`top_shared`, for the bottom ``k``."""
        return self.bottom_overlap * self.k

    def models_needed(self, target: float = 0.9) -> float:
        """Models for the split-half correlation to reach ``target`` (Spearman-Brown): the
        size whose *halves* agree so, which is twice what a run needs for an independent run
        of its own size to agree so (:mod:`.agreement` answers that question).

        The correlation r was measured at m/2 models per half; k times more models per half
        gives k r / (1 + (k - 1) r).
        """
        return _no_fewer(spearman_brown(self.spearman, target, self.models), self.models)

    def overlap_models_needed(self, end: str, target: float = 0.8) -> float:
        """Models for two halves to share ``target`` of their top (``end="top"``) or bottom
        k. The measured overlap is read as the reliability a Gaussian model of effects and
        errors would need to give it, which Spearman-Brown then projects; NaN while the
        halves agree no more than chance."""
        measured = self.top_overlap if end == "top" else self.bottom_overlap
        if not math.isfinite(measured) or self.groups < 2:
            return math.nan
        if measured >= target:
            return float(self.models)
        reliability = reliability_for_overlap(measured, self.groups, self.k)
        wanted = reliability_for_overlap(target, self.groups, self.k)
        return _no_fewer(spearman_brown(reliability, wanted, self.models), self.models)


def spearman_brown(have: float, want: float, models: int) -> float:
    """Models for a reliability ``want`` where ``models`` give ``have`` (Spearman-Brown: n
    times the models give n r / (1 + (n - 1) r)); fewer than ``models`` where ``have`` is
    above ``want``, NaN while there is no reliability to project from."""
    if not have > 0.0:
        return math.nan
    if have >= 1.0:
        return float(models)
    return models * want * (1.0 - have) / (have * (1.0 - want))


def _no_fewer(needed: float, models: int) -> float:
    """A projection of the models split halves need, which are never fewer than they had."""
    return needed if math.isnan(needed) else max(needed, float(models))


def expected_overlap(reliability: float, groups: int, k: int, draws: int = _OVERLAP_DRAWS) -> float:
    """Expected share of the top k shared by two rankings of ``groups`` estimates that each
    correlate ``reliability`` with each other (true effects and errors Gaussian; the same
    random numbers on every call, so it is monotone in ``reliability``)."""
    truth, noise = _gaussian_draws(draws, groups)
    r = min(max(reliability, 0.0), 1.0)
    a = np.sqrt(r) * truth + np.sqrt(1.0 - r) * noise[0]
    b = np.sqrt(r) * truth + np.sqrt(1.0 - r) * noise[1]
    return float(shared_ends(a, b, k)[0].mean())


@functools.lru_cache(maxsize=8)
def _gaussian_draws(draws: int, groups: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12345)
    return rng.standard_normal((draws, groups)), rng.standard_normal((2, draws, groups))


def reliability_for_overlap(overlap: float, groups: int, k: int) -> float:
    """The reliability at which :func:`expected_overlap` reaches ``overlap``, interpolated in
    a table of it made once per (groups, k)."""
    reliabilities, overlaps = _overlap_table(groups, k)
    if overlap <= overlaps[0]:
        return 0.0
    if overlap >= overlaps[-1]:
        return float(reliabilities[-1])
    return float(np.interp(overlap, overlaps, reliabilities))


@functools.lru_cache(maxsize=32)
def _overlap_table(groups: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expected_overlap` on a grid of reliabilities that is dense near 1, where the
    overlap climbs fastest; kept strictly increasing in the overlap for interpolation."""
    reliabilities = np.concatenate([[0.0], 1.0 - np.logspace(0, -4, 121)[1:]])
    overlaps = np.array([expected_overlap(r, groups, k) for r in reliabilities])
    keep = np.concatenate([[True], np.diff(np.maximum.accumulate(overlaps)) > 0])
    return reliabilities[keep], np.maximum.accumulate(overlaps)[keep]


def reliability_for_spearman(spearman: float, groups: int) -> float:
    """The Pearson correlation of Gaussian scores at which the expected Spearman correlation of
    ``groups`` pairs is ``spearman``. Moran's expectation, ((K - 2) rho_s + 3 tau) / (K + 1)
    with rho_s = 6/pi asin(r/2) and tau = 2/pi asin(r), is below the population's rho_s at
    finite K; reading a target of 0.9 as the population's asked for too few models."""
    reliabilities, expected = _spearman_table(groups)
    return float(np.interp(spearman, expected, reliabilities))


@functools.lru_cache(maxsize=32)
def _spearman_table(groups: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.concatenate([[0.0], 1.0 - np.logspace(0, -6, 241)[1:]])  # dense near 1
    rho_s = 6 / math.pi * np.arcsin(r / 2)  # the population's Spearman
    tau = 2 / math.pi * np.arcsin(r)  # Kendall's
    return r, ((groups - 2) * rho_s + 3 * tau) / (groups + 1)


def shared_ends(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The share of their k highest and of their k lowest that ``a`` and ``b`` hold in
    common, along the last axis (needs at least 2k values)."""

    def ends(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argpartition(x, (k - 1, x.shape[-1] - k), axis=-1)
        low, high = np.zeros(x.shape, bool), np.zeros(x.shape, bool)
        np.put_along_axis(low, order[..., :k], True, axis=-1)
        np.put_along_axis(high, order[..., -k:], True, axis=-1)
        return low, high

    (low_a, high_a), (low_b, high_b) = ends(a), ends(b)
    return (high_a & high_b).sum(axis=-1) / k, (low_a & low_b).sum(axis=-1) / k


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (0 = smallest), as floats for correlating."""
    ranks = np.empty(x.shape, dtype=np.float64)
    order = np.argsort(x, axis=-1)
    np.put_along_axis(ranks, order, np.arange(x.shape[-1], dtype=np.float64), axis=-1)
    return ranks


def _halves(
    m: int, blocks: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of the models, made of whole blocks when given."""
    if blocks is None:
        order = rng.permutation(m)
        return order[: m // 2], order[m // 2 : 2 * (m // 2)]
    ids = rng.permutation(np.unique(blocks))
    half = ids.size // 2
    return (
        np.flatnonzero(np.isin(blocks, ids[:half])),
        np.flatnonzero(np.isin(blocks, ids[half : 2 * half])),
    )


def overall_difference(
    masks: np.ndarray, y: np.ndarray, blocks: np.ndarray | None = None
) -> np.ndarray:
    """The difference in means of one output per model (K,), or with ``blocks`` the slopes
    within blocks, as :func:`estimate_influence` computes them, without its errors: O(m K),
    for diagnostics that re-estimate many times. NaN where a group never varies."""
    x = masks.astype(np.float64)
    if blocks is None:
        m = x.shape[0]
        n_in = x.sum(axis=0)
        sum_in = x.T @ y
        with np.errstate(divide="ignore", invalid="ignore"):
            return sum_in / n_in - (y.sum() - sum_in) / (m - n_in)
    ids = np.unique(blocks, return_inverse=True)[1]
    held = np.zeros((ids.max() + 1, x.shape[1]))
    np.add.at(held, ids, x)
    sizes = np.bincount(ids)[:, None].astype(np.float64)
    spread = (held * (sizes - held) / sizes).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = x.T @ centre_within(y, blocks) / spread
    values[spread <= 0] = np.nan
    return values


def _overall(
    masks: np.ndarray, y: np.ndarray, blocks: np.ndarray | None, estimator: str
) -> np.ndarray:
    if estimator == "difference":
        return overall_difference(masks, y, blocks)
    with warnings.catch_warnings():  # a group always in or out is NaN, and skipped
        warnings.simplefilter("ignore", InfluenceWarning)
        estimate = estimate_influence(masks, y[:, None], estimator=estimator, blocks=blocks)
    return estimate.overall.values[:, 0]


def split_half_stability(
    masks: np.ndarray,
    outputs: np.ndarray,
    splits: int = 50,
    seed: int = 0,
    blocks: np.ndarray | None = None,
    k: int | None = None,
    estimator: str = "difference",
) -> SplitHalf:
    """Agreement of the overall class influence estimated on two random halves of the models,
    averaged over ``splits`` splits; ``outputs`` is one value per model (m,), ``k`` the groups
    read at each end (default :func:`end_size`), ``estimator`` that of each half.

    ``blocks`` (one id per model) numbers the models that share a training seed (a seed per
    chunk). A block's models stay in the same half, or the halves would share that seed's
    noise and agree too well, and each half is estimated as slopes within blocks.
    """
    masks = np.asarray(masks)
    y = np.asarray(outputs, dtype=np.float64).reshape(-1)
    m, groups = masks.shape
    if m < 8:
        raise ValueError(f"split-half stability needs at least 8 models, have {m}")
    if blocks is not None and np.unique(blocks).size < 2:
        raise ValueError("split-half stability by blocks needs at least 2 blocks")
    k = end_size(groups) if k is None else k
    rng = np.random.default_rng(seed)
    correlations, tops, bottoms, used = [], [], [], []
    with _blas_threads(masks):
        for _ in range(splits):
            halves = _halves(m, blocks, rng)
            values = [
                _overall(masks[h], y[h], None if blocks is None else blocks[h], estimator)
                for h in halves
            ]
            keep = np.isfinite(values[0]) & np.isfinite(values[1])
            if keep.sum() < max(3, 2 * k):  # a half left a group always in or out: skip it
                continue
            a, b = values[0][keep], values[1][keep]
            correlations.append(float(np.corrcoef(_ranks(a), _ranks(b))[0, 1]))
            top, bottom = shared_ends(a, b, k)
            tops.append(float(top))
            bottoms.append(float(bottom))
            used.append(len(halves[0]) + len(halves[1]))
    if not correlations:
        raise ValueError("no split gave enough groups with estimates in both halves")
    return SplitHalf(
        float(np.mean(correlations)),
        float(np.std(correlations)),
        len(correlations),
        m if blocks is None else round(float(np.mean(used))),
        float(np.mean(tops)),
        float(np.mean(bottoms)),
        k,
        groups,
        estimator,
    )


def linear_datamodeling_score(
    masks: np.ndarray,
    outputs: np.ndarray,
    held_out: int,
    splits: int = 50,
    estimator: str = "difference",
    seed: int = 0,
    blocks: np.ndarray | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation over random splits of the Spearman correlation between the
    held-out models' outputs and their prediction from influences fitted on the other models.

    The prediction of model i is the sum of the fitted influences of the groups in its mask
    (a constant shift would not change ranks). ``outputs`` is one value per model (m,).
    ``blocks`` numbers the models that share a training seed: outputs are compared within
    them (each block's outputs and predictions centred on the block's mean, which removes the
    seed's offset) and influences are fitted as slopes within blocks.
    """
    masks = np.asarray(masks)
    y = np.asarray(outputs, dtype=np.float64).reshape(-1)
    m = masks.shape[0]
    if not 3 <= held_out <= m - 4:
        raise ValueError(f"held_out must leave at least 4 models to fit, have {m}")
    if blocks is not None:
        y = centre_within(y, blocks)
    x = masks.astype(np.float64)
    # Fixed-size subsets, one seed each: the least-squares fit of each split from the Gram
    # matrix of all models less the held-out ones (one solve, not a fit from scratch).
    fast = estimator == "regression" and blocks is None and np.ptp(x.sum(axis=1)) == 0
    gram = x.T @ x if fast else None
    rng = np.random.default_rng(seed)
    scores = []
    with warnings.catch_warnings(), _blas_threads(masks):
        warnings.simplefilter("ignore", InfluenceWarning)
        for _ in range(splits):
            order = rng.permutation(m)
            test, train = order[:held_out], order[held_out:]
            train_blocks = None if blocks is None else blocks[train]
            if fast:
                influence = _least_squares(gram - x[test].T @ x[test], x[train], y[train])
            else:
                influence = _overall(masks[train], y[train], train_blocks, estimator)
            predicted = x @ np.nan_to_num(influence)
            if blocks is not None:
                predicted = centre_within(predicted, blocks)
            scores.append(np.corrcoef(_ranks(predicted[test]), _ranks(y[test]))[0, 1])
    return float(np.nanmean(scores)), float(np.nanstd(scores))


def _least_squares(gram: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares effects of fixed-size subsets on ``y`` from the uncentred Gram matrix
    ``gram`` = x'x: centred, the indicators sum to zero in every model, so the centred Gram
    matrix is singular exactly along the all-ones direction, which no contrast or prediction
    sees; adding a multiple of 11' there makes it invertible without changing the fit."""
    m, k = x.shape
    counts = x.sum(axis=0)
    centred = gram - np.outer(counts, counts) / m
    right = x.T @ y - counts * y.sum() / m
    ones = np.full((k, k), np.trace(centred) / k**2)
    return np.linalg.solve(centred + ones, right)


def _blas_threads(masks: np.ndarray) -> Any:
    """One BLAS thread for small matrices, where threads cost more than they give."""
    if masks.size <= 400_000:
        return threadpool_limits(1, user_api="blas")
    return contextlib.nullcontext()
