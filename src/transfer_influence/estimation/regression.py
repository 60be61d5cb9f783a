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
difference in means.
"""

from __future__ import annotations

import numpy as np

__all__ = ["regression_influence"]


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
    k = gram.shape[0]
    if between is None:
        between = np.outer(n_in, n_in) / m
    g = gram - between  # X'X centred (within chunks, where Y was)
    b = xty - np.outer(n_in, total / m)  # centred X'Y (total is 0 where Y was centred)
    yy = total_sq - total**2 / m  # centred Y'Y
    contrast = k / (k - 1) * (np.eye(k) - 1.0 / k)
    # A pseudo-inverse: fixed-size subsets leave the all-ones direction out of g's range (the
    # indicators sum to a constant), and no contrast depends on it.
    w, v = np.linalg.eigh(g)
    kept = w > w.max() * 1e-10
    inverse_w = np.divide(1.0, w, out=np.zeros_like(w), where=kept)
    least_squares = v @ (inverse_w[:, None] * (v.T @ b))
    rss = yy - np.einsum("kt,kt->t", least_squares, b)  # b lies in the range of g
    dof = max(int(m - 1 - absorbed - np.count_nonzero(kept)), 1)
    factor = np.einsum("ij,jk,ik->i", contrast, (v * inverse_w) @ v.T, contrast)
    stderr = np.sqrt(np.maximum(factor, 0.0)[:, None] * (np.maximum(rss, 0.0) / dof)[None, :])
    return contrast @ least_squares, stderr, dof
