"""Estimates from outputs centred within chunks (a training seed per chunk).

Centring a chunk's outputs on their mean removes its seed's offset, but also the part of each
group's effect that the chunk's own mix of groups carries: with random subsets a chunk of C
models holds a group in a varying number of them, and the plain difference in means of the
centred outputs shrinks every effect by (C - 1) / C on average (a quarter with chunks of 4),
while its pooled error forgets the mean each chunk spent. The estimator centring calls for is
the slope within chunks (a fixed effect per chunk):

    b_k = sum_i x_ik y_i / sum_c a_ck (C_c - a_ck) / C_c

(y centred within chunks, a_ck the models of chunk c that hold k). Where every chunk holds
each group in exactly half its models (whole rounds of the balanced design at alpha = 0.5) it
is the difference in means. Its error has m - chunks - 1 degrees of freedom; the regression
centres its indicators within chunks alike (``between``). Pure numpy, streaming.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ChunkCentring", "centre_within", "within_difference"]


class ChunkCentring:
    """What centring each chunk on its own mean took out of the indicators, chunk by chunk."""

    def __init__(self, n_groups: int) -> None:
        self.chunks = 0
        self.spread = np.zeros(n_groups)  # sum_c a (C - a) / C: each indicator's within-chunk SS
        self.between = np.zeros((n_groups, n_groups))  # sum_c a a' / C: chunk means' part of X'X

    def update(self, masks: np.ndarray) -> None:
        """One chunk's masks (C x K bool); its outputs are centred on their mean."""
        size = masks.shape[0]
        held = masks.sum(axis=0).astype(np.float64)
        self.spread += held * (size - held) / size
        self.between += np.outer(held, held) / size
        self.chunks += 1


def within_difference(
    sum_in: np.ndarray, total_sq: np.ndarray, spread: np.ndarray, m: int, chunks: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Within-chunk slopes (K x T) of centred outputs, their standard errors and degrees of
    freedom, from ``sum_in`` = X'Y (K x T), ``total_sq`` = per-column sum of Y^2 and
    ``spread`` (:attr:`ChunkCentring.spread`); NaN where a group never varies within a chunk."""
    dof = m - chunks - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        values = sum_in / spread[:, None]
        residual = np.maximum(total_sq[None, :] - values * sum_in, 0.0)
        stderr = np.sqrt(residual / max(dof, 1) / spread[:, None])
    undefined = spread <= 0
    values[undefined] = np.nan
    stderr[undefined] = np.nan
    if dof < 1:
        stderr[:] = np.nan
    return values, stderr, dof


def centre_within(values: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """``values`` (m or m x K) minus the mean of their block (one id per model) — float64."""
    ids = np.unique(np.asarray(blocks), return_inverse=True)[1]
    values = np.asarray(values, dtype=np.float64)
    sums = np.zeros((ids.max() + 1,) + values.shape[1:])
    np.add.at(sums, ids, values)
    counts = np.bincount(ids).reshape((-1,) + (1,) * (values.ndim - 1))
    return values - (sums / counts)[ids]
