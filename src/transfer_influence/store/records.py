"""Turning trainer results into chunk arrays, and chunk arrays back into model outputs.

Per model a chunk holds its index, seed, mask, health status, source accuracy and time; per
(target, mode) key the configured outputs as float32 (never float16: effects of 0.1 points
would drown in its rounding), the target accuracy, and the full logits when the target has at
most ``MAX_LOGIT_CLASSES`` classes so that any output can be computed after the fact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ..outputs import compute_outputs, get_output
from ..subsets import Job
from ..trainers.protocol import STATUSES, JobResult, TargetInfo

__all__ = [
    "MAX_LOGIT_CLASSES",
    "RecordError",
    "align_to_target",
    "model_digests",
    "outputs_from_arrays",
    "pack_results",
]

MAX_LOGIT_CLASSES = 100


class RecordError(ValueError):
    """Results that do not fit the run: wrong models, shapes, keys or example ids."""


def pack_results(
    jobs: Sequence[Job],
    results: Sequence[JobResult],
    targets: dict[str, TargetInfo],
    modes: Sequence[str],
    outputs: Sequence[str],
    keep_logits: bool = True,
) -> dict[str, np.ndarray]:
    """Validate one chunk's results against its jobs and lay them out as arrays."""
    by_index = {r.index: r for r in results}
    if sorted(by_index) != [job.index for job in jobs] or len(results) != len(jobs):
        raise RecordError(
            f"trainer returned results for models {sorted(by_index)}, "
            f"expected {[job.index for job in jobs]}"
        )
    ordered = [by_index[job.index] for job in jobs]
    status = []
    for result in ordered:
        if result.status not in STATUSES:
            raise RecordError(f"model {result.index}: unknown status {result.status!r}")
        status.append(result.status)
    arrays: dict[str, np.ndarray] = {
        "index": np.array([job.index for job in jobs], dtype=np.int64),
        "seed": np.array([job.seed for job in jobs], dtype=np.int64),
        "mask": np.stack([job.mask for job in jobs]),
        "source_accuracy": np.array([r.source_accuracy for r in ordered], dtype=np.float64),
        "seconds": np.array([r.seconds for r in ordered], dtype=np.float64),
    }
    for target in targets.values():
        for mode in modes:
            key = f"{target.name}/{mode}"
            per_model = [_model_outputs(r, key, target, outputs) for r in ordered]
            for name in outputs:
                arrays[f"out/{key}/{name}"] = np.stack(
                    [values[name] for values, _ in per_model]
                ).astype(np.float32)
            logits = [lg for _, lg in per_model]
            if (
                all(lg is not None for lg in logits)
                and len(target.class_names) <= MAX_LOGIT_CLASSES
                and keep_logits
            ):
                arrays[f"logits/{key}"] = np.stack(logits).astype(np.float32)
            arrays[f"accuracy/{key}"] = np.array(
                [_accuracy(values, lg, target) for values, lg in per_model], dtype=np.float64
            )
            for i, (values, _) in enumerate(per_model):
                if not all(np.all(np.isfinite(values[name])) for name in outputs):
                    status[i] = "nan"
    arrays["status"] = np.array(status, dtype="<U8")
    arrays["model_digest"] = model_digests(arrays)
    return arrays


def model_digests(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Per model of a chunk, a digest of what the model is: its subset, its seed and its
    recorded outputs (float32, in the run's example order). However its results were packed
    into a file (other arrays beside them, logits as float64), the same model has the same
    digest, so a run can refuse a model it holds already."""
    outputs = sorted(name for name in arrays if name.startswith("out/"))
    digests = []
    for i in range(arrays["mask"].shape[0]):
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(arrays["mask"][i], dtype=np.bool_).tobytes())
        digest.update(np.int64(arrays["seed"][i]).tobytes())
        for name in outputs:
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name][i], dtype=np.float32).tobytes())
        digests.append(digest.hexdigest()[:32])
    return np.array(digests, dtype="<U32")


def _model_outputs(
    result: JobResult, key: str, target: TargetInfo, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    n = target.labels.size
    logits = result.logits.get(key)
    values: dict[str, np.ndarray] = {}
    if logits is not None:
        # As stored: outputs computed now equal those computed later from the kept logits.
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (n, len(target.class_names)):
            raise RecordError(
                f"model {result.index}, {key}: logits have shape {logits.shape}, "
                f"expected ({n}, {len(target.class_names)})"
            )
        with np.errstate(invalid="ignore", over="ignore"):
            values = compute_outputs(logits, target.labels, list(names))
    for name, given in result.outputs.get(key, {}).items():
        given = np.asarray(given, dtype=np.float32)
        if given.shape != (n,):
            raise RecordError(f"model {result.index}, {key}: output {name!r} is not length {n}")
        values[name] = given
    missing = [name for name in names if name not in values]
    if missing:
        raise RecordError(f"model {result.index}, {key}: no logits and no output {missing}")
    return values, logits


def _accuracy(
    values: dict[str, np.ndarray], logits: np.ndarray | None, target: TargetInfo
) -> float:
    if "correct" in values:
        return float(np.mean(values["correct"]))
    if logits is not None:
        return float(np.mean(logits.argmax(axis=1) == target.labels))
    return float("nan")


def outputs_from_arrays(
    arrays: dict[str, np.ndarray], key: str, output: str, labels: np.ndarray
) -> np.ndarray:
    """One output of every model in a chunk: stored, or computed from the stored logits."""
    stored = arrays.get(f"out/{key}/{output}")
    if stored is not None:
        return stored
    logits = arrays.get(f"logits/{key}")
    if logits is None:
        raise RecordError(f"output {output!r} was not recorded for {key} and no logits were kept")
    function = get_output(output)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.stack([np.asarray(function(lg, labels), dtype=np.float32) for lg in logits])


def align_to_target(
    values: np.ndarray, example_ids: np.ndarray, target: TargetInfo, axis: int = 1
) -> np.ndarray:
    """Reorder ``values`` along ``axis`` (the examples) from ``example_ids`` order to the run's.

    The ids must be exactly the run's target example ids (in any order): results for other
    examples are refused rather than silently mismatched.
    """
    ids = np.asarray(example_ids).astype(str)
    if ids.shape != target.example_ids.shape:
        raise RecordError(
            f"target {target.name!r}: {ids.size} example ids given, the run has "
            f"{target.example_ids.size}"
        )
    if np.array_equal(ids, target.example_ids):
        return values
    position = {example: i for i, example in enumerate(ids.tolist())}
    if len(position) != ids.size:
        raise RecordError(f"target {target.name!r}: example ids are not unique")
    unknown = [e for e in target.example_ids.tolist() if e not in position]
    if unknown:
        raise RecordError(
            f"target {target.name!r}: {len(unknown)} of the run's example ids are missing "
            f"from the results (first: {unknown[0]!r})"
        )
    order = np.array([position[e] for e in target.example_ids.tolist()])
    return np.take(np.asarray(values), order, axis=axis)
