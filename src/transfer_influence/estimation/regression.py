"""Regression-adjusted influence: the output regressed on all group indicators jointly.

The difference in means leaves in every class's estimate the variance caused by which *other*
classes were in each subset. Regressing the output on all K indicators at once removes it, so
the remaining error is the noise of training alone. With fixed-size subsets the indicators
always sum to alpha*K, so single coefficients are not identified; the quantity reported is the
one the difference in means estimates under an additive model,

    Infl[k] = b_k - mean_{l != k} b_l = K/(K-1) * (b_k - mean(b)),

which is identified. The fit is unpenalised least squares: unbiased, with the textbook
standard error and residual degrees of freedom, so the estimate is the centre of its interval.
(A ridge penalty would shrink the largest effects most, the ones a ranking is read for, and
an interval from its own variance then misses the truth for most of the top groups.) It is
computed from sufficient statistics (X'X, X'Y, sums of Y and Y^2), so it streams like the
difference in means. The same fit of each model's mean output gives the share of the spread
between models that their subsets explain (:func:`explained_by_subsets`).
"""

from __future__ import annotations

import numpy as np

from .centring import centre_within

__all__ = ["explained_by_subsets", "explained_share", "regression_influence", "variance_factors"]


def regression_influence(
    gram: np.ndarray,
    n_in: np.ndarray,
    xty: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    m: int,
    between: np.ndarray | None = None,
    absorbed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Influence contrasts of the least-squares fit (K x T), their standard errors and the
    fit's residual degrees of freedom.

    ``gram`` = X'X (K x K), ``n_in`` = X'1, ``xty`` = X'Y (K x T), ``total`` = 1'Y,
    ``total_sq`` = per-column sum of squares of Y, for m models. Where Y was centred within
    chunks (see :mod:`.centring`), X is centred within them too: ``between`` = sum over chunks
    of a a' / C, and ``absorbed`` = chunks - 1 means spent.
    """
    v, inverse_w = _centred_eigen(gram, n_in, m, between)
    b = xty - np.outer(n_in, total / m)  # centred X'Y (total is 0 where Y was centred)
    yy = total_sq - total**2 / m  # centred Y'Y
    least_squares = v @ (inverse_w[:, None] * (v.T @ b))
    rss = yy - np.einsum("kt,kt->t", least_squares, b)  # b lies in the range of g
    dof = max(int(m - 1 - absorbed - np.count_nonzero(inverse_w)), 1)
    factor = _contrast_factors(v, inverse_w)
    stderr = np.sqrt(factor[:, None] * (np.maximum(rss, 0.0) / dof)[None, :])
    return _contrast(gram.shape[0]) @ least_squares, stderr, dof


def variance_factors(
    gram: np.ndarray, n_in: np.ndarray, m: int, between: np.ndarray | None = None
) -> np.ndarray:
    """Each group's error variance of the regression's influence per unit of residual
    variance (K,): the design's part of its standard error, which needs no outputs."""
    return _contrast_factors(*_centred_eigen(gram, n_in, m, between))


def _contrast(k: int) -> np.ndarray:
    return k / (k - 1) * (np.eye(k) - 1.0 / k)


def _contrast_factors(v: np.ndarray, inverse_w: np.ndarray) -> np.ndarray:
    contrast = _contrast(v.shape[0])
    factor = np.einsum("ij,jk,ik->i", contrast, (v * inverse_w) @ v.T, contrast)
    return np.maximum(factor, 0.0)


def _centred_eigen(
    gram: np.ndarray, n_in: np.ndarray, m: int, between: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvectors of X'X centred (within chunks, where Y was) and the inverses of its
    eigenvalues, zero outside its range."""
    if between is None:
        between = np.outer(n_in, n_in) / m
    # A pseudo-inverse: fixed-size subsets leave the all-ones direction out of the centred
    # X'X's range (the indicators sum to a constant), and no contrast depends on it.
    w, v = np.linalg.eigh(gram - between)
    kept = w > w.max() * 1e-10
    return v, np.divide(1.0, w, out=np.zeros_like(w), where=kept)


def explained_by_subsets(
    masks: np.ndarray, outputs: np.ndarray, blocks: np.ndarray | None = None
) -> float | None:
    """Share of the across-model variance of ``outputs`` (one value per model) that the models'
    subsets explain: the adjusted R^2 of regressing it on the masks by least squares, which is
    about unbiased at any m (a cross-validated R^2 is not: fitted on fewer models than it
    judges, it reads far too low near m = K). ``blocks`` numbers models that share a seed:
    outputs and masks are compared within blocks. None until the fit has 10 residual degrees
    of freedom; it can be below 0 when the subsets cannot be told apart from noise.
    """
    return explained_share(masks, outputs, blocks)[0]


def explained_share(
    masks: np.ndarray, outputs: np.ndarray, blocks: np.ndarray | None = None
) -> tuple[float | None, int]:
    """:func:`explained_by_subsets` and the fit's residual degrees of freedom."""
    x = np.asarray(masks, dtype=np.float64)
    y = np.asarray(outputs, dtype=np.float64).reshape(-1)
    if blocks is None:
        x, y, spent = x - x.mean(axis=0), y - y.mean(), 1
    else:
        x, y, spent = centre_within(x, blocks), centre_within(y, blocks), np.unique(blocks).size
    coefficients, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    dof = int(x.shape[0] - spent - rank)
    total = float((y**2).sum())
    if dof < 10 or total <= 0:
        return None, dof
    rss = float(((y - x @ coefficients) ** 2).sum())
    return 1.0 - (rss / dof) / (total / (x.shape[0] - spent)), dof
