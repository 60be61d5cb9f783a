"""A training seed per chunk: models of a chunk share a seed, each chunk another. The seed's
offset is removed from the estimates, their intervals stay honest, and stability is measured
across seeds."""

import json

import numpy as np
import pytest

from conftest import NOISY_SEEDS
from transfer_influence import ClassInfluence, RunStore, estimate_influence
from transfer_influence.config import Config, ConfigError
from transfer_influence.engines import LocalEngine
from transfer_influence.estimation.centring import centre_within
from transfer_influence.estimation.diagnostics import (
    linear_datamodeling_score,
    split_half_stability,
)
from transfer_influence.trainers import load_trainer


def _run(tmp_path, name, models=160, **run):
    config = Config.from_dict(
        {
            "run": {"models": models, "chunk_size": 16, "seed": 7} | run,
            "trainer": {"type": "simulated", "params": NOISY_SEEDS},
        }
    )
    trainer = load_trainer("simulated", config.trainer.params)
    store = RunStore.open_or_create(tmp_path / name, config, trainer.describe())
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    return store, trainer


def test_the_models_of_a_chunk_share_a_seed_and_chunks_differ(tmp_path):
    store, _ = _run(tmp_path, "run", models=48, design="balanced", seeds="chunk")
    seeds = [{job.seed for job in store.jobs(chunk)} for chunk in store.chunks]
    assert all(len(s) == 1 for s in seeds)
    assert len(set.union(*seeds)) == len(store.chunks) == 3
    for job in store.jobs(store.chunks[0])[::2]:  # balanced: each pair splits the groups
        pair = store.jobs(store.chunks[0])[job.index + 1]
        assert not (job.mask & pair.mask).any() and (job.mask | pair.mask).all()


@pytest.mark.parametrize(
    "run, message",
    [
        ({"seeds": "chunk", "design": "balanced", "chunk_size": 5}, "multiple of 2"),
        ({"seeds": "chunk", "chunk_size": 1}, "chunk_size >= 2"),
        ({"seeds": "sometimes"}, "run.seeds must be one of 'model', 'chunk', 'run'"),
        # The two keys of earlier versions are still read, and checked:
        ({"seed_per_chunk": True, "shared_seed": True}, "not both"),
        ({"seed_per_chunk": "yes"}, "true or false"),
        ({"shared_seed": True, "seeds": "chunk"}, "contradicts"),
    ],
)
def test_seed_settings_are_checked(run, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"run": run})


def test_the_keys_of_earlier_versions_mean_one_setting():
    for old, new in (({"shared_seed": True}, "run"), ({"seed_per_chunk": True}, "chunk"),
                     ({"shared_seed": False, "seed_per_chunk": False}, "model")):  # fmt: skip
        config = Config.from_dict({"run": old})
        assert config.run.seeds == new and config.to_dict()["run"]["seeds"] == new


def test_seed_offsets_are_removed_and_intervals_stay_honest(tmp_path):
    independent, trainer = _run(tmp_path, "independent")
    per_chunk, _ = _run(tmp_path, "per-chunk", seeds="chunk")
    truth = trainer.true_influence("sim", "fixed_feature")
    fits = {
        name: ClassInfluence(output="margin", estimator="difference").fit(store)
        for name, store in (("independent", independent), ("per-chunk", per_chunk))
    }
    per_example = fits["per-chunk"].estimate_.per_example
    low, high = per_example.ci(0.95)
    coverage = np.mean((low <= truth) & (truth <= high))
    assert 0.92 <= coverage <= 0.98, coverage
    # The seed's noise is gone from the estimates: their errors shrink (here by ~2.4x) and
    # the estimates are closer to the truth.
    ratio = per_example.stderr.mean() / fits["independent"].estimate_.per_example.stderr.mean()
    assert ratio < 0.5, ratio
    errors = {
        name: np.abs(fit.estimate_.per_example.values - truth).mean() for name, fit in fits.items()
    }
    assert errors["per-chunk"] < 0.6 * errors["independent"], errors
    # Stability splits whole chunks: 10 chunks -> halves of 5 chunks = 80 models each.
    assert fits["per-chunk"].stability_.models == 160
    assert fits["per-chunk"].seeds_ == "chunk"

    # The store yields the outputs as recorded; the mean output is theirs, not the centred
    # one (which is 0).
    recorded = [c.values for c in per_chunk.iter_outputs("sim/fixed_feature", "margin")]
    assert fits["per-chunk"].mean_output_ == pytest.approx(np.concatenate(recorded).mean())
    assert abs(fits["per-chunk"].mean_output_) > 0.1


@pytest.mark.slow  # many simulated runs: about 7 s for both
@pytest.mark.parametrize("chunk_size", [2, 4])
def test_small_chunks_are_neither_shrunk_nor_overconfident(tmp_path, chunk_size):
    """Centring a chunk of C random subsets on its mean shrank the plain difference in means
    by (C - 1) / C and its pooled error forgot the mean each chunk spent (78-89% coverage at
    C = 2-4); slopes within chunks are what centring calls for."""
    covered, slopes = {"difference": [], "regression": []}, []
    for seed in range(3):
        store, trainer = _run(
            tmp_path, f"{chunk_size}-{seed}", seed=seed, seeds="chunk", chunk_size=chunk_size
        )
        truth = trainer.true_influence("sim", "fixed_feature")
        for estimator in covered:
            fit = ClassInfluence(output="margin", estimator=estimator).fit(store)
            low, high = fit.estimate_.per_example.ci(0.95)
            covered[estimator].append(np.mean((low <= truth) & (truth <= high)))
            if estimator == "difference":
                values = fit.estimate_.per_example.values
                slopes.append(np.sum(values * truth) / np.sum(truth * truth))
                assert fit.estimate_.per_example.dof == 160 - 160 // chunk_size - 1
    coverage = {name: float(np.mean(c)) for name, c in covered.items()}
    assert all(0.93 <= c <= 0.98 for c in coverage.values()), coverage
    assert 0.9 <= np.mean(slopes) <= 1.1, slopes  # plain: about (C - 1) / C


def test_stability_and_lds_compare_models_within_their_seed():
    """Pairs of models share a seed whose offset dwarfs every effect. Estimates, split-half
    stability and the LDS see through it, recorded or centred alike; the LDS of centred
    outputs judged by uncentred predictions (as before) was lower in every draw."""
    for draw in range(3):
        rng = np.random.default_rng(draw)
        masks = rng.random((240, 20)) < 0.5
        effects = rng.normal(0, 1, 20)
        blocks = np.arange(240) // 2
        recorded = masks @ effects + rng.normal(0, 2, 240) + rng.normal(0, 10, 120)[blocks]
        centred = centre_within(recorded, blocks)
        assert np.allclose(np.bincount(blocks, centred), 0)
        fits = [
            (
                estimate_influence(masks, y[:, None], blocks=blocks).overall.values[:, 0],
                split_half_stability(masks, y, splits=20, blocks=blocks).spearman,
                linear_datamodeling_score(masks, y, 48, splits=50, blocks=blocks)[0],
            )
            for y in (recorded, centred)
        ]
        np.testing.assert_allclose(fits[0][0], fits[1][0], atol=1e-9)
        assert fits[0][1:] == pytest.approx(fits[1][1:])
        values, stability, lds = fits[0]
        assert 0.7 <= np.sum(values * effects) / np.sum(effects**2) <= 1.3
        assert stability > 0.5
        assert lds > linear_datamodeling_score(masks, centred, 48, splits=50)[0] + 0.1


def test_the_regression_counts_the_levels_spent_on_seeds():
    """40 models in 20 seed pairs for 20 groups: 19 residual degrees of freedom go to the
    seeds, too few left for honest errors, so the regression refuses and auto takes the
    difference in means (which still has 19)."""
    rng = np.random.default_rng(0)
    masks = rng.random((40, 20)) < 0.5
    outputs = rng.normal(size=(40, 3))
    pairs = np.arange(40) // 2
    with pytest.raises(ValueError, match=r"K \+ 10 \+ 19 \(one per seed chunk but one\) = 49"):
        estimate_influence(masks, outputs, estimator="regression", blocks=pairs)
    chosen = estimate_influence(masks, outputs, estimator="auto", blocks=pairs)
    assert chosen.estimator == "difference" and chosen.per_example.dof == 40 - 20 - 1
    # Without seeds to absorb, the same 40 models leave the regression its 19.
    assert estimate_influence(masks, outputs, estimator="regression").per_example.dof == 19


def test_a_run_made_before_a_config_field_existed_still_resumes(tmp_path):
    store, _ = _run(tmp_path, "run", models=32)
    meta = json.loads((store.root / "run.json").read_text())
    del meta["config"]["run"]["seeds"]  # as written by an older version
    (store.root / "run.json").write_text(json.dumps(meta))
    grown, _ = _run(tmp_path, "run", models=48)
    assert grown.planned_models == 48 and not grown.missing_chunks()


def test_the_report_says_how_seeds_were_shared_and_split(tmp_path, cli):
    store, _ = _run(tmp_path, "run", models=64, seeds="chunk")
    code, _, err = cli("report", store.root, "--output", "margin", "--quiet")
    assert code == 0, err
    html = (store.root / "report" / "index.html").read_text()
    assert "a seed per chunk of models" in html
    assert "halves of whole chunks, so across seeds" in html
    # A simulated run has no images: no empty image sections, one line that says so.
    assert 'id="projection"' not in html and "target_data" not in html
    assert "these sections show target images (a simulated run has no images)." in html
