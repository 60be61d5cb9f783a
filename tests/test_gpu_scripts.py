"""The GPU benchmark and the unattended GPU run script, checked on CPU at toy scale."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]

TOY_CONFIG = """
[run]
models = 8
chunk_size = 4
keep_logits = false
[trainer]
type = "builtin"
[trainer.params]
source = { kind = "folder", path = "${TI_DATASETS}/cifar100" }
targets = [{ name = "cifar10", kind = "folder", path = "${TI_DATASETS}/cifar10" }]
[trainer.params.recipe]
widths = [8, 16, 16]
epochs = 1
batch_size = 16
stack = 4
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data = root / "datasets"
    make_image_folder(
        data / "cifar100", [f"c{k:02d}" for k in range(10)], 8, splits=("train", "test"), size=32
    )
    make_image_folder(data / "cifar10", ["a", "b", "c", "d"], 8, splits=("train", "test"), size=32)
    (root / "toy.toml").write_text(TOY_CONFIG)
    env = dict(
        os.environ,
        TI_DATASETS=str(data),
        TI_RESULTS=str(root / "results"),
        TRANSFER_INFLUENCE_CACHE=str(root / "cache"),
        TRANSFER_INFLUENCE_DEVICE="cpu",
        TI_CONFIG=str(root / "toy.toml"),
        TI_RUN_DIR=str(root / "runs" / "reference"),
        PYTHONPATH=str(ROOT / "src"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )  # the scripts call python3: this test's, with or without an activated environment
    return root, env


def _script(env, *args):
    """Run a benchmark script from the repository root; fail with its output if it fails."""
    done = subprocess.run([*args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


@pytest.mark.slow
def test_gpu_speed_benchmark_writes_its_result(toy):
    root, env = toy
    _script(
        env,
        sys.executable,
        "benchmarks/gpu_speed.py",
        "--tiny",
        "--models",
        "2",
        "--variants",
        "plain,stack16-fast",
        "--out",
        str(root / "speed.json"),
    )
    result = json.loads((root / "speed.json").read_text())
    assert set(result["variants"]) == {"plain", "stack16-fast"}
    for variant in result["variants"].values():
        assert variant["seconds_per_model"] > 0 and 0 <= variant["mean_accuracy_50_classes"] <= 1
    assert {"device_name", "torch", "git_sha", "date"} <= set(result)
    assert 0 <= result["mean_accuracy_untrained_control_fast"] <= 1
    assert 0 <= result["mean_accuracy_100_classes_fast"] <= 1


@pytest.mark.slow
def test_gpu_run_script_runs_and_continues_from_its_tarball(toy, tmp_path):
    root, env = toy
    first, second = tmp_path / "first", tmp_path / "second"
    out = _script(
        env, "bash", "benchmarks/gpu_run.sh", str(first), "--budget-s", "400", "--skip-benchmark"
    )
    assert sorted(first.glob("run.tar.gz.part-*")) and (first / "gpu_run.log").exists()
    assert "models   8 of 8 done" in out
    # A fresh machine: no run directory, only the tarball of the earlier lease.
    env = dict(env, TI_RUN_DIR=str(tmp_path / "fresh" / "reference"), TI_MODELS="12")
    out = _script(
        env,
        "bash",
        "benchmarks/gpu_run.sh",
        str(second),
        "--budget-s",
        "400",
        "--skip-benchmark",
        "--resume",
        str(first / "run.tar.gz.part-"),
    )
    assert "resumed 2 chunks" in out
    assert "models   12 of 12 done" in out


@pytest.mark.slow
def test_gpu_run_script_grows_and_prunes_a_validation_run_across_leases(toy, tmp_path):
    root, env = toy
    config = root / "toy-validation.toml"
    config.write_text(
        TOY_CONFIG.replace(
            'path = "${TI_DATASETS}/cifar10" }',
            'path = "${TI_DATASETS}/cifar10", validation = 0.25, evaluate = "validation" }',
        )
    )
    env = dict(env, TI_CONFIG=str(config), TI_RUN_DIR=str(tmp_path / "a" / "reference"))
    first, second = tmp_path / "first", tmp_path / "second"
    out = _script(
        env | {"TI_WORKERS": "2"}, "bash", "benchmarks/gpu_run.sh", str(first), "--skip-benchmark"
    )
    assert "models   8 of 8 done" in out and "workers failed" not in out
    # The next lease grows the run from its tarball, then prunes on the grown run.
    env = dict(env, TI_RUN_DIR=str(tmp_path / "b" / "reference"), TI_PRUNE_SEEDS="2")
    out = _script(
        env | {"TI_MODELS": "12"}, "bash", "benchmarks/gpu_run.sh", str(second),
        "--skip-benchmark", "--resume", str(first / "run.tar.gz.part-"),
        "--models-s", "200", "--prune", "2,4",
    )  # fmt: skip
    assert "== influence models for 200s" in out and "models   12 of 12 done" in out
    assert "== prune k=2,4" in out and "k = " in out and "chosen on the validation split" in out
    results = (tmp_path / "b" / "reference" / "prune" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 2 * (1 + 3 * 2)
    plan = json.loads((tmp_path / "b" / "reference" / "prune" / "plan.json").read_text())
    assert plan["n_models"] == 12  # the ranking was fixed on the grown run
