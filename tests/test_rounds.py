"""Designs whose models come in rounds that partition the groups (complementary, balanced):
the difference in means' errors are taken over rounds, the independent unit."""

import numpy as np
import pytest

from conftest import NOISY_SEEDS
from transfer_influence import ClassInfluence, RunStore
from transfer_influence.config import Config
from transfer_influence.engines import LocalEngine
from transfer_influence.estimation import (
    InfluenceAccumulator,
    InfluenceWarning,
    estimate_influence,
)
from transfer_influence.estimation.centring import centre_within
from transfer_influence.estimation.rounds import RoundContrasts
from transfer_influence.subsets import make_jobs, round_size
from transfer_influence.trainers import load_trainer


def additive_case(design, alpha, seed, k=100, n=20, m=200, noise=0.003):
    """Outputs additive in the groups, which explain most of the spread between models."""
    rng = np.random.default_rng(seed)
    masks = np.stack([job.mask for job in make_jobs(range(m), k, alpha, seed, design)])
    effects = rng.normal(0.0, 0.01, k)
    per_example = rng.normal(1.0, 0.3, n)
    outputs = 0.5 + (masks @ effects)[:, None] * per_example + rng.normal(0.0, noise, (m, n))
    truth = k / (k - 1) * (effects - effects.mean())  # what the difference in means estimates
    rounds = np.arange(m) // round_size(design, alpha)
    return masks, outputs, truth[:, None] * per_example, rounds


@pytest.mark.parametrize(
    "design, alpha, pooled_below", [("complementary", 0.5, 0.88), ("balanced", 0.25, 0.92)]
)
def test_round_errors_cover_where_pooled_errors_do_not(design, alpha, pooled_below):
    covered = {"rounds": [], "pooled": []}
    for seed in range(8):
        masks, outputs, truth, rounds = additive_case(design, alpha, seed)
        for name, given in (("rounds", rounds), ("pooled", None)):
            est = estimate_influence(masks, outputs, estimator="difference", rounds=given)
            low, high = est.per_example.ci(0.95)
            covered[name].append(np.mean((low <= truth) & (truth <= high)))
    coverage = {name: float(np.mean(c)) for name, c in covered.items()}
    assert 0.93 <= coverage["rounds"] <= 0.97, coverage
    # The pooled error assumes a group's models with and without it are independent; in a
    # round they hold complementary groups, so it is too small (by 1.41x with pairs, 1.15x
    # with rounds of 4, when the groups explain all of the spread).
    assert coverage["pooled"] < pooled_below, coverage


def test_summaries_use_rounds_too():
    masks, outputs, truth, rounds = additive_case("complementary", 0.5, seed=1)
    est = estimate_influence(masks, outputs, np.arange(20) % 4, "difference", rounds=rounds)
    assert est.overall.dof == est.per_target_class.dof == 99
    pooled = estimate_influence(masks, outputs, np.arange(20) % 4, "difference")
    np.testing.assert_allclose(est.overall.values, pooled.overall.values)
    # Here the other groups' effects make round contrasts vary far more than pooled assumes.
    assert np.median(est.overall.stderr / pooled.overall.stderr) > 1.2
    contrasts = np.array(
        [
            outputs[2 * r : 2 * r + 2].mean(axis=1) @ np.where(masks[2 * r, 7], [1, -1], [-1, 1])
            for r in range(100)
        ]
    )
    assert est.overall.values[7, 0] == pytest.approx(contrasts.mean())
    assert est.overall.stderr[7, 0] == pytest.approx(contrasts.std(ddof=1) / 10)


def test_rounds_split_over_updates_equal_one_update():
    masks, outputs, _, rounds = additive_case("balanced", 0.25, seed=2, m=40)
    whole = estimate_influence(masks, outputs, estimator="difference", rounds=rounds)
    acc = InfluenceAccumulator(masks.shape[1], outputs.shape[1])
    for start in range(0, 40, 6):  # chunks of 6 cut rounds of 4
        part = slice(start, start + 6)
        acc.update(masks[part], outputs[part], rounds[part])
    streamed = acc.result("difference")
    np.testing.assert_allclose(streamed.per_example.stderr, whole.per_example.stderr, rtol=1e-4)
    assert streamed.per_example.dof == whole.per_example.dof == 9


def test_a_round_that_lost_a_model_is_left_out_of_the_errors():
    masks, outputs, _, rounds = additive_case("complementary", 0.5, seed=3, m=20)
    contrasts = RoundContrasts(masks.shape[1], outputs.shape[1])
    keep = np.arange(20) != 5  # model 5 was unhealthy: round 2 never completes
    contrasts.update(masks[keep], outputs[keep], rounds[keep])
    assert contrasts.count == 9
    complete = np.isin(rounds, [r for r in range(10) if r != 2])
    alone = RoundContrasts(masks.shape[1], outputs.shape[1])
    alone.update(masks[complete], outputs[complete], rounds[complete])
    np.testing.assert_allclose(contrasts.stderr()[0], alone.stderr()[0])


def test_rounds_that_never_complete_say_so():
    masks, outputs, _, _ = additive_case("balanced", 0.25, seed=5, m=40)
    with pytest.warns(InfluenceWarning, match="0 complete design round"):
        est = estimate_influence(masks, outputs, estimator="difference", rounds=np.arange(40))
    assert np.isnan(est.overall.stderr).all() and np.isfinite(est.overall.values).all()


def test_rounds_are_given_always_or_never():
    masks, outputs, _, rounds = additive_case("complementary", 0.5, seed=4, m=8)
    acc = InfluenceAccumulator(masks.shape[1], outputs.shape[1]).update(masks[:4], outputs[:4])
    with pytest.raises(ValueError, match="every update or with none"):
        acc.update(masks[4:], outputs[4:], rounds[4:])


def test_a_balanced_run_with_a_seed_per_chunk_has_honest_intervals(tmp_path):
    covered = {"rounds": [], "pooled": []}
    for seed in range(4):  # the groups' part of the error is shared by all 200 examples
        run = {"models": 160, "chunk_size": 16, "seed": seed, "design": "balanced"}
        config = Config.from_dict(
            {
                "run": run | {"seeds": "chunk"},
                "trainer": {"type": "simulated", "params": NOISY_SEEDS},
            }
        )
        trainer = load_trainer("simulated", config.trainer.params)
        store = RunStore.open_or_create(tmp_path / str(seed), config, trainer.describe())
        LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
        truth = trainer.true_influence("sim", "fixed_feature")
        fit = ClassInfluence(output="margin", estimator="difference").fit(store)
        per_example = fit.estimate_.per_example
        assert per_example.dof == 79  # 160 models in 80 complementary pairs
        chunks = list(store.iter_outputs("sim/fixed_feature", "margin"))
        assert all(c.rounds is not None for c in chunks)
        blocks = np.concatenate([np.full(len(c.masks), i) for i, c in enumerate(chunks)])
        centred = centre_within(np.concatenate([c.values for c in chunks]), blocks)
        pooled = estimate_influence(np.concatenate([c.masks for c in chunks]), centred).per_example
        for name, estimate in (("rounds", per_example), ("pooled", pooled)):
            low, high = estimate.ci(0.95)
            covered[name].append(np.mean((low <= truth) & (truth <= high)))
    coverage = {name: float(np.mean(c)) for name, c in covered.items()}
    assert 0.93 <= coverage["rounds"] <= 0.98, coverage
    assert coverage["pooled"] < 0.9, coverage
