"""Class-level influence of a run, estimated by streaming its chunks through the estimator."""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .estimation import (
    MIN_RESIDUAL_DOF,
    Influence,
    InfluenceAccumulator,
    InfluenceEstimate,
    InfluenceWarning,
)
from .regression import ridge_cross_validation
from .stability import SplitHalf, explained_share, linear_datamodeling_score, split_half_stability
from .store import RunError, RunStore
from .store.files import atomic_write_bytes, write_json

__all__ = ["ClassInfluence", "model_stability", "run_stability", "seed_blocks"]


def run_stability(
    store: RunStore, target: str | None = None, mode: str | None = None, output: str = "p_correct"
) -> SplitHalf | None:
    """Split-half rank stability of a run's overall class ranking (difference in means, or
    slopes within chunks where seeds are per chunk), or None while there are too few models
    to measure it."""
    key = store.resolve_key(target, mode)
    masks, means = [], []
    for chunk in store.iter_outputs(key, output):
        masks.append(chunk.masks)
        means.append(chunk.values.mean(axis=1, dtype=np.float64))
    if not masks:
        raise RunError(f"{store.root} has no finished models yet")
    return model_stability(np.concatenate(masks), np.concatenate(means), seed_blocks(store, masks))


def model_stability(
    masks: np.ndarray, means: np.ndarray, blocks: np.ndarray | None
) -> SplitHalf | None:
    """Split-half stability, or None before there are 8 models (in 2 seed blocks, if any)."""
    if len(masks) < 8 or (blocks is not None and np.unique(blocks).size < 2):
        return None
    return split_half_stability(masks, means, blocks=blocks)


def seed_blocks(store: RunStore, masks_per_chunk: list[np.ndarray]) -> np.ndarray | None:
    """Which models share a training seed, for splitting them into halves by whole seeds:
    the chunk number of every model in a ``seed_per_chunk`` run, else None (every model its
    own seed, or — ``shared_seed`` — one seed for all, which no split can separate)."""
    if not store.config.run.seed_per_chunk:
        return None
    return np.concatenate([np.full(len(m), c) for c, m in enumerate(masks_per_chunk)])


class ClassInfluence:
    """Influence of every source group on one (target, mode) output of a run.

    Parameters follow the run's names; ``target`` and ``mode`` may be left out when the run
    has one. After :meth:`fit`: ``estimate_`` (:class:`InfluenceEstimate`), ``classes_`` (one
    row per source group, most helpful first), ``per_target_class_`` (long table),
    ``n_models_`` and ``n_excluded_`` (unhealthy models left out), ``example_ids_`` and
    ``example_labels_`` (the target examples, in the order of the per-example columns);
    how far to trust it: ``stability_`` (:class:`SplitHalf` or None), ``lds_``,
    ``explained_`` and, for reading those, ``shared_seed_`` and ``seed_per_chunk_``.
    """

    def __init__(
        self,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        level: float = 0.95,
        estimator: str = "auto",
        ridge: float | None = None,
    ) -> None:
        self.target = target
        self.mode = mode
        self.output = output
        self.level = level
        self.estimator = estimator
        self.ridge = ridge

    def fit(self, store: RunStore, progress: bool = False) -> ClassInfluence:
        """Stream every finished chunk of ``store`` through the estimator."""
        self.key_ = store.resolve_key(self.target, self.mode)
        target = store.target(self.key_.split("/")[0])
        accumulator = InfluenceAccumulator(len(store.groups), target.labels.size, target.labels)
        self.n_excluded_ = 0
        chunks = tqdm(
            store.iter_outputs(self.key_, self.output),
            total=len(store.chunks),
            unit="chunk",
            desc="estimating",
            disable=not progress,
            leave=False,
        )
        chunk_masks, output_sum = [], 0.0
        centred = store.config.run.seed_per_chunk  # the store centres each chunk's outputs
        for chunk in chunks:
            accumulator.update(chunk.masks, chunk.values, chunk.rounds, centred)
            self.n_excluded_ += chunk.excluded
            chunk_masks.append(chunk.masks)
            output_sum += chunk.values.sum(dtype=np.float64) + len(chunk.masks) * chunk.offset.sum()
        if accumulator.n_models < 2:
            raise RunError(
                f"{store.root} has {accumulator.n_models} usable model(s) for {self.key_}; "
                "need at least 2 (run more models)"
            )
        masks, means, m = accumulator.masks, accumulator.model_means, accumulator.n_models
        # One cross-validation serves the ridge penalty and the share the subsets explain.
        validation = ridge_cross_validation(masks, means) if m >= 20 else None
        ridge = self.ridge
        if ridge is None and validation is not None:
            ridge = validation[0][int(np.argmin(validation[1]))]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InfluenceWarning)
            self.estimate_: InfluenceEstimate = accumulator.result(self.estimator, ridge)
        blocks = seed_blocks(store, chunk_masks)
        self.stability_ = model_stability(masks, means, blocks)
        # How much of what separates models their subsets explain; the rest is training noise.
        self.explained_: float | None = (
            explained_share(*validation[1:]) if validation is not None else None
        )
        # Held-out prediction of whole-model outputs; the fitting part must suit the estimator.
        self.lds_: float | None = None
        held_out = max(3, m // 5)
        seed_levels = 0 if blocks is None else np.unique(blocks).size - 1
        if m - held_out >= (
            len(store.groups) + MIN_RESIDUAL_DOF + seed_levels
            if self.estimate_.estimator == "regression"
            else 4
        ):
            self.lds_ = linear_datamodeling_score(
                masks, means, held_out, estimator=self.estimate_.estimator, blocks=blocks
            )[0]
        self.shared_seed_ = store.config.run.shared_seed
        self.seed_per_chunk_ = store.config.run.seed_per_chunk
        self.groups_ = store.groups
        self.target_classes_ = target.class_names
        self.example_ids_ = target.example_ids
        self.example_labels_ = target.labels
        self.n_models_ = accumulator.n_models
        self.mean_output_ = float(output_sum / (m * target.labels.size))
        self.classes_ = self._table(self.estimate_.overall, None)
        self.per_target_class_ = pd.concat(
            [
                self._table(self.estimate_.per_target_class, c)
                for c in range(len(target.class_names))
            ],
            ignore_index=True,
        )
        undefined = self.classes_.loc[self.classes_["influence"].isna(), "group"].tolist()
        if caught and undefined:
            warnings.warn(
                f"influence is NaN for {len(undefined)} group(s) never or always in a subset "
                f"(first: {', '.join(undefined[:5])}); train more models",
                InfluenceWarning,
                stacklevel=2,
            )
        return self

    def _table(self, influence: Influence, column: int | None) -> pd.DataFrame:
        col = 0 if column is None else column
        low, high = influence.ci(self.level)
        table = pd.DataFrame(
            {
                "group": list(self.groups_),
                "influence": influence.values[:, col],
                "stderr": influence.stderr[:, col],
                "ci_low": low[:, col],
                "ci_high": high[:, col],
                "n_in": influence.n_in,
                "n_out": influence.n_out,
            }
        )
        if column is not None:
            table.insert(0, "target_class", self.target_classes_[column])
        return table.sort_values(
            "influence", ascending=False, na_position="last", kind="stable"
        ).reset_index(drop=True)

    def save(self, folder: str | Path, run: str = "") -> Path:
        """Write classes.csv, per_target_class.csv, influence.npy, stderr.npy (and, for the
        ridge regression, interval_center.npy), summary.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "classes.csv", self.classes_.to_csv(index=False).encode())
        atomic_write_bytes(
            folder / "per_target_class.csv", self.per_target_class_.to_csv(index=False).encode()
        )
        per_example = self.estimate_.per_example
        files = {
            "influence.npy": "K x n float32, rows in classes order of run.json groups",
            "stderr.npy": "K x n float32 standard errors across models (regression: those of "
            "its unpenalised fit)",
        }
        arrays = {"influence": per_example.values, "stderr": per_example.stderr}
        if per_example.center is not None:
            files["interval_center.npy"] = (
                "K x n float32: the unpenalised fit's estimate; the interval is center +- t * "
                "stderr (t with the summary's dof), widened to hold the influence"
            )
            arrays["interval_center"] = per_example.center
        else:  # an earlier estimate's centre would belong to other values
            (folder / "interval_center.npy").unlink(missing_ok=True)
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array.astype(np.float32))
            atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())
        defined = self.classes_.dropna(subset=["influence"])
        write_json(
            folder / "summary.json",
            {
                "run": run,
                "key": self.key_,
                "output": self.output,
                "estimator": self.estimate_.estimator,
                "ridge": self.estimate_.ridge,
                "level": self.level,
                "n_models": self.n_models_,
                "n_excluded_unhealthy": self.n_excluded_,
                "n_groups": len(self.groups_),
                "n_examples": int(self.estimate_.per_example.values.shape[1]),
                "mean_output": self.mean_output_,
                "most_helpful": defined.head(5)[["group", "influence", "stderr"]].to_dict(
                    "records"
                ),
                "most_harmful": defined.tail(5)[::-1][["group", "influence", "stderr"]].to_dict(
                    "records"
                ),
                "lds": self.lds_,
                "explained_by_subsets": self.explained_,
                "split_half_spearman": self.stability_.spearman if self.stability_ else None,
                "split_half_within_one_seed": self.shared_seed_,
                "seed_per_chunk": self.seed_per_chunk_,
                "models_for_split_half_0.9": (
                    self.stability_.models_needed(0.9) if self.stability_ else None
                ),
                "ci_excludes_zero": int(((defined.ci_low > 0) | (defined.ci_high < 0)).sum()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "dof": per_example.dof,
                "files": files,
            },
        )
        return folder
