"""Real engines, real failures: a Ray cluster of two nodes on 127.0.0.1 and submitit job arrays,
each with a worker killed in the middle of a chunk, must give exactly a local run's results."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_same_results, chunk_arrays

CONFIG = """
[run]
models = 24
chunk_size = 4
[trainer]
type = "simulated"
[trainer.params]
groups = 12
examples = 100
classes = 4
seconds_per_model = 0.4
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    config = root / "sim.toml"
    config.write_text(CONFIG)
    done = _cli("run", config, "--run-dir", root / "local", "--quiet")
    assert done.returncode == 0, done.stderr
    return config, root / "local"


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "transfer_influence", *map(str, args)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
        **kwargs,
    )  # fmt: skip


def _kill_a_worker_mid_chunk(run_dir: Path, prefix: str, process: subprocess.Popen) -> str:
    """Wait until a worker of the engine holds a chunk, SIGKILL it; returns its id."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        for claim in (run_dir / "claims").glob("0*"):
            try:
                owner = json.loads(claim.read_text())
            except (OSError, ValueError):
                continue
            if owner["worker"].startswith(prefix):
                time.sleep(0.5)  # well inside the chunk (4 models x 0.4 s)
                os.kill(owner["pid"], signal.SIGKILL)
                return owner["worker"]
        time.sleep(0.05)
    raise AssertionError(f"no {prefix} worker was seen holding a chunk")


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err + out


def _assert_nothing_lost_or_doubled(reference_dir: Path, run_dir: Path) -> None:
    assert_same_results(reference_dir, run_dir)  # same chunk files, masks and outputs
    chunks = chunk_arrays(run_dir)
    indices = sorted(int(i) for arrays in chunks.values() for i in arrays["index"])
    assert indices == list(range(24))
    assert not list((run_dir / "chunks").glob(".*.tmp"))


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="the Ray engine test needs ray (the 'ray' extra)")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)  # a second node: its own raylet process
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


@pytest.mark.slow
def test_ray_cluster_survives_a_killed_worker(reference, ray_cluster, tmp_path):
    config, reference_dir = reference
    run_dir = tmp_path / "ray"
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "run", str(config), "--run-dir",
         str(run_dir), "--engine", "ray", "--address", ray_cluster, "--workers", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed = _kill_a_worker_mid_chunk(run_dir, "ray:", process)
    _finish(process)
    workers = {chunk["meta"] for chunk in chunk_arrays(run_dir).values()}
    assert not any(killed in str(meta) for meta in workers)  # its chunk was redone by another
    _assert_nothing_lost_or_doubled(reference_dir, run_dir)


@pytest.mark.slow
def test_submitit_job_array_survives_a_killed_job(reference, tmp_path):
    pytest.importorskip("submitit", reason="the Slurm engine test needs submitit")
    config, reference_dir = reference
    run_dir = tmp_path / "slurm"
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "run", str(config), "--run-dir",
         str(run_dir), "--engine", "slurm", "--slurm-executor", "local", "--workers", "2",
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _kill_a_worker_mid_chunk(run_dir, "slurm:", process)
    _finish(process)
    _assert_nothing_lost_or_doubled(reference_dir, run_dir)
    assert any((run_dir / "slurm").rglob("*_log.out"))  # logs kept in the run directory
