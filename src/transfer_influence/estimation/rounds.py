"""Standard errors of the difference in means for designs whose models come in rounds.

In the complementary and balanced designs the models of a round partition the groups: the
other groups a model holds are exactly those its round-mates lack. A group's models with and
without it are then not independent samples — their other groups' effects are negatively
correlated — and the pooled two-sample error, which assumes they are, is too small whenever
the subsets explain much of the spread between models. The round is the independent unit:
within a complete round of P models, group k's contrast

    d[k] = y(the model holding k) - mean of y over the round's other P - 1 models

has the difference in means as its mean over rounds, so the spread of d over rounds gives
the error. Pure numpy, streaming: models may arrive in any chunks; a round counts once all its
models have arrived (a round that lost a model, e.g. an unhealthy one, never does).
"""

from __future__ import annotations

import numpy as np

__all__ = ["RoundContrasts"]


class RoundContrasts:
    """First and second moments, over complete rounds, of every group's contrast on T columns.

    Feed models with :meth:`update`; :meth:`stderr` is the standard error of the mean
    contrast (K x T) with ``count - 1`` degrees of freedom. ``dtype`` is that of the
    products: float32 for the K x n per-example contrasts (partial sums kept in float64, as in
    the difference in means), float64 for a few summary columns.
    """

    def __init__(self, n_groups: int, n_columns: int, dtype: type = np.float32) -> None:
        self.n_groups = n_groups
        self.dtype = dtype
        self.count = 0  # complete rounds seen
        self.sum = np.zeros((n_groups, n_columns), dtype=np.float64)
        self.sum_sq = np.zeros((n_groups, n_columns), dtype=np.float64)
        self._masks = np.zeros((0, n_groups), dtype=bool)  # models of incomplete rounds
        self._values = np.zeros((0, n_columns), dtype=dtype)
        self._rounds = np.zeros(0, dtype=np.int64)

    def update(self, masks: np.ndarray, values: np.ndarray, rounds: np.ndarray) -> None:
        """Add models: ``masks`` m x K bool, ``values`` m x T, ``rounds`` m round numbers."""
        rounds = np.asarray(rounds, dtype=np.int64)
        if rounds.shape != (masks.shape[0],):
            raise ValueError(f"rounds must have one entry per model ({masks.shape[0]})")
        masks = np.concatenate([self._masks, masks])
        values = np.concatenate([self._values, values.astype(self.dtype, copy=False)])
        rounds = np.concatenate([self._rounds, rounds])
        if rounds.size == 0:
            return
        order = np.argsort(rounds, kind="stable")
        _, starts, sizes = np.unique(rounds[order], return_index=True, return_counts=True)
        coverage = np.add.reduceat(masks[order].astype(np.int32), starts, axis=0)
        complete = np.all(coverage == 1, axis=1) & (sizes >= 2)
        in_complete = np.repeat(complete, sizes)
        waiting = order[~in_complete]
        self._masks, self._values, self._rounds = masks[waiting], values[waiting], rounds[waiting]
        if complete.any():
            self._add(masks[order[in_complete]], values[order[in_complete]], sizes[complete])

    def _add(self, masks: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> None:
        """Models of complete rounds, each round's models consecutive, ``sizes`` per round."""
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        totals = np.repeat(np.add.reduceat(values, starts, axis=0, dtype=np.float64), sizes, 0)
        per_model = np.repeat(sizes, sizes).astype(np.float64)[:, None]
        # Model i's contrast is that of every group it holds: (P y_i - round total) / (P - 1).
        contrast = ((per_model * values - totals) / (per_model - 1.0)).astype(self.dtype)
        x = masks.T.astype(self.dtype)
        self.sum += x @ contrast
        self.sum_sq += x @ np.square(contrast)
        self.count += sizes.size

    def stderr(self) -> tuple[np.ndarray, int]:
        """Standard error of each group's mean contrast, and its degrees of freedom; NaN
        before there are two complete rounds."""
        r = self.count
        if r < 2:
            return np.full_like(self.sum, np.nan), max(r - 1, 1)
        variance = (self.sum_sq - np.square(self.sum) / r) / (r - 1)
        return np.sqrt(np.maximum(variance, 0.0) / r), r - 1
