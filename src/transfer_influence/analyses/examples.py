"""Target examples through the eyes of the source: projection and failure modes.

``projection`` answers "which target images look like this source class to the models" (the
paper's Figure 4): the examples whose output rises most when the class is in the pretraining
data. ``failure_modes`` is its negative side (Figure 5), and ``most_hurt`` lists the target
examples that some source group hurts the most.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..estimation import ClassInfluence
from ..names import lookup

__all__ = ["failure_modes", "group_index", "most_hurt", "projection"]


def group_index(model: ClassInfluence, group: str | int) -> int:
    """The row of a source group given by name (or by index when no group has that name)."""
    return lookup(model.groups_, group, "source group")


def _examples(model: ClassInfluence, rows: np.ndarray, columns: np.ndarray) -> pd.DataFrame:
    """One table row per (source group rows[i], target example columns[i])."""
    per_example = model.estimate_.per_example
    rows = np.broadcast_to(rows, columns.shape)
    return pd.DataFrame(
        {
            "source": [model.groups_[k] for k in rows],
            "example": columns,
            "example_id": model.example_ids_[columns],
            "target_class": [model.target_classes_[c] for c in model.example_labels_[columns]],
            "influence": per_example.values[rows, columns],
            "stderr": per_example.stderr[rows, columns],
        }
    )


def _extreme(values: np.ndarray, n: int, largest: bool) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(values))
    order = np.argsort(-values[finite] if largest else values[finite], kind="stable")
    return finite[order[:n]]


def projection(model: ClassInfluence, group: str | int, n: int = 8) -> pd.DataFrame:
    """The ``n`` target examples most positively influenced by ``group``."""
    k = group_index(model, group)
    values = model.estimate_.per_example.values[k]
    return _examples(model, np.array(k), _extreme(values, n, largest=True))


def failure_modes(model: ClassInfluence, group: str | int, n: int = 8) -> pd.DataFrame:
    """The ``n`` target examples most negatively influenced by ``group``."""
    k = group_index(model, group)
    values = model.estimate_.per_example.values[k]
    return _examples(model, np.array(k), _extreme(values, n, largest=False))


def most_hurt(model: ClassInfluence, n: int = 8) -> pd.DataFrame:
    """The target examples that one source group hurts most, with that group.

    Ranked by the most negative influence any group has on the example; ``z`` is that
    influence in standard errors. These are picked out of K x n (group, example) pairs: by
    chance alone the most extreme lies about
    :func:`~transfer_influence.estimation.significance.chance_extreme` (K x n) standard
    errors from zero, so only a ``z`` well beyond that is more than noise.
    """
    values = model.estimate_.per_example.values
    finite = np.where(np.isfinite(values), values, np.inf)
    worst_group = finite.argmin(axis=0)
    worst = values[worst_group, np.arange(values.shape[1])]
    columns = _extreme(worst, n, largest=False)
    table = _examples(model, worst_group[columns], columns)
    table["z"] = table["influence"] / table["stderr"]
    return table
