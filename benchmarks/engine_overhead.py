"""Engines measured: Ray's scheduling overhead per chunk, and 2 Ray workers against 1 local one.

1. Overhead: simulated chunks of known length (``--chunk-seconds``) on one local worker and on
   one Ray worker (a local cluster, started before the clock starts); overhead per chunk =
   (wall time - time spent inside chunks) / chunks, and as a share of a one-minute chunk.
2. Speed-up: the demo's real CNN training (built-in trainer, CPU) on 1 local worker pinned to
   one thread, against 2 Ray workers each pinned to one thread, same chunks; the clock includes
   each Ray worker loading its trainer, not the cluster's start.

    python benchmarks/engine_overhead.py [--chunks 10] [--chunk-seconds 2] [--models 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
os.environ["OMP_NUM_THREADS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
import torch  # noqa: E402

from _common import save_result  # noqa: E402
from transfer_influence.config import Config  # noqa: E402
from transfer_influence.engines import LocalEngine, RayEngine  # noqa: E402
from transfer_influence.experiments.demo import demo_config  # noqa: E402
from transfer_influence.store import RunStore  # noqa: E402
from transfer_influence.trainers import load_trainer  # noqa: E402


def _store(folder: Path, config: Config) -> RunStore:
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    return RunStore.create(folder, config, trainer.describe())


def _inside_chunks(store: RunStore) -> float:
    metas = [store.chunk_meta(chunk) for chunk in store.chunks]
    return sum(meta["finished"] - meta["started"] for meta in metas if meta)


def overhead(scratch: Path, chunks: int, chunk_seconds: float) -> dict:
    models_per_chunk = 4
    params = {"groups": 20, "examples": 200, "seconds_per_model": chunk_seconds / 4}
    config = Config.from_dict(
        {
            "run": {"models": chunks * models_per_chunk, "chunk_size": models_per_chunk},
            "trainer": {"type": "simulated", "params": params},
        }
    )
    result = {}
    for engine in ("local", "ray"):
        store = _store(scratch / f"overhead-{engine}", config)
        start = time.perf_counter()
        if engine == "local":
            LocalEngine(workers=1).run(store, progress=False)
        else:
            RayEngine(workers=1).run(store, progress=False)
        wall = time.perf_counter() - start
        per_chunk = (wall - _inside_chunks(store)) / chunks
        result[engine] = {"wall_s": wall, "overhead_per_chunk_s": per_chunk}
        print(f"{engine}: {wall:.2f} s, {chunks} chunks, overhead {per_chunk * 1e3:.0f} ms/chunk")
    extra = result["ray"]["overhead_per_chunk_s"] - result["local"]["overhead_per_chunk_s"]
    result["ray_extra_overhead_per_chunk_s"] = extra
    result["share_of_one_minute_chunk"] = result["ray"]["overhead_per_chunk_s"] / 60.0
    return result


def speedup(scratch: Path, models: int) -> dict:
    data = demo_config(models, stack=4).to_dict()
    config = Config.from_dict({**data, "run": {**data["run"], "chunk_size": 4}})
    torch.set_num_threads(1)
    store = _store(scratch / "speed-local", config)
    start = time.perf_counter()
    LocalEngine(workers=1).run(store, progress=False)
    local = time.perf_counter() - start
    store = _store(scratch / "speed-ray", config)
    start = time.perf_counter()
    RayEngine(workers=2, cpus_per_worker=1).run(store, progress=False)
    distributed = time.perf_counter() - start
    print(f"{models} demo models: 1 local worker {local:.1f} s, 2 Ray workers {distributed:.1f} s")
    return {
        "models": models,
        "local_1_worker_s": local,
        "ray_2_workers_s": distributed,
        "speedup": local / distributed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--models", type=int, default=16)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        with tempfile.TemporaryDirectory() as folder:
            result = {
                "overhead": overhead(Path(folder), args.chunks, args.chunk_seconds),
                "speedup": speedup(Path(folder), args.models),
                "cpus": os.cpu_count(),
            }
    finally:
        ray.shutdown()
    print(json.dumps(result, indent=2))
    print(f"wrote {save_result('engine_overhead', result)}")


if __name__ == "__main__":
    main()
