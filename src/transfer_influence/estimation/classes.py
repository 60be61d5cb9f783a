"""Class-level influence of a run, estimated by streaming its chunks through the estimator."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..files import (
    CorruptFileError,
    arrays_bytes,
    csv_text,
    json_bytes,
    open_regular,
    read_arrays,
    read_json,
    settle_folder,
    write_folder,
)
from ..outputs import output_units, with_unit
from ..store import RunError, RunStore, RunWarning
from ..trainers.protocol import parse_key
from .accumulator import (
    MIN_RESIDUAL_DOF,
    Influence,
    InfluenceAccumulator,
    InfluenceEstimate,
    InfluenceWarning,
)
from .agreement import Agreement, independent_agreement
from .diagnostics import (
    SplitHalf,
    end_size,
    explained_by_subsets,
    linear_datamodeling_score,
    split_half_stability,
)
from .significance import FLAG_LEVEL

__all__ = ["ClassInfluence", "model_stability", "run_agreement", "seed_blocks"]

# What every class-level number means, said wherever it is shown or saved (summary.json):
# holding class k in a fixed-size subset means leaving out another class.
RELATIVE_NOTE = (
    "Influence compares models with and without a class at a fixed subset size, so it is "
    "relative to the average class: a negative value means less helpful than average, not "
    "harmful. Whether removing a class helps is what `prune` measures."
)
LDS_SPLITS = 50  # random fifths held out; the score's spread over them is ~0.1 at m = 150


def run_agreement(
    store: RunStore, targets: dict[str, float] | None = None, output: str = "p_correct"
) -> Agreement | None:
    """Would an independent run of this run's size agree on its overall class ranking (its
    first target and mode), and how many models would each of ``targets`` need
    (:func:`.agreement.independent_agreement`); None while too few classes have estimates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfluenceWarning)
        model = ClassInfluence(output=output, diagnostics=False).fit(store)
    overall = model.estimate_.overall
    k = end_size(len(model.groups_))
    try:
        return independent_agreement(
            overall.values[:, 0], overall.stderr[:, 0], model.n_models_, k, targets
        )
    except ValueError:
        return None


def model_stability(
    masks: np.ndarray,
    means: np.ndarray,
    blocks: np.ndarray | None,
    estimator: str = "difference",
) -> SplitHalf | None:
    """Split-half stability, or None before there are 8 models (in 2 seed blocks, if any).

    Each half is estimated as the ranking shown is: by the regression where that was chosen
    and half the models can fit it; else by the difference in means (the SplitHalf says which).
    """
    m = len(masks)
    if m < 8 or (blocks is not None and np.unique(blocks).size < 2):
        return None
    seed_levels = 0 if blocks is None else np.unique(blocks).size // 2
    if m // 2 < masks.shape[1] + MIN_RESIDUAL_DOF + seed_levels:
        estimator = "difference"
    try:
        return split_half_stability(masks, means, blocks=blocks, estimator=estimator)
    except ValueError:  # no split left enough groups estimable in both halves
        return None


def seed_blocks(store: RunStore, masks_per_chunk: list[np.ndarray]) -> np.ndarray | None:
    """Which models share a training seed, for comparing models within it: the chunk number
    of every model in a run with ``seeds = "chunk"``, else None (every model its own seed, or
    one seed for all, which no split can separate)."""
    if store.config.run.seeds != "chunk":
        return None
    return np.concatenate([np.full(len(m), c) for c, m in enumerate(masks_per_chunk)])


class ClassInfluence:
    """Influence of every source group on one (target, mode) output of a run.

    Parameters follow the run's names; ``target`` and ``mode`` may be left out when the run
    has one; ``diagnostics=False`` skips the measures of trust (for a quick query). After
    :meth:`fit`: ``estimate_`` (:class:`InfluenceEstimate`), ``classes_`` (one row per source
    group, most helpful first, with its interval and q-value), ``per_target_class_`` (long
    table, q-values over the whole table), ``n_models_`` and ``n_excluded_`` (unhealthy models
    left out), ``damaged_chunks_`` (chunks found damaged, moved aside and left out),
    ``example_ids_`` and ``example_labels_`` (the target examples, in the order of the
    per-example columns); how far to trust it: ``agreement_`` (:class:`Agreement`: would an
    independent run of this size agree?), ``stability_`` (:class:`SplitHalf` or
    None), ``lds_``, ``explained_`` and, for reading those, ``seeds_`` (the run's
    ``run.seeds``: "model", "chunk" or "run").

    Every value, interval and table is in ``unit_``: points (hundredths) for probabilities and
    accuracy, the output's own unit otherwise (:func:`~transfer_influence.outputs.output_units`).
    Influence is relative to the average class: see :data:`RELATIVE_NOTE`.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        level: float = 0.95,
        estimator: str = "auto",
        diagnostics: bool = True,
    ) -> None:
        self.target = target
        self.mode = mode
        self.output = output
        self.level = level
        self.estimator = estimator
        self.diagnostics = diagnostics

    def fit(self, store: RunStore, progress: bool = False) -> ClassInfluence:
        """Stream every finished chunk of ``store`` through the estimator, or read the run's
        saved estimate (``estimate``'s files) when it was made from the same chunks with the
        same options, and holds the diagnostics if they are asked for."""
        self.key_ = store.resolve_key(self.target, self.mode)
        self.made_from_ = {
            "chunks": store.chunks_digest(),
            "key": self.key_,
            "output": self.output,
            "estimator": self.estimator,
            "level": self.level,
        }
        if self._load(store):
            return self
        return self._stream(store, progress)

    def _stream(self, store: RunStore, progress: bool) -> ClassInfluence:
        self.key_ = store.resolve_key(self.target, self.mode)
        self._store = store
        target = store.target(parse_key(self.key_)[0])
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
        seed_block = store.config.run.seeds == "chunk"  # a chunk's models share a seed
        # Every number from here on is in the unit shown to users (points for probabilities).
        scale, self.unit_ = output_units(self.output)
        for chunk in chunks:
            dropped = accumulator.n_dropped
            values = chunk.values * np.float32(scale)
            accumulator.update(chunk.masks, values, chunk.rounds, seed_block)
            self.n_excluded_ += chunk.excluded + accumulator.n_dropped - dropped
            if accumulator.n_dropped == dropped:
                chunk_masks.append(chunk.masks)
                output_sum += values.sum(dtype=np.float64)
        self.damaged_chunks_ = [chunk.name for chunk in store.quarantined]
        if self.damaged_chunks_:
            warnings.warn(
                f"{len(self.damaged_chunks_)} damaged chunk(s) moved to {store.path('corrupt')} "
                f"and left out of this estimate ({', '.join(self.damaged_chunks_[:3])}); "
                f"`transfer-influence run {store.root}` trains them again",
                RunWarning,
                stacklevel=2,
            )
        if accumulator.n_models < 2:
            raise RunError(
                f"{store.root} has {accumulator.n_models} usable model(s) for {self.key_}; "
                "need at least 2 (run more models)"
            )
        m = accumulator.n_models
        self._accumulator = accumulator
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InfluenceWarning)
            self.estimate_: InfluenceEstimate = accumulator.result(self.estimator)
        self.stability_: SplitHalf | None = None
        self.agreement_: Agreement | None = None
        self.explained_: float | None = None
        self.lds_: float | None = None
        if self.diagnostics:
            self._diagnose(accumulator, seed_blocks(store, chunk_masks), len(store.groups))
        self.seeds_ = store.config.run.seeds
        self.groups_ = store.groups
        self.target_classes_ = target.class_names
        self.example_ids_ = target.example_ids
        self.example_labels_ = target.labels
        self.n_models_ = m
        self.mean_output_ = float(output_sum / (m * target.labels.size))
        self._tables()
        undefined = self.classes_.loc[self.classes_["influence"].isna(), "group"].tolist()
        if caught and undefined:
            warnings.warn(
                f"influence is NaN for {len(undefined)} group(s) never or always in a subset "
                f"(first: {', '.join(undefined[:5])}); train more models",
                InfluenceWarning,
                stacklevel=2,
            )
        return self

    def per_example(self, estimator: str) -> Influence:
        """The K x n per-example influence by ``estimator`` ("difference" or "regression"),
        from the same models: the leakage finder wants the difference in means, whose
        per-example noise near m = K is far below the least-squares fit's."""
        if estimator == self.estimate_.estimator:
            return self.estimate_.per_example
        if self._accumulator is None:  # read from a saved estimate: stream the chunks now
            fitted = ClassInfluence(
                target=self.target, mode=self.mode, output=self.output, level=self.level,
                estimator=self.estimator, diagnostics=False,
            )  # fmt: skip
            self._accumulator = fitted._stream(self._store, progress=False)._accumulator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InfluenceWarning)
            return self._accumulator.result(estimator).per_example

    def _diagnose(
        self, accumulator: InfluenceAccumulator, blocks: np.ndarray | None, groups: int
    ) -> None:
        """Split-half stability, the explained share and the held-out LDS of the estimate."""
        masks, means, m = accumulator.masks, accumulator.model_means, accumulator.n_models
        self.stability_ = model_stability(masks, means, blocks, self.estimate_.estimator)
        overall = self.estimate_.overall
        with contextlib.suppress(ValueError):  # too few groups with estimates to compare
            self.agreement_ = independent_agreement(
                overall.values[:, 0], overall.stderr[:, 0], m, end_size(groups)
            )
        self.explained_ = explained_by_subsets(masks, means, blocks)
        # Held-out prediction of whole-model outputs; the fitting part must suit the estimator.
        held_out = max(3, m // 5)
        seed_levels = 0 if blocks is None else np.unique(blocks).size - 1
        regression = self.estimate_.estimator == "regression"
        if m - held_out >= (groups + MIN_RESIDUAL_DOF + seed_levels if regression else 4):
            self.lds_ = linear_datamodeling_score(
                masks,
                means,
                held_out,
                splits=LDS_SPLITS,
                estimator=self.estimate_.estimator,
                blocks=blocks,
            )[0]

    def _table(
        self, influence: Influence, column: int | None, q: np.ndarray | None = None
    ) -> pd.DataFrame:
        col = 0 if column is None else column
        low, high = influence.ci(self.level)
        ends_low, ends_high = influence.simultaneous_ci(self.level)
        q = influence.q_values() if q is None else q
        table = pd.DataFrame(
            {
                "group": list(self.groups_),
                "influence": influence.values[:, col],
                "stderr": influence.stderr[:, col],
                "ci_low": low[:, col],
                "ci_high": high[:, col],
                "q_value": q[:, col],
                "n_in": influence.n_in,
                "n_out": influence.n_out,
                "simultaneous_low": ends_low[:, col],
                "simultaneous_high": ends_high[:, col],
            }
        )
        if column is not None:
            table.insert(0, "target_class", self.target_classes_[column])
        return table.sort_values(
            "influence", ascending=False, na_position="last", kind="stable"
        ).reset_index(drop=True)

    def flagged(self) -> tuple[int, int]:
        """Groups distinguishable from the average class (q <= FLAG_LEVEL): above, below."""
        table = self.classes_
        flagged = table["q_value"] <= FLAG_LEVEL
        return int((flagged & (table["influence"] > 0)).sum()), int(
            (flagged & (table["influence"] < 0)).sum()
        )

    def _load(self, store: RunStore) -> bool:
        """Take the saved estimate of ``store`` if it was made from the same chunks with the
        same options (``made_from_``); False, and nothing changed, when it was not."""
        folder = store.path("influence")
        settle_folder(folder)
        try:
            summary = read_json(folder / "summary.json")
            if not isinstance(summary, dict) or summary.get("made_from") != self.made_from_:
                return False
            diagnostics = summary.get("diagnostics")
            if self.diagnostics and diagnostics is None:
                return False  # saved without the diagnostics asked for now
            if diagnostics is not None and "agreement" not in diagnostics:
                return False  # saved before the agreement was estimated
            stability = diagnostics["stability"] if diagnostics else None
            self.stability_ = None if stability is None else SplitHalf(**stability)
            agreement = diagnostics["agreement"] if diagnostics else None
            self.agreement_ = None if agreement is None else Agreement.from_record(agreement)
            self.explained_ = diagnostics["explained"] if diagnostics else None
            self.lds_ = diagnostics["lds"] if diagnostics else None
            saved = read_arrays(folder / "estimate.npz")
            with (
                open_regular(folder / "influence.npy") as values,
                open_regular(folder / "stderr.npy") as stderr,
            ):
                per_example = np.load(values, allow_pickle=False).astype(np.float64)
                per_example_stderr = np.load(stderr, allow_pickle=False).astype(np.float64)
        except (OSError, ValueError, TypeError, KeyError, CorruptFileError):
            return False  # no saved estimate, or not a whole one: fit instead
        target = store.target(parse_key(self.key_)[0])
        n_in, n_out = saved["n_in"], saved["n_out"]
        dofs = saved["dofs"].tolist()

        def influence(values: np.ndarray, errors: np.ndarray, dof: int) -> Influence:
            return Influence(values, errors, n_in, n_out, int(dof))

        self.estimate_ = InfluenceEstimate(
            per_example=influence(per_example, per_example_stderr, dofs[0]),
            overall=influence(saved["overall"], saved["overall_stderr"], dofs[1]),
            per_target_class=influence(saved["per_class"], saved["per_class_stderr"], dofs[2]),
            n_models=int(summary["n_models"]),
            estimator=str(summary["estimator"]),
        )
        self._store, self._accumulator = store, None
        self.unit_ = output_units(self.output)[1]
        self.n_excluded_ = int(summary["n_excluded_unhealthy"])
        self.damaged_chunks_ = list(summary["damaged_chunks_left_out"])
        self.seeds_ = store.config.run.seeds
        self.groups_ = store.groups
        self.target_classes_ = target.class_names
        self.example_ids_ = target.example_ids
        self.example_labels_ = target.labels
        self.n_models_ = int(summary["n_models"])
        self.mean_output_ = float(summary["mean_output"])
        self._tables()
        return True

    def _tables(self) -> None:
        self.classes_ = self._table(self.estimate_.overall, None)
        per_class = self.estimate_.per_target_class
        whole = per_class.q_values(whole_table=True)
        self.per_target_class_ = pd.concat(
            [self._table(per_class, c, whole) for c in range(len(self.target_classes_))],
            ignore_index=True,
        )

    def save(self, folder: str | Path, run: str = "") -> Path:
        """Write classes.csv, per_target_class.csv, influence.npy, stderr.npy, summary.json as
        one set: the folder is replaced whole (a folder of other files is refused)."""
        folder = Path(folder)
        per_example = self.estimate_.per_example
        files = {
            "classes.csv": "one row per source group, most helpful first; influence, stderr and "
            "the interval in the unit below; q_value: Benjamini-Hochberg over the groups; "
            "simultaneous_low/high: intervals that hold for all groups at once, so for the "
            "ends as picked",
            "per_target_class.csv": "the same per (target class, source group); q-values over "
            "the whole table (every target class and source group at once)",
            "influence.npy": "K x n float32, rows in the order of run.json's groups",
            "stderr.npy": "K x n float32 standard errors across models",
            "estimate.npz": "the overall and per-target-class estimates as fitted (float64), "
            "read by later queries on the same chunks",
        }
        contents = {
            "classes.csv": csv_text(with_unit(self.classes_, self.unit_)).encode(),
            "per_target_class.csv": csv_text(
                with_unit(self.per_target_class_, self.unit_)
            ).encode(),
        }
        for name, array in (("influence", per_example.values), ("stderr", per_example.stderr)):
            buffer = io.BytesIO()
            np.save(buffer, array.astype(np.float32))
            contents[f"{name}.npy"] = buffer.getvalue()
        defined = self.classes_.dropna(subset=["influence"])
        helps, below = self.flagged()
        ends = ["group", "influence", "stderr", "ci_low", "ci_high", "q_value"]
        summary = {
            "run": run,
            "key": self.key_,
            "output": self.output,
            "unit": self.unit_,
            "meaning": RELATIVE_NOTE,
            "estimator": self.estimate_.estimator,
            "level": self.level,
            "dof": per_example.dof,
            "n_models": self.n_models_,
            "n_excluded_unhealthy": self.n_excluded_,
            "damaged_chunks_left_out": self.damaged_chunks_,
            "n_groups": len(self.groups_),
            "n_examples": int(self.estimate_.per_example.values.shape[1]),
            "mean_output": self.mean_output_,
            "most_helpful": defined.head(5)[ends].to_dict("records"),
            "least_helpful": defined.tail(5)[::-1][ends].to_dict("records"),
            "flagged": {
                "q_level": FLAG_LEVEL,
                "above_average": helps,
                "below_average": below,
                "chance": "with no real effects, 19 runs in 20 flag none; among flagged "
                f"groups at most {FLAG_LEVEL:.0%} are expected to be false",
            },
            "ci_excludes_zero": int(((defined.ci_low > 0) | (defined.ci_high < 0)).sum()),
            "ci_excludes_zero_by_chance": round((1 - self.level) * len(defined), 1),
            "agreement": None if self.agreement_ is None else self.agreement_.to_record(),
            "stability": _stability_summary(self.stability_, self.seeds_ == "run"),
            "seeds": self.seeds_,
            "lds": self.lds_,
            "explained_by_subsets": self.explained_,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": files,
        }
        # What the estimate was made from, and its overall and per-class numbers as the fit
        # had them: a query on the same chunks reads these instead of fitting again.
        summary["made_from"] = getattr(self, "made_from_", None)
        summary["diagnostics"] = (
            _diagnostics_record(self.stability_, self.agreement_, self.explained_, self.lds_)
            if self.diagnostics
            else None
        )
        estimate = self.estimate_
        contents["estimate.npz"] = arrays_bytes(
            {
                "overall": estimate.overall.values,
                "overall_stderr": estimate.overall.stderr,
                "per_class": estimate.per_target_class.values,
                "per_class_stderr": estimate.per_target_class.stderr,
                "n_in": estimate.overall.n_in,
                "n_out": estimate.overall.n_out,
                "dofs": np.array(
                    [per_example.dof, estimate.overall.dof, estimate.per_target_class.dof]
                ),
            }
        )
        # One set, swapped in whole: a crash or a full disk never leaves the tables of one
        # estimate beside the summary of another.
        contents["summary.json"] = json_bytes(summary)
        write_folder(folder, contents)
        return folder


def _diagnostics_record(
    stability: SplitHalf | None,
    agreement: Agreement | None,
    explained: float | None,
    lds: float | None,
) -> dict:
    """The diagnostics as fitted, for a later query on the same chunks to read back."""
    return {
        "stability": None if stability is None else dataclasses.asdict(stability),
        "agreement": None if agreement is None else agreement.to_record(),
        "explained": explained,
        "lds": lds,
    }


def _stability_summary(stability: SplitHalf | None, shared_seed: bool) -> dict | None:
    if stability is None:
        return None
    return {
        "spearman": stability.spearman,
        "top_overlap": stability.top_overlap,
        "bottom_overlap": stability.bottom_overlap,
        "chance_overlap": stability.chance_overlap,
        "k": stability.k,
        "models": stability.models,
        "splits": stability.splits,
        "within_one_seed": shared_seed,
        "estimator": stability.estimator,
    }
