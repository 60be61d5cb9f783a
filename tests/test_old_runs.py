"""Run directories written by an earlier version (tests/data/old-runs.tar.gz: simulated runs
with an own seed per model, a shared seed, a seed per chunk, complementary pairs and balanced
rounds with a seed per chunk, and `expected.json`, their difference-in-means estimates as
that version computed them) still open, estimate to the same numbers, and resume."""

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from transfer_influence import ClassInfluence, RunStore, SimulatedTrainer
from transfer_influence.engines import LocalEngine

ARCHIVE = Path(__file__).parent / "data" / "old-runs.tar.gz"
SEEDS = {
    "own-seed": "model",
    "shared-seed": "run",
    "seed-per-chunk": "chunk",
    "complementary": "model",
    "balanced-seed-per-chunk": "chunk",
}


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("old")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(folder, filter="data")
    return folder, json.loads((folder / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_an_old_run_estimates_to_the_same_numbers(old_runs, name):
    folder, expected = old_runs
    store = RunStore(folder / name)
    assert store.config.run.seeds == SEEDS[name]
    fit = ClassInfluence(output="margin", estimator="difference").fit(store)
    table = fit.classes_.set_index("group").loc[list(store.groups)]
    then = expected[name]
    assert fit.n_models_ == then["n_models"]
    np.testing.assert_allclose(table["influence"], then["influence"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(table["stderr"], then["stderr"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        fit.estimate_.per_example.values[:, :5], then["per_example_influence"], atol=1e-6
    )
    assert fit.mean_output_ == pytest.approx(then["mean_output"], abs=1e-6)


@pytest.mark.parametrize("name", ["shared-seed", "seed-per-chunk", "complementary"])
def test_an_old_run_resumes_with_the_jobs_it_would_have_trained(old_runs, name, tmp_path):
    """Growing an old run trains the jobs the old version planned: the new chunks' masks
    and seeds continue its own design and seeds."""
    folder, _ = old_runs
    shutil.copytree(folder / name, tmp_path / name)
    store = RunStore(tmp_path / name)
    first = store.read_chunk(store.chunks[0])
    jobs = store.jobs(store.chunks[0])
    np.testing.assert_array_equal(first["mask"], np.stack([j.mask for j in jobs]))
    np.testing.assert_array_equal(first["seed"], [j.seed for j in jobs])
    trainer = SimulatedTrainer(**store.config.trainer.params)
    store.set_models(28)
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    assert not store.missing_chunks() and store.planned_models == 28
