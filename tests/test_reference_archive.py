"""The reference case's archive: runs added whole, never doubled, never mixed with another
recipe, read back by `record`, and measured by the reference-case benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transfer_influence import RunStore

ROOT = Path(__file__).resolve().parents[1]


def _script(name, *args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.fixture
def runs(tmp_path, make_config, cli):
    made = {}
    for seed in (0, 1, 2):
        config = make_config(f"sim{seed}.toml", seed=seed, models=16, groups=12)
        assert cli("run", config, "--run-dir", tmp_path / f"run{seed}", "--quiet")[0] == 0
        made[seed] = tmp_path / f"run{seed}"
    changed = make_config("changed.toml", seed=3, models=16, groups=12)
    changed.write_text(changed.read_text() + "effect_scale = 0.5\n")
    assert cli("run", changed, "--run-dir", tmp_path / "changed", "--quiet")[0] == 0
    made["changed"] = tmp_path / "changed"
    return made


def test_runs_are_added_whole_and_never_twice(tmp_path, runs, cli):
    archive = tmp_path / "data" / "archive.npz"
    assert _script("reference_archive.py", runs[0], "--archive", archive).returncode == 0
    assert _script("reference_archive.py", runs[1], "--archive", archive).returncode == 0
    before = archive.read_bytes(), archive.with_suffix(".json").read_bytes()
    again = _script("reference_archive.py", runs[0], "--archive", archive)
    assert again.returncode != 0 and "run seed 0 is archived already" in again.stderr
    other = _script("reference_archive.py", runs["changed"], "--archive", archive)
    assert other.returncode != 0 and "config differs" in other.stderr
    assert "effect_scale" in other.stderr
    assert (archive.read_bytes(), archive.with_suffix(".json").read_bytes()) == before

    info = json.loads(archive.with_suffix(".json").read_text())
    assert [(r["seed"], r["models"]) for r in info["runs"]] == [(0, 16), (1, 16)]
    with np.load(archive, allow_pickle=False) as stored:
        assert stored["p_correct"].dtype == np.float16 and stored["correct"].dtype == bool
        assert stored["archived_from"].tolist() == [0] * 16 + [1] * 16
        archived = stored["p_correct"].astype(np.float32)
    # `record` reads it: the archived outputs are the runs' own, to float16's precision.
    assert cli("record", tmp_path / "back", "--from", archive)[0] == 0
    stores = [RunStore(runs[seed]) for seed in (0, 1)]
    original = np.concatenate(
        [c.values for s in stores for c in s.iter_outputs(s.resolve_key(), "p_correct")]
    )
    assert np.abs(archived - original).max() < 1e-3
    back = RunStore(tmp_path / "back")
    assert sum(c.size for c in back.chunks if back.is_done(c)) == 32


def test_the_benchmark_measures_the_archive(tmp_path, runs):
    archive = tmp_path / "archive.npz"
    for seed in (0, 1, 2):
        assert _script("reference_archive.py", runs[seed], "--archive", archive).returncode == 0
    env = dict(os.environ, TI_RESULTS=str(tmp_path / "results"))
    done = _script(
        "reference_case.py", "--archive", archive, "--sizes", "48,96", "--splits", 4,
        "--prune-dir", tmp_path / "none", "--old-recipe", tmp_path / "none.tar.gz", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "results").glob("reference_case-*.json")
    result = json.loads(path.read_text())
    assert result["archived_models"] == 48 and result["pruning"] is None
    assert result["old_recipe_160"] is None
    assert [row["models"] for row in result["growth"]] == [48]  # 96: more than archived
    assert result["halves"]["models_per_half"] == 24 and result["halves"]["k"] == 3
    assert result["halves"]["splits"] == 4 and result["halves"]["error_check"]["z_sd_all"] > 0
    assert 0 <= result["halves"]["top"]["ranges_holding_measured_mean"] <= 1
    for row in result["growth"]:
        assert 0 <= row["difference"]["expected"]["top"] <= 1
        assert set(row["difference"]["needed"]) == {"spearman", "top", "bottom"}
