"""Example-wise influence: which single source images help or hurt the target.

For runs whose groups are single source images (a built-in trainer ``pool``, or any trainer
whose groups are examples). With thousands of groups and fewer models than groups, the joint
regression of the class-level estimator is not identified; the datamodels-style estimator here
is a sparse (lasso) regression of the output on all inclusion indicators, its penalty chosen
by cross-validation over held-out models. It is fitted for the mean output over all target
examples and for each chosen target example; the difference in means stays available.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..names import lookup
from ..outputs import output_units
from ..store import RunError, RunStore
from ..trainers.protocol import parse_key
from .accumulator import estimate_influence
from .agreement import Agreement, independent_agreement
from .centring import centre_within
from .classes import model_stability, seed_blocks
from .diagnostics import SplitHalf, end_size

__all__ = ["ExampleInfluence", "sparse_influence"]

ESTIMATORS = ("sparse", "difference")


def sparse_influence(
    masks: np.ndarray,
    y: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    blocks: np.ndarray | None = None,
):
    """Lasso coefficients of ``y`` (m) on ``masks`` (m x K), penalty by ``folds``-fold
    cross-validation over models; returns (coefficients K, penalty). ``blocks`` numbers the
    models that shared a training seed: masks and outputs are then centred within blocks
    (a fixed effect per seed), as the difference in means' slopes within chunks are."""
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    x = masks.astype(np.float64)
    if blocks is not None:
        x, y = centre_within(x, blocks), centre_within(y, blocks)
    model = LassoCV(
        alphas=40, cv=KFold(folds, shuffle=True, random_state=seed), max_iter=5000, tol=1e-4
    ).fit(x, np.asarray(y, dtype=np.float64))
    return model.coef_, float(model.alpha_)


class ExampleInfluence:
    """Influence of every source example of an example-level run.

    Parameters
    ----------
    target, mode, output:
        As for :class:`~transfer_influence.ClassInfluence`.
    examples:
        Target examples (ids or indices) to attribute one by one, besides the overall mean.
    estimator:
        "sparse" (lasso, penalty by cross-validation over models) or "difference".

    After :meth:`fit`: ``overall_`` (one row per source example, most helpful first; the
    ``difference`` in means beside the ``influence`` breaks the lasso's ties at zero),
    ``per_example_`` (long table for the chosen target examples), ``unit_`` (of every
    influence: points for probabilities), ``penalties_``,
    ``agreement_`` (would an independent run of this size rank the source examples alike:
    the overall difference-in-means ranking, from its estimates and errors; None with too few
    examples), ``stability_`` (split-half rank stability of that ranking, as measured),
    ``n_models_``.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        examples: Sequence[str | int] = (),
        estimator: str = "sparse",
    ) -> None:
        self.target = target
        self.mode = mode
        self.output = output
        self.examples = tuple(examples)
        self.estimator = estimator

    def _columns(self, ids: np.ndarray) -> np.ndarray:
        names = ids.tolist()
        return np.array(
            [lookup(names, example, "target example") for example in self.examples], np.int64
        )

    def fit(self, store: RunStore, progress: bool = False) -> ExampleInfluence:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {ESTIMATORS}")
        key = store.resolve_key(self.target, self.mode)
        target = store.target(parse_key(key)[0])
        columns = self._columns(target.example_ids)
        masks, means, chosen = [], [], []
        chunks = store.iter_outputs(key, self.output)
        scale, self.unit_ = output_units(self.output)  # every number in the unit users read
        for chunk in tqdm(chunks, disable=not progress, leave=False):
            values = chunk.values * np.float32(scale)
            masks.append(chunk.masks)
            means.append(values.mean(axis=1, dtype=np.float64))
            chosen.append(values[:, columns])
        if sum(len(m) for m in masks) < 10:
            raise RunError(f"{store.root} has too few models for example-wise influence (< 10)")
        x = np.concatenate(masks)
        targets = {"overall": np.concatenate(means)}
        per_column = np.concatenate(chosen).T
        targets.update(
            {str(target.example_ids[j]): y for j, y in zip(columns, per_column, strict=True)}
        )
        self.penalties_: dict[str, float | None] = {}
        self.agreement_: Agreement | None = None
        tables = {}
        blocks = seed_blocks(store, masks)
        for name, y in targets.items():
            estimate = estimate_influence(x, y[:, None], blocks=blocks).overall
            difference = estimate.values[:, 0]
            if name == "overall":
                with contextlib.suppress(ValueError):  # too few examples with estimates
                    self.agreement_ = independent_agreement(
                        difference, estimate.stderr[:, 0], len(x), end_size(difference.size)
                    )
            if self.estimator == "sparse":
                values, self.penalties_[name] = sparse_influence(x, y, blocks=blocks)
            else:
                values, self.penalties_[name] = difference, None
            # The lasso sets most coefficients to exactly zero: those are ordered by the
            # difference in means rather than left in pool order.
            tables[name] = (
                pd.DataFrame(
                    {
                        "source_example": list(store.groups),
                        "influence": values,
                        "difference": difference,
                    }
                )
                .sort_values(["influence", "difference"], ascending=False, kind="stable")
                .reset_index(drop=True)
            )
        self.overall_ = tables.pop("overall")
        rows = [t.assign(target_example=name) for name, t in tables.items()]
        self.per_example_ = (
            pd.concat(rows, ignore_index=True)
            if rows
            else pd.DataFrame(
                columns=["source_example", "influence", "difference", "target_example"]
            )
        )
        self.stability_: SplitHalf | None = model_stability(x, targets["overall"], blocks)
        self.n_models_ = int(len(x))
        return self
