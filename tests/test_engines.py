"""Real engines, real failures: a Ray cluster of two nodes on 127.0.0.1 and submitit job arrays,
each with a worker killed in the middle of a chunk, must give exactly a local run's results.
And a local worker pays its trainer's one-time costs before anything is timed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_same_results, chunk_arrays
from transfer_influence import RunStore
from transfer_influence.config import Config
from transfer_influence.engines import local
from transfer_influence.trainers import SimulatedTrainer

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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on 127.0.0.1: a head and a second node, each its own raylet
    with one CPU. Token authentication is off: the cluster only listens on loopback."""
    pytest.importorskip("ray", reason="the Ray engine test needs ray (the 'ray' extra)")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"]
    try:
        for command in (head + common, [ray, "start", f"--address={address}", *common]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
        yield address, env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # `ray stop --force` ends every Ray process on the machine
def test_ray_cluster_survives_a_killed_worker(reference, ray_cluster, tmp_path):
    config, reference_dir = reference
    address, env = ray_cluster
    run_dir = tmp_path / "ray"
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "run", str(config), "--run-dir",
         str(run_dir), "--engine", "ray", "--address", address, "--workers", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    killed = _kill_a_worker_mid_chunk(run_dir, "ray:", process)
    _finish(process)
    writers = [str(chunk["meta"]) for chunk in chunk_arrays(run_dir).values()]
    assert not any(killed in meta for meta in writers)  # its chunk was redone by another
    assert sum("ray:" in meta for meta in writers) == 6
    _assert_nothing_lost_or_doubled(reference_dir, run_dir)


def _slurm_cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return states.returncode == 0 and any(
        state.rstrip("*") in ("idle", "mix", "alloc") for state in states.stdout.split()
    )


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_submitit_job_array_survives_a_killed_job(reference, tmp_path, executor):
    """submitit's local executor, and a real Slurm cluster where one answers (`.ci/slurm-up`
    starts a one-node cluster on loopback in CI)."""
    pytest.importorskip("submitit", reason="the Slurm engine test needs submitit")
    if executor == "slurm" and not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo here (.ci/slurm-up starts one)")
    config, reference_dir = reference
    run_dir = tmp_path / "slurm"
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "run", str(config), "--run-dir",
         str(run_dir), "--engine", "slurm", "--slurm-executor", executor, "--workers", "2",
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killed = _kill_a_worker_mid_chunk(run_dir, "slurm:", process)
    _finish(process)
    writers = [str(chunk["meta"]) for chunk in chunk_arrays(run_dir).values()]
    assert not any(killed in meta for meta in writers)  # its chunk was redone by another
    _assert_nothing_lost_or_doubled(reference_dir, run_dir)
    assert any((run_dir / "slurm").rglob("*_log.out"))  # logs kept in the run directory
    if executor == "slurm":  # the jobs went through sbatch, as array tasks
        scripts = list((run_dir / "slurm").rglob("*_submission.sh"))
        assert scripts and all("#SBATCH --array" in script.read_text() for script in scripts)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_a_local_ray_cluster_listens_on_loopback_only(reference, tmp_path):
    psutil = pytest.importorskip("psutil", reason="needs psutil (the dev extra)")
    pytest.importorskip("ray", reason="the Ray engine test needs ray (the 'ray' extra)")
    config, reference_dir = reference
    run_dir = tmp_path / "local-ray"
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "run", str(config), "--run-dir",
         str(run_dir), "--engine", "ray", "--workers", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _kill_a_worker_mid_chunk(run_dir, "ray:", process)  # by then the whole cluster is up
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid and _descends_from(psutil, c.pid, process.pid)
    ]
    _finish(process)
    assert listening and all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip in listening)
    _assert_nothing_lost_or_doubled(reference_dir, run_dir)


def _descends_from(psutil, pid: int, ancestor: int) -> bool:
    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


PRUNE = ["--remove", "bottom,top,random", "--k", "2,4", "--seeds", "2", "--quiet"]


def _prune_results(run_dir: Path) -> str:
    import pandas as pd

    results = pd.read_csv(run_dir / "prune" / "results.csv").drop(columns="seconds")
    return results.to_csv(index=False)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_prune_conditions_run_on_a_job_array_that_survives_a_killed_job(
    reference, tmp_path, executor
):
    """Pruning conditions are a run: a Slurm job array trains them like the sweep, and a job
    killed mid-chunk costs nothing but its chunk."""
    pytest.importorskip("submitit", reason="the Slurm engine test needs submitit")
    if executor == "slurm" and not _slurm_cluster_answers():
        pytest.skip("no Slurm cluster answers sinfo here (.ci/slurm-up starts one)")
    _, reference_dir = reference
    local, arrayed = tmp_path / "local", tmp_path / "array"
    for copy in (local, arrayed):
        shutil.copytree(reference_dir, copy)
    done = _cli("prune", local, *PRUNE)
    assert done.returncode == 0, done.stderr
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer_influence", "prune", str(arrayed), *PRUNE,
         "--engine", "slurm", "--slurm-executor", executor, "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    conditions = arrayed / "prune" / "run"
    killed = _kill_a_worker_mid_chunk(conditions, "slurm:", process)
    _finish(process)
    writers = [str(chunk["meta"]) for chunk in chunk_arrays(conditions).values()]
    assert len(writers) == 2 and not any(killed in meta for meta in writers)
    assert _prune_results(arrayed) == _prune_results(local)


class _WarmingTrainer(SimulatedTrainer):
    def __init__(self, log: list[str], **params):
        super().__init__(**params)
        self.log = log

    def warm_up(self):
        self.log.append("warm up")

    def train(self, jobs):
        self.log.append("train")
        return super().train(jobs)


def test_a_local_worker_warms_up_once_before_the_bar_and_the_first_chunk(tmp_path, monkeypatch):
    """The bar's estimate of the time left starts from the first chunk: the trainer's one-time
    costs come before both, and not again on a run with nothing left to train."""
    log: list[str] = []
    real_bar = local.tqdm
    monkeypatch.setattr(local, "tqdm", lambda *a, **k: log.append("bar") or real_bar(*a, **k))
    params = {"groups": 6, "examples": 10, "classes": 2}
    config = Config.from_dict(
        {"run": {"models": 6, "chunk_size": 2}, "trainer": {"type": "simulated", "params": params}}
    )
    trainer = _WarmingTrainer(log, **params)
    store = RunStore.open_or_create(tmp_path, config, trainer.describe())
    local.run_local(store, workers=1, trainer=trainer, progress=False)
    assert log == ["warm up", "bar", "train", "train", "train"]
    log.clear()
    local.run_local(store, workers=1, trainer=_WarmingTrainer(log, **params), progress=False)
    assert log == []
