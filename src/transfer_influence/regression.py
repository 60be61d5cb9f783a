"""Regression-adjusted influence: the output regressed on all group indicators jointly.

The difference in means leaves in every class's estimate the variance caused by which *other*
classes were in each subset. Regressing the output on all K indicators at once removes it, so
the remaining error is the noise of training alone. With fixed-size subsets the indicators
always sum to alpha*K, so single coefficients are not identified; the quantity reported is the
one the difference in means estimates under an additive model,

    Infl[k] = b_k - mean_{l != k} b_l = K/(K-1) * (b_k - mean(b)),

which is identified. Ridge regularisation (chosen by cross-validation over models) keeps it
stable when there are few models per class, but it shrinks every estimate toward zero, most
for the largest effects — the ones a ranking is read for. Intervals from the ridge fit's own
variance ignore that bias: in simulation they held the truth for 47-92% of the groups and
7-83% of the most influential tenth (`benchmarks/regression_intervals.py`). So the standard
error and the interval are those of the unpenalised least-squares fit (unbiased, identified
once there are more models than groups), widened where needed to hold the ridge estimate
(see :meth:`transfer_influence.estimation.Influence.ci`). Everything here is computed from
sufficient statistics (X'X, X'Y, sums of Y and Y^2), so it streams like the difference in means.
"""

from __future__ import annotations

import numpy as np

__all__ = ["choose_ridge", "regression_influence", "ridge_cross_validation"]


def regression_influence(
    gram: np.ndarray,
    n_in: np.ndarray,
    xty: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    m: int,
    ridge: float,
    between: np.ndarray | None = None,
    absorbed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Influence contrasts (ridge), the standard error and contrasts of the unpenalised fit
    (the interval's centre), and that fit's residual degrees of freedom.

    ``gram`` = X'X (K x K), ``n_in`` = X'1, ``xty`` = X'Y (K x T), ``total`` = 1'Y,
    ``total_sq`` = per-column sum of squares of Y, for m models. Where Y was centred within
    chunks (see :mod:`transfer_influence.centring`), X is centred within them too:
    ``between`` = sum over chunks of a a' / C, and ``absorbed`` = chunks - 1 means spent.
    """
    k = gram.shape[0]
    if between is None:
        between = np.outer(n_in, n_in) / m
    g = gram - between  # X'X centred (within chunks, where Y was)
    b = xty - np.outer(n_in, total / m)  # centred X'Y (total is 0 where Y was centred)
    yy = total_sq - total**2 / m  # centred Y'Y
    contrast = k / (k - 1) * (np.eye(k) - 1.0 / k)
    # One eigendecomposition serves both fits. Fixed-size subsets leave the all-ones direction
    # out of g's range (the indicators sum to a constant); no contrast depends on it.
    w, v = np.linalg.eigh(g)
    kept = w > w.max() * 1e-10
    inverse_w = np.divide(1.0, w, out=np.zeros_like(w), where=kept)
    projected = v.T @ b
    least_squares = v @ (inverse_w[:, None] * projected)
    rss = yy - np.einsum("kt,kt->t", least_squares, b)  # b lies in the range of g
    dof = max(int(m - 1 - absorbed - np.count_nonzero(kept)), 1)
    factor = np.einsum("ij,jk,ik->i", contrast, (v * inverse_w) @ v.T, contrast)
    stderr = np.sqrt(np.maximum(factor, 0.0)[:, None] * (np.maximum(rss, 0.0) / dof)[None, :])
    center = contrast @ least_squares
    if ridge == 0:
        return center, stderr, center, dof
    shrunk = v @ (projected / np.maximum(w + ridge, ridge)[:, None])
    return contrast @ shrunk, stderr, center, dof


def ridge_cross_validation(
    masks: np.ndarray, y: np.ndarray, folds: int = 10, seed: int = 0
) -> tuple[list[float], np.ndarray, float]:
    """k-fold cross-validation of predicting ``y`` (one output per model) from the masks:
    the candidate ridge penalties, the squared error summed over all models for each, and that
    of predicting every model by the mean of the others (no groups). 0 (least squares) is a
    candidate when m > K + 1."""
    x = masks.astype(np.float64)
    m, k = x.shape
    scale = float(((x - x.mean(axis=0)) ** 2).sum()) / k  # trace of the centred X'X, per group
    candidates = [f * scale for f in (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)]
    if m > k + 1 + m // max(folds, 2):
        candidates.insert(0, 0.0)
    order = np.random.default_rng(seed).permutation(m)
    fold_of = np.empty(m, dtype=int)
    fold_of[order] = np.arange(m) % max(2, min(folds, m))
    errors = np.zeros(len(candidates))
    baseline = 0.0
    for fold in np.unique(fold_of):
        train, test = fold_of != fold, fold_of == fold
        mean_x, mean_y = x[train].mean(axis=0), y[train].mean()
        xc, yc, xt = x[train] - mean_x, y[train] - mean_y, x[test] - mean_x
        baseline += float(((y[test] - mean_y) ** 2).sum())
        # One eigendecomposition per fold serves every penalty: with X'X = V diag(w) V' the fit
        # is V diag(1/(w+r)) V'X'y; with more groups than models the same in the m x m kernel
        # XX' = U diag(w) U' (fit X'U diag(1/(w+r)) U'y), whichever is smaller.
        if k <= xc.shape[0]:
            w, v = np.linalg.eigh(xc.T @ xc)
            features, projected = xt @ v, v.T @ (xc.T @ yc)
        else:
            w, u = np.linalg.eigh(xc @ xc.T)
            features, projected = (xt @ xc.T) @ u, u.T @ yc
        tiny = w.max() * 1e-10
        for c, ridge in enumerate(candidates):
            usable = (w > tiny) | (ridge > 0)  # least squares: a pseudo-inverse
            inverse = np.divide(1.0, w + ridge, out=np.zeros_like(w), where=usable)
            predicted = mean_y + features @ (inverse * projected)
            errors[c] += float(((predicted - y[test]) ** 2).sum())
    return candidates, errors, baseline


def choose_ridge(masks: np.ndarray, y: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """The ridge penalty with the lowest k-fold cross-validated error in predicting ``y``
    (one output per model) from the masks."""
    candidates, errors, _ = ridge_cross_validation(masks, y, folds, seed)
    return candidates[int(np.argmin(errors))]
