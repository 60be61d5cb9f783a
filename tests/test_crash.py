"""SIGKILL at random moments and inside every step of a write, then resume: nothing lost,
nothing doubled, and the results equal an uninterrupted run's bit for bit."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import CONFIG, assert_same_results, run_subprocess
from transfer_influence import RunStore


def _start(config, run_dir, workers=1, env=None):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transfer_influence",
            "run",
            str(config),
            "--run-dir",
            str(run_dir),
            "--workers",
            str(workers),
            "--quiet",
        ],
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_until_training(run_dir, process, timeout=30.0):
    """Until ``process`` holds a chunk claim (or ends)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        for claim in run_dir.glob("claims/0*"):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(claim.read_text())["pid"] == process.pid:
                    return
        time.sleep(0.02)


def _kill_group(process):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _finish(config, run_dir, workers=1):
    done = run_subprocess(
        "run", config, "--run-dir", run_dir, "--workers", workers, "--quiet", timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    config = folder / "sim.toml"
    config.write_text(CONFIG.format(seed=0, models=120, chunk_size=4, groups=12, seconds=0.05))
    _finish(config, folder / "reference")
    return config, folder / "reference"


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_writes(reference, tmp_path):
    config, reference_dir = reference
    run_dir = tmp_path / "crashed"
    rng = random.Random(1234)
    kills = 0
    # Inside the write: after half the bytes, before fsync, before rename (n-th chunk each).
    for point in ("write", "fsync", "rename"):
        for nth in (1, 2):
            process = _start(config, run_dir, env={"TRANSFER_INFLUENCE_CRASH_AT": f"{point}:{nth}"})
            assert process.wait(timeout=60) == -signal.SIGKILL
            kills += 1
    # From outside, at random moments while chunks are being trained and written.
    while kills < 26:
        process = _start(config, run_dir)
        _wait_until_training(run_dir, process)  # a slow start must not eat the kill moment
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is None:
            _kill_group(process)
            kills += 1
        else:
            break  # finished before the kill; nothing left to interrupt
    store = RunStore(run_dir)
    assert store.missing_chunks(), "the kills should have left work to resume"
    _finish(config, run_dir)
    assert kills >= 20
    assert not RunStore(run_dir).missing_chunks()
    assert_same_results(reference_dir, run_dir)


@pytest.mark.slow  # two real worker processes killed and restarted: about 20 s
def test_two_workers_killed_and_resumed_equal_one_worker(reference, tmp_path):
    config, reference_dir = reference
    run_dir = tmp_path / "two"
    rng = random.Random(99)
    for _ in range(3):
        process = _start(config, run_dir, workers=2)
        time.sleep(rng.uniform(1.5, 2.5))
        _kill_group(process)
    _finish(config, run_dir, workers=2)
    assert_same_results(reference_dir, run_dir)


@pytest.mark.slow  # real worker processes racing for chunks: about 12 s
def test_racing_workers_neither_corrupt_nor_double(reference, tmp_path):
    config, reference_dir = reference
    run_dir = tmp_path / "race"
    _finish(config, run_dir)  # create, then empty it and let four workers race for it
    for path in (run_dir / "chunks").glob("*.npz"):
        path.unlink()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transfer_influence",
                "worker",
                str(run_dir),
                "--worker-id",
                f"w{i}",
            ],
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    trained = [int(w.communicate(timeout=120)[0].split()[2]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert sum(trained) == 30  # every chunk trained exactly once
    assert_same_results(reference_dir, run_dir)
