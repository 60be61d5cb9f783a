"""Rankings of source groups: overall, per target class, and a source x target class matrix.

Every function takes a fitted :class:`~transfer_influence.ClassInfluence` and returns a pandas
DataFrame; nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..estimation import ClassInfluence
from ..names import lookup

__all__ = ["class_matrix", "top_groups"]


def top_groups(
    model: ClassInfluence,
    n: int = 10,
    target_class: str | int | None = None,
    bottom: bool = False,
) -> pd.DataFrame:
    """The ``n`` most helpful (or, with ``bottom``, least helpful) source groups.

    Overall by default, or on one ``target_class`` (name or label index). Rows carry the
    influence, its standard error, confidence interval and q-value, and ``rank`` (1 = most
    helpful). Influence is relative to the average class: the bottom is "less helpful than
    average", which is not harm; `prune` measures that.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if target_class is None:
        table = model.classes_
    else:
        name = model.target_classes_[lookup(model.target_classes_, target_class, "target class")]
        table = model.per_target_class_[model.per_target_class_["target_class"] == name]
    table = table.dropna(subset=["influence"]).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    chosen = table.tail(n).iloc[::-1] if bottom else table.head(n)
    return chosen.reset_index(drop=True)


def class_matrix(model: ClassInfluence, rows: int | None = 40) -> pd.DataFrame:
    """Influence of source groups (rows) on target classes (columns), ordered to show structure.

    With ``rows``, only the groups with the largest absolute influence on any target class
    are kept, so a run with 1,000 source classes stays readable. Rows are grouped by the
    target class they help most and, within it, sorted by that influence; columns keep the
    target's label order.
    """
    per_class = model.estimate_.per_target_class
    if per_class is None:
        raise ValueError("the influence was estimated without target classes")
    values = per_class.values
    defined = np.flatnonzero(np.all(np.isfinite(values), axis=1))
    strength = np.abs(values[defined]).max(axis=1)
    keep = defined[np.argsort(-strength, kind="stable")]
    if rows is not None:
        keep = keep[:rows]
    best = values[keep].argmax(axis=1)
    order = keep[np.lexsort((-values[keep, best], best))]
    return pd.DataFrame(
        values[order],
        index=pd.Index([model.groups_[k] for k in order], name="source"),
        columns=pd.Index(list(model.target_classes_), name="target_class"),
    )
