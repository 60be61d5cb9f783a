"""Keep the reference case's GPU runs in the repository, compactly, and grow them run by run.

    python benchmarks/reference_archive.py RUN_DIR [--archive FILE.npz]

Adds the healthy models of RUN_DIR (a run of configs/cifar100-to-cifar10-validation.toml) to
the archive (default benchmarks/data/reference-validation.npz): an .npz that
`transfer-influence record` reads (masks, outputs, labels, example ids, class names) with
p(correct class) as float16 and correctness as bool, about 9 kB a model, plus
`archived_from` (the run seed of each model). The JSON beside
it names, for every run added, its seed, models, commit, device, torch and training dates,
the config they share, and how far float16 rounding moved the run's class influence.

Refused, with a one-line message: a run whose config differs from the archive's in anything
but run.seed and run.models (a changed recipe is never mixed in), a run seed that is archived
already (nothing doubled), other data (dataset fingerprints, labels or example ids). So each
new run of the reference case takes a seed not yet used: `TI_SEED=N benchmarks/gpu_run.sh`.
Both files are replaced together, atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from transfer_influence import RunStore
from transfer_influence.config import defining_diff
from transfer_influence.estimation import estimate_influence
from transfer_influence.files import write_files
from transfer_influence.store.importing import export_arrays

ARCHIVE = Path(__file__).resolve().parent / "data" / "reference-validation.npz"
PER_MODEL = ("masks", "p_correct", "correct", "archived_from")
SHARED = ("labels", "example_ids", "source_classes", "target_classes")
MAY_DIFFER = {"run.seed", "run.models"}


def compact(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The archive's dtypes: float16 probabilities, bool correctness."""
    return {
        **arrays,
        "p_correct": arrays["p_correct"].astype(np.float16),
        "correct": arrays["correct"].astype(bool),
    }


def rounding_points(masks: np.ndarray, p_correct: np.ndarray) -> float:
    """The largest change float16 makes to a class's influence on mean p(correct), in points."""
    exact, rounded = (
        estimate_influence(masks, outputs.mean(axis=1, dtype=np.float64)[:, None]).overall.values
        for outputs in (p_correct, p_correct.astype(np.float16))
    )
    return float(100 * np.max(np.abs(rounded - exact)))


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _busy_seconds(metas: list[dict]) -> float:
    """Wall seconds in which at least one worker was training (workers may overlap)."""
    busy, end = 0.0, -np.inf
    for start, finish in sorted((m["started"], m["finished"]) for m in metas):
        busy += max(0.0, finish - max(start, end))
        end = max(end, finish)
    return busy


def run_record(store: RunStore, models: int, rounding: float) -> dict:
    metas = [store.chunk_meta(c) for c in store.chunks if store.is_done(c)]
    metas = [m for m in metas if m and "started" in m]
    made_on = {json.dumps({k: m["provenance"].get(k) for k in ("git_sha", "device_name", "torch")})
               for m in metas if "provenance" in m}  # fmt: skip
    return {
        "seed": store.config.run.seed,
        "models": models,
        "made_on": [json.loads(text) for text in sorted(made_on)],
        "gpu_seconds_per_model": _busy_seconds(metas) / models if metas else None,
        "started": _utc(min(m["started"] for m in metas)) if metas else None,
        "finished": _utc(max(m["finished"] for m in metas)) if metas else None,
        "float16_rounding_max_points": rounding,
    }


def add_run(run_dir: Path, archive: Path) -> dict:
    store = RunStore(run_dir)
    config = store.config.to_dict()
    fingerprints = store.meta["task"]["fingerprints"]
    new = export_arrays(store)
    if "seeds" in new:
        raise SystemExit(f"{run_dir}: models share training seeds; the archive holds own-seed runs")
    seed = store.config.run.seed
    new["archived_from"] = np.full(len(new["masks"]), seed, dtype=np.int64)
    rounding = rounding_points(new["masks"], new["p_correct"])
    new = compact(new)
    about = archive.with_suffix(".json")
    if archive.exists():
        info = json.loads(about.read_text())
        with np.load(archive, allow_pickle=False) as stored:
            old = {name: stored[name] for name in stored.files}
        changed = [
            d for d in defining_diff(info["config"], config) if d.split(":")[0] not in MAY_DIFFER
        ]
        if changed:
            raise SystemExit(f"{run_dir}: its config differs from the archive's ({changed[0]})")
        if info["fingerprints"] != fingerprints:
            raise SystemExit(f"{run_dir}: its datasets differ from the archive's")
        if seed in {r["seed"] for r in info["runs"]}:
            raise SystemExit(f"{run_dir}: run seed {seed} is archived already; nothing added")
        for name in SHARED:
            if not np.array_equal(old[name], new[name]):
                raise SystemExit(f"{run_dir}: its {name} differ from the archive's")
        merged = {name: np.concatenate([old[name], new[name]]) for name in PER_MODEL}
        merged.update({name: old[name] for name in SHARED})
    else:
        info = {"config": config, "fingerprints": fingerprints, "runs": []}
        merged = {name: new[name] for name in (*PER_MODEL, *SHARED)}
    info["runs"].append(run_record(store, len(new["masks"]), rounding))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **merged)  # a plain .npz: record reads it, no pickle
    write_files(
        archive.parent,
        {archive.name: buffer.getvalue(), about.name: (json.dumps(info, indent=1) + "\n").encode()},
    )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    args = parser.parse_args()
    args.archive.parent.mkdir(parents=True, exist_ok=True)
    info = add_run(args.run_dir, args.archive)
    total = sum(r["models"] for r in info["runs"])
    print(f"{args.archive}: {total} models from {len(info['runs'])} run(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
