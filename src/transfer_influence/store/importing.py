"""Results files: importing models trained outside the tool (``transfer-influence record``),
and exporting a run's models in the same format (``transfer-influence export``), to share them
or to record them into another run.

The file is an ``.npz`` (loaded without pickle) with:

- ``masks``: m x K bool, group k in model i's subset;
- outputs named like the run's outputs (``p_correct``, ``correct``, ``margin``, ...): m x n,
  and/or ``logits``: m x n x C;
- ``labels`` (or ``y_target``): n target labels, needed to create a run and checked after;
- optional ``example_ids``: n stable ids of the target examples (default: "000000", ...),
  matched against the run's ids in any order;
- optional ``source_classes`` (K names) and ``target_classes`` (C names);
- optional ``seeds``: m integers, each model's training seed (or any id of it). Models that
  share one are recorded as one chunk of a run with ``seeds = "chunk"``: that seed's offset is
  removed from the estimates and split-half stability splits whole seeds, as for runs the tool
  trains (docs/method.md). A run is recorded with seeds or without, not both.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from ..outputs import DEFAULT_OUTPUTS, get_output
from ..trainers.protocol import JobResult, TargetInfo, TaskDescription, output_key, parse_key
from .records import RecordError, align_to_target, outputs_from_arrays
from .run import Chunk, RunStore

__all__ = ["export_arrays", "export_file", "record_arrays", "record_file"]


def record_file(
    run_dir: str | Path,
    path: str | Path,
    target: str = "target",
    mode: str = "fixed_feature",
    alpha: float = 0.5,
) -> list[Chunk]:
    """Import one ``.npz`` of externally trained models into ``run_dir`` (created if absent);
    returns the chunks written (one, or one per training seed)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"results file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as error:
        # MemoryError: a header can claim an array far larger than the file.
        raise RecordError(
            f"{path} is not a readable .npz without pickled objects: {error}"
        ) from None
    return record_arrays(run_dir, arrays, target, mode, alpha, file_name=path.name)


def export_arrays(store: RunStore, key: str | None = None) -> dict[str, np.ndarray]:
    """The healthy models of ``store`` on one (target, mode) ``key`` as the arrays
    :func:`record_arrays` reads: masks, every stored output, the target's labels, example ids
    and class names, the source groups, and the training seeds where models share them."""
    key = key or store.resolve_key()
    target = store.target(parse_key(key)[0])
    outputs = list(store.config.run.outputs)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ["masks", "seeds", *outputs]}
    for _, arrays in store.iter_chunks():
        healthy = arrays["status"] == "ok"
        parts["masks"].append(arrays["mask"][healthy])
        parts["seeds"].append(arrays["seed"][healthy])
        for name in outputs:
            values = outputs_from_arrays(arrays, key, name, target.labels)[healthy]
            parts[name].append(values.astype(np.float32))
    if not parts["masks"]:
        raise RecordError(f"{store.root} has no finished models to export")
    exported = {name: np.concatenate(values) for name, values in parts.items()}
    if store.config.run.seeds == "model":  # every model its own seed: nothing shared
        del exported["seeds"]
    exported.update(
        labels=target.labels,
        example_ids=np.asarray(target.example_ids).astype(str),
        source_classes=np.array(store.groups, dtype=str),
        target_classes=np.array(target.class_names, dtype=str),
    )
    return exported


def export_file(store: RunStore, path: str | Path, key: str | None = None) -> int:
    """Write :func:`export_arrays` to the ``.npz`` at ``path`` (atomically); the model count."""
    arrays = export_arrays(store, key)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # a plain .npz: any numpy reads it, no pickle
    atomic_write_bytes(Path(path), buffer.getvalue())
    return int(arrays["masks"].shape[0])


def record_arrays(
    run_dir: str | Path,
    arrays: dict[str, np.ndarray],
    target: str = "target",
    mode: str = "fixed_feature",
    alpha: float = 0.5,
    file_name: str | None = None,
) -> list[Chunk]:
    """Import models trained elsewhere, given as the arrays of :func:`record_file`'s ``.npz``;
    ``file_name`` (given by :func:`record_file`) is kept to say where they came from.

    Models are known by their content (subset, seed, outputs): those the run holds already,
    from whatever file, are left out, so a retry after a crash adds exactly what is missing.
    Everything is checked before a new run is created, and a failed import into a new run
    leaves nothing behind."""
    if "masks" not in arrays:
        raise RecordError("results have no 'masks' array (models x groups, bool)")
    masks = _masks(np.asarray(arrays["masks"]))
    if masks.shape[0] == 0:
        raise RecordError("the results hold no models (masks has 0 rows)")
    _check_outputs(arrays, masks.shape[0])
    seeds = _seeds(arrays, masks.shape[0])
    n = _example_count(arrays)
    ids = _optional_names(arrays, "example_ids", n)
    ids = ids if ids is not None else np.array([f"{j:06d}" for j in range(n)])
    groups = _optional_names(arrays, "source_classes", masks.shape[1])
    created = not (Path(run_dir) / "run.json").exists()
    store = (
        _create_run(run_dir, arrays, masks, ids, groups, target, mode, alpha, seeds)
        if created
        else RunStore(run_dir)
    )
    try:
        return _record_into(store, arrays, masks, ids, groups, seeds, file_name)
    except BaseException:
        if created and not store.chunks:
            shutil.rmtree(store.root, ignore_errors=True)
        raise


def _create_run(run_dir, arrays, masks, ids, groups, target, mode, alpha, seeds) -> RunStore:
    labels = arrays.get("labels", arrays.get("y_target"))
    if labels is None:
        raise RecordError("a new run needs the target 'labels' (or 'y_target') array")
    labels = np.asarray(labels)
    if labels.shape != ids.shape or not np.issubdtype(labels.dtype, np.integer):
        raise RecordError(f"labels must be {ids.size} integers, one per target example")
    classes = _optional_names(arrays, "target_classes")
    if classes is None:
        classes = np.array([f"class{c}" for c in range(int(labels.max(initial=0)) + 1)])
    if labels.size and (labels.min() < 0 or labels.max() >= classes.size):
        raise RecordError(f"labels must lie in [0, {classes.size}) (one per target class)")
    if groups is None:
        groups = np.array([f"group{k:03d}" for k in range(masks.shape[1])])
    outputs = [name for name in DEFAULT_OUTPUTS if name in arrays or "logits" in arrays]
    try:
        task = TaskDescription(
            tuple(groups.tolist()),
            (TargetInfo(target, ids, labels, tuple(classes.tolist())),),
            (mode,),
            {"imported": "external"},
        )
    except ValueError as error:
        raise RecordError(str(error)) from None
    return RunStore.create_external(
        run_dir, task, outputs or list(DEFAULT_OUTPUTS), alpha,
        "chunk" if seeds is not None else "model",
    )  # fmt: skip


def _record_into(store, arrays, masks, ids, groups, seeds, file_name) -> list[Chunk]:
    run_dir = store.root
    if len(store.keys) != 1:
        raise RecordError(f"{run_dir} has several (target, mode) keys; record with the Python API")
    info = store.target(store.target_names[0])
    labels = arrays.get("labels", arrays.get("y_target"))
    if labels is not None and not np.array_equal(
        align_to_target(np.asarray(labels), ids, info, axis=0), info.labels
    ):
        raise RecordError("the target labels differ from the run's")
    if masks.shape[1] != len(store.groups):
        raise RecordError(f"masks have {masks.shape[1]} groups, the run has {len(store.groups)}")
    if groups is not None and groups.tolist() != list(store.groups):
        raise RecordError("the source class names differ from the run's groups")
    seeded = store.config.run.seeds == "chunk"
    if (seeds is not None) != seeded:
        raise RecordError(
            f"{run_dir} was recorded {'with' if seeded else 'without'} "
            "'seeds'; record these results the same way (or into a new run)"
        )
    for name in store.config.run.outputs:
        get_output(name)
    key = output_key(info.name, store.modes[0])
    results = []
    for i in range(masks.shape[0]):
        result = JobResult(index=i)
        if "logits" in arrays:
            result.logits[key] = align_to_target(arrays["logits"][i], ids, info, axis=0)
        result.outputs[key] = {
            name: align_to_target(np.asarray(arrays[name][i], dtype=np.float32), ids, info, axis=0)
            for name in store.config.run.outputs
            if name in arrays
        }
        if "src_acc" in arrays or "source_accuracy" in arrays:
            result.source_accuracy = float(arrays.get("source_accuracy", arrays.get("src_acc"))[i])
        results.append(result)
    rows = (
        [(np.arange(masks.shape[0]), -1)]
        if seeds is None
        else [(np.flatnonzero(seeds == s), int(s)) for s in dict.fromkeys(seeds.tolist())]
    )
    parts = [(masks[r], [results[j] for j in r], seed) for r, seed in rows]
    chunks = store.record_parts(parts, {"file": file_name})
    if not chunks:
        raise RecordError(f"these models were recorded into {run_dir} before; nothing written")
    return chunks


def _optional_names(
    arrays: dict[str, np.ndarray], name: str, count: int | None = None
) -> np.ndarray | None:
    """An optional 1-D array of names (``count`` of them, if given), as strings."""
    if name not in arrays:
        return None
    values = np.asarray(arrays[name])
    if values.ndim != 1 or (count is not None and values.size != count):
        expected = f"{count} names" if count is not None else "a list of names"
        raise RecordError(f"{name!r} must be {expected} (1-D), got shape {values.shape}")
    if values.dtype.kind not in "USi":
        raise RecordError(f"{name!r} must be names (strings), got {values.dtype}")
    return values.astype(str)


def _seeds(arrays: dict[str, np.ndarray], models: int) -> np.ndarray | None:
    if "seeds" not in arrays:
        return None
    seeds = np.asarray(arrays["seeds"])
    if seeds.shape != (models,) or not np.issubdtype(seeds.dtype, np.integer):
        raise RecordError(f"'seeds' must be {models} integers, one per model")
    values, counts = np.unique(seeds, return_counts=True)
    if (values < 0).any():
        raise RecordError("'seeds' must be non-negative")
    if (counts < 2).any():
        raise RecordError(
            f"seed {values[counts < 2][0]} has one model: a seed's offset cannot be told "
            "from its subset's effect without at least two models"
        )
    return seeds


def _masks(masks: np.ndarray) -> np.ndarray:
    """Masks as bool: bool already, or numbers that are all 0 or 1 (never a silent cast of
    other values: -1/+1 would all read as included)."""
    if masks.ndim != 2:
        raise RecordError(f"masks must be 2-D (models x groups), got shape {masks.shape}")
    if masks.dtype == np.bool_:
        return masks
    if not (np.issubdtype(masks.dtype, np.integer) or np.issubdtype(masks.dtype, np.floating)):
        raise RecordError(f"masks must be bool (or 0/1 numbers), got {masks.dtype}")
    values = np.unique(masks)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:5])
        raise RecordError(f"masks must be bool (or 0/1 numbers), found the values {shown}")
    return masks.astype(bool)


def _check_outputs(arrays: dict[str, np.ndarray], models: int) -> None:
    """Logits (m x n x C) and outputs (m x n) must be real numbers, one row per model."""
    for name, ndim in (("logits", 3), *((output, 2) for output in DEFAULT_OUTPUTS)):
        if name not in arrays:
            continue
        array = np.asarray(arrays[name])
        real = np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        if not real and array.dtype != np.bool_:
            raise RecordError(f"{name} must be real numbers, got {array.dtype}")
        if array.ndim != ndim or array.shape[0] != models:
            raise RecordError(
                f"{name} must have shape ({models}, examples{', classes' * (ndim == 3)}), "
                f"got {array.shape}"
            )


def _example_count(arrays: dict[str, np.ndarray]) -> int:
    for name in ("logits", *DEFAULT_OUTPUTS):
        if name in arrays:
            return int(np.asarray(arrays[name]).shape[1])
    raise RecordError("results have neither 'logits' nor any of " + ", ".join(DEFAULT_OUTPUTS))
