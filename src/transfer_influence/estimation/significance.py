"""p- and q-values of influence estimates (pure numpy and scipy).

A ranking is read at its ends, where the largest of K noisy estimates sit: an interval that
excludes zero there says little, since among K = 100 classes with no effect about five do so
by chance. The q-value (Benjamini-Hochberg) accounts for that selection: flagging every group
with q <= 0.05 keeps the expected share of false flags among them at 5% or less, and with no
real effects at all, flags nothing in 95% of runs.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri, stdtr

__all__ = ["FLAG_LEVEL", "chance_extreme", "q_values", "t_test_p_values"]

FLAG_LEVEL = 0.05  # false discovery rate at which the tool calls a group distinguishable


def t_test_p_values(values: np.ndarray, stderr: np.ndarray, dof: int) -> np.ndarray:
    """Two-sided p-values of zero influence (Student t, ``dof`` degrees of freedom)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(np.asarray(values, dtype=np.float64) / np.asarray(stderr, dtype=np.float64))
    p = 2.0 * stdtr(max(dof, 1), -t)
    p[~np.isfinite(t)] = np.nan
    return p


def chance_extreme(count: int) -> float:
    """The median of the largest of ``count`` independent standard normal values: how many
    standard errors from zero the most extreme of ``count`` estimates lies by chance alone,
    in half of all runs (its CDF is Phi(x)**count)."""
    return float(0.0 - ndtri(-np.expm1(np.log(0.5) / max(count, 1))))  # 0.0 - : never -0.0


def q_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values along the first axis (over groups), each column
    on its own; NaN p-values (undefined estimates) are left out of the count and stay NaN."""
    from scipy.stats import false_discovery_control  # here: a third of a second to import

    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    columns = p.reshape(p.shape[0], -1)
    out = q.reshape(p.shape[0], -1)
    for c in range(columns.shape[1]):
        defined = np.isfinite(columns[:, c])
        if defined.any():
            out[defined, c] = false_discovery_control(columns[defined, c], method="bh")
    return q
