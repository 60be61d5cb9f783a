"""The report's example-wise section, for runs whose groups are single source images (a
built-in trainer ``pool``): the source images that help or hurt the target most, overall and
for chosen target images, next to the target images they affect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..estimation import ClassInfluence, ExampleInfluence
from ..store import RunError, RunStore
from ..trainers.protocol import parse_key
from ..words import agreement_sentences, split_half_method
from .images import RunImages, png, thumbnail

__all__ = ["example_section", "is_example_run", "most_affected_examples"]

_AUTO_TARGETS = 4  # target images shown when none are chosen


def is_example_run(store: RunStore) -> bool:
    return (
        store.config.trainer.type == "builtin"
        and store.config.trainer.params.get("pool") is not None
    )


def most_affected_examples(influence: ClassInfluence, n: int) -> list[str]:
    """The ``n`` target examples with the largest effect of any one source image (difference
    in means or regression over all images: a cheap screen before the sparse fit)."""
    values = np.nan_to_num(np.abs(influence.estimate_.per_example.values))
    strongest = values.max(axis=0)
    order = np.argsort(-strongest, kind="stable")[:n]
    return [str(influence.example_ids_[j]) for j in order]


def example_section(
    store: RunStore,
    influence: ClassInfluence,
    images: RunImages,
    chosen: Sequence[str],
    n: int,
    value: Callable[[float], str],
    uri: Callable[[bytes], str],
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Template context and tables (``examples_overall``, ``examples_per_target``)."""
    targets = list(chosen) or most_affected_examples(influence, _AUTO_TARGETS)
    target_name, mode = parse_key(influence.key_)
    try:
        fitted = ExampleInfluence(
            target=target_name, mode=mode, output=influence.output, examples=targets,
            estimator="sparse",
        ).fit(store)  # fmt: skip
    except RunError as error:
        return {"note": str(error), "overall": [], "targets": []}, {}
    group = {name: k for k, name in enumerate(store.groups)}
    position = {str(i): j for j, i in enumerate(influence.example_ids_)}

    def source_thumbs(table: pd.DataFrame) -> list[dict[str, str]]:
        rows = []
        for row in table.itertuples():
            image = images.source_samples(group[row.source_example], 1)
            src = uri(png(thumbnail(image[0]))) if len(image) else ""
            rows.append({"src": src, "caption": f"{row.source_example} {value(row.influence)}"})
        return rows

    def extremes(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        nonzero = table[table["influence"] != 0]
        helpful = nonzero[nonzero["influence"] > 0].head(n)
        harmful = nonzero[nonzero["influence"] < 0].iloc[::-1].head(n)
        return helpful, harmful

    helpful, harmful = extremes(fitted.overall_)
    blocks = []
    for example in targets:
        table = fitted.per_example_[fitted.per_example_["target_example"] == example]
        up, down = extremes(table)
        j = position[example]
        label = influence.target_classes_[influence.example_labels_[j]]
        target_src = uri(png(thumbnail(images.target[j]))) if images.target is not None else ""
        blocks.append(
            {
                "example": example,
                "label": label,
                "src": target_src,
                "helpful": source_thumbs(up.head(max(1, n // 2))),
                "harmful": source_thumbs(down.head(max(1, n // 2))),
            }
        )
    stability = fitted.stability_
    note = (
        f"{fitted.n_models_} models, {len(store.groups):,} pool images; sparse (lasso) "
        "regression, penalty by 5-fold cross-validation over models."
    )
    if fitted.agreement_ is not None:
        note += (
            " The difference-in-means ranking of the same models, against an independent run "
            f"of this size: {' '.join(agreement_sentences(fitted.agreement_, 'pool images'))}"
        )
    if stability is not None:
        note += (
            " Split-half rank stability of that ranking, measured "
            f"({split_half_method(store.config.run.seeds == 'chunk')}): Spearman "
            f"{stability.spearman:.2f}."
        )
    context = {
        "note": note,
        "overall": [
            {"title": "most helpful", "thumbs": source_thumbs(helpful)},
            {"title": "least helpful", "thumbs": source_thumbs(harmful)},
        ],
        "targets": blocks,
    }
    tables = {"examples_overall": fitted.overall_, "examples_per_target": fitted.per_example_}
    return context, tables
