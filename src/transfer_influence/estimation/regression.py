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

from dataclasses import dataclass

import numpy as np

from .centring import centre_within

__all__ = ["CentredDesign", "explained_by_subsets", "explained_share", "regression_influence"]


@dataclass(frozen=True)
class CentredDesign:
    """The eigendecomposition of X'X centred (within chunks, where Y was): every fit of one
    set of models shares it. ``inverse_w`` holds the inverses of the eigenvalues, zero
    outside the range (fixed-size subsets leave the all-ones direction out of it: the
    indicators sum to a constant, and no contrast depends on it)."""

    v: np.ndarray
    inverse_w: np.ndarray

    @classmethod
    def of(
        cls, gram: np.ndarray, n_in: np.ndarray, m: int, between: np.ndarray | None = None
    ) -> CentredDesign:
        """From ``gram`` = X'X (K x K) and ``n_in`` = X'1 of m models; ``between`` = sum
        over chunks of a a' / C where outputs were centred within chunks."""
        if between is None:
            between = np.outer(n_in, n_in) / m
        w, v = np.linalg.eigh(gram - between)
        kept = w > w.max() * 1e-10
        return cls(v, np.divide(1.0, w, out=np.zeros_like(w), where=kept))

    @property
    def rank(self) -> int:
        return int(np.count_nonzero(self.inverse_w))

    def factors(self) -> np.ndarray:
        """Each group's error variance of the influence per unit of residual variance (K,):
        the design's part of its standard error, which needs no outputs."""
        contrast = _contrast(self.v.shape[0])
        inverse = (self.v * self.inverse_w) @ self.v.T
        return np.maximum(np.einsum("ij,jk,ik->i", contrast, inverse, contrast), 0.0)


def regression_influence(
    design: CentredDesign,
    n_in: np.ndarray,
    xty: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    m: int,
    absorbed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Influence contrasts of the least-squares fit (K x T), their standard errors and the
    fit's residual degrees of freedom.

    ``design`` = the models' :class:`CentredDesign`, ``n_in`` = X'1, ``xty`` = X'Y (K x T),
    ``total`` = 1'Y, ``total_sq`` = per-column sum of squares of Y, for m models. Where Y was
    centred within chunks (see :mod:`.centring`), ``absorbed`` = chunks - 1 means spent.
    """
    v, inverse_w = design.v, design.inverse_w
    b = xty - np.outer(n_in, total / m)  # centred X'Y (total is 0 where Y was centred)
    yy = total_sq - total**2 / m  # centred Y'Y
    least_squares = v @ (inverse_w[:, None] * (v.T @ b))
    rss = yy - np.einsum("kt,kt->t", least_squares, b)  # b lies in the range of X'X
    dof = max(int(m - 1 - absorbed - design.rank), 1)
    stderr = np.sqrt(design.factors()[:, None] * (np.maximum(rss, 0.0) / dof)[None, :])
    return _contrast(v.shape[0]) @ least_squares, stderr, dof


def _contrast(k: int) -> np.ndarray:
    return k / (k - 1) * (np.eye(k) - 1.0 / k)


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
