"""How far to trust a class ranking (pure numpy, no I/O).

- Split-half rank stability, with a Spearman-Brown projection of the models needed for a
  target stability: is the ranking reproducible?
- The held-out linear datamodeling score (LDS): do the influences predict the outputs of
  models they were not fitted on? Stability alone is fooled by any ranking that ignores the
  data; the LDS is not.
- The share of the differences between models that their subsets explain: the rest is
  training noise, which no estimator removes and only more models (or a design that shares
  seeds across models) average away.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .centring import centre_within
from .estimation import InfluenceWarning, estimate_influence
from .regression import ridge_cross_validation

__all__ = [
    "SHARED_SEED_CAVEAT",
    "SplitHalf",
    "explained_by_subsets",
    "explained_sentence",
    "explained_share",
    "linear_datamodeling_score",
    "split_half_method",
    "split_half_stability",
]


@dataclass(frozen=True)
class SplitHalf:
    spearman: float  # mean over random splits of the rank correlation between the halves
    spread: float  # its standard deviation over the splits
    splits: int
    models: int

    def models_needed(self, target: float = 0.9) -> float:
        """Models for the split-half correlation to reach ``target`` (Spearman-Brown).

        The correlation r was measured at m/2 models per half; k times more models per half
        gives k r / (1 + (k - 1) r).
        """
        r = self.spearman
        if not 0.0 < r < 1.0:
            return math.nan if r <= 0 else float(self.models)
        k = target * (1.0 - r) / (r * (1.0 - target))
        return max(k, 1.0) * self.models

    def projection(self, target: float = 0.9) -> str:
        """:meth:`models_needed` in words, or why there is none yet."""
        needed = self.models_needed(target)
        if not math.isfinite(needed):
            return f"no projection to {target:g} while the halves do not agree"
        return f"about {needed:,.0f} models would give {target:g}"


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(np.float64)


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


def _overall(
    masks: np.ndarray, outputs: np.ndarray, estimator: str, blocks: np.ndarray | None
) -> np.ndarray:
    """The overall influence (K,) from outputs (m x 1); slopes within seed blocks if given."""
    estimate = estimate_influence(masks, outputs, estimator=estimator, chunks=blocks)
    return estimate.overall.values[:, 0]


def _correlation(
    masks: np.ndarray,
    outputs: np.ndarray,
    halves: tuple[np.ndarray, np.ndarray],
    estimator: str,
    blocks: np.ndarray | None,
) -> list[float]:
    values = [
        _overall(masks[h], outputs[h], estimator, None if blocks is None else blocks[h])
        for h in halves
    ]
    keep = np.isfinite(values[0]) & np.isfinite(values[1])
    if keep.sum() < 3:
        return []
    return [float(np.corrcoef(_ranks(values[0][keep]), _ranks(values[1][keep]))[0, 1])]


def split_half_stability(
    masks: np.ndarray,
    outputs: np.ndarray,
    splits: int = 50,
    estimator: str = "difference",
    seed: int = 0,
    blocks: np.ndarray | None = None,
) -> SplitHalf:
    """Rank correlation of the overall class influence estimated on two random halves of the
    models, averaged over ``splits`` splits. ``outputs`` is one value per model (m,).

    ``blocks`` (one id per model) numbers the models that share a training seed (a seed per
    chunk). A block's models stay in the same half, or the halves would share that seed's
    noise and agree too well, and each half is estimated as in :func:`estimate_influence` with
    ``chunks``: slopes within blocks.
    """
    masks = np.asarray(masks)
    outputs = np.asarray(outputs, dtype=np.float64).reshape(-1, 1)
    m = masks.shape[0]
    if m < 8:
        raise ValueError(f"split-half stability needs at least 8 models, have {m}")
    if blocks is not None and np.unique(blocks).size < 2:
        raise ValueError("split-half stability by blocks needs at least 2 blocks")
    rng = np.random.default_rng(seed)
    correlations, used = [], []
    with warnings.catch_warnings():  # a half may leave a group always in or out: it is skipped
        warnings.simplefilter("ignore", InfluenceWarning)
        for _ in range(splits):
            halves = _halves(m, blocks, rng)
            found = _correlation(masks, outputs, halves, estimator, blocks)
            correlations += found
            used += [len(halves[0]) + len(halves[1])] * len(found)
    if not correlations:
        raise ValueError("no split gave enough groups with estimates in both halves")
    models = m if blocks is None else round(float(np.mean(used)))
    return SplitHalf(
        float(np.mean(correlations)), float(np.std(correlations)), len(correlations), models
    )


def linear_datamodeling_score(
    masks: np.ndarray,
    outputs: np.ndarray,
    held_out: int,
    splits: int = 200,
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
    rng = np.random.default_rng(seed)
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfluenceWarning)
        for _ in range(splits):
            order = rng.permutation(m)
            test, train = order[:held_out], order[held_out:]
            influence = _overall(
                masks[train], y[train, None], estimator, None if blocks is None else blocks[train]
            )
            predicted = masks.astype(np.float64) @ np.nan_to_num(influence)
            if blocks is not None:
                predicted = centre_within(predicted, blocks)
            scores.append(np.corrcoef(_ranks(predicted[test]), _ranks(y[test]))[0, 1])
    return float(np.nanmean(scores)), float(np.nanstd(scores))


def explained_by_subsets(masks: np.ndarray, outputs: np.ndarray, folds: int = 10) -> float:
    """Share of the across-model variance of ``outputs`` (one value per model) that the models'
    subsets explain, out of sample: 1 - (cross-validated error of the ridge regression on the
    masks) / (error of predicting each model by the mean of the others).

    Estimation error lowers it with few models, so it is a lower bound; it can be below 0 when
    the subsets cannot be told apart from noise yet.
    """
    masks = np.asarray(masks)
    y = np.asarray(outputs, dtype=np.float64).reshape(-1)
    if masks.shape[0] < 2 * folds:
        raise ValueError(f"need at least {2 * folds} models, have {masks.shape[0]}")
    return explained_share(*ridge_cross_validation(masks, y, folds)[1:])


def explained_share(errors: np.ndarray, baseline: float) -> float:
    """:func:`explained_by_subsets` from a :func:`ridge_cross_validation` already run."""
    return float(1.0 - errors.min() / baseline) if baseline > 0 else float("nan")


def split_half_method(seed_per_chunk: bool) -> str:
    """What :func:`split_half_stability` estimates each half with, for reports: slopes within
    chunks where seeds are per chunk (``blocks``), else the difference in means."""
    return "slopes within chunks" if seed_per_chunk else "difference in means"


SHARED_SEED_CAVEAT = (
    "All models share one seed, so this is the ranking's stability for that seed; a run with "
    'another seed may rank somewhat differently (README: "Shared seeds").'
)


def explained_sentence(share: float) -> str:
    """What :func:`explained_by_subsets` means for the user, in one sentence."""
    text = (
        f"The models' subsets explain {max(share, 0.0):.0%} of how models differ in their mean "
        "output (cross-validated); the rest is training noise"
    )
    if share >= 0.5:
        return text + "."
    return text + ", which no estimator removes: more models or a steadier recipe reduce it."
