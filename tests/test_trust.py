"""The intervals of the ends as picked, the estimator auto picks and the stability it is
described by, each checked against a known answer (additive effects on the tool's own
fixed-size subsets; benchmarks/trust_calibration.py measures the same at more settings)."""

import dataclasses
import math

import numpy as np
import pytest

from transfer_influence import estimate_influence, make_jobs
from transfer_influence.estimation.classes import model_stability


def _masks(m: int, groups: int, seed: int) -> np.ndarray:
    return np.stack([j.mask for j in make_jobs(range(m), groups, 0.5, base_seed=seed)])


def _truth(theta: np.ndarray) -> np.ndarray:
    """What the difference in means (and the regression's contrast) estimates of each group
    with subsets of a fixed size."""
    return theta.size / (theta.size - 1) * (theta - theta.mean())


def test_simultaneous_intervals_cover_the_ends_as_picked_where_plain_ones_do_not():
    """K = 100, m = 150, 200 runs: the five most and five least helpful, picked by their
    estimates. Plain intervals cover them about 0.8 of the time; simultaneous ones at least
    the nominal 0.95 (binomial standard error of the mean over 2,000 picked intervals, which
    are correlated within a run, about 0.01)."""
    rng = np.random.default_rng(0)
    plain, simultaneous = [], []
    for run in range(200):
        theta = rng.normal(0.0, 1.0, 100)
        masks = _masks(150, 100, run)
        y = masks @ theta + rng.normal(0.0, 3.5, 150)
        overall = estimate_influence(masks, y[:, None]).overall
        order = np.argsort(-overall.values[:, 0])
        ends = np.concatenate([order[:5], order[-5:]])
        true = _truth(theta)[ends]
        for (low, high), kept in ((overall.ci(), plain), (overall.simultaneous_ci(), simultaneous)):
            kept.append(np.mean((low[ends, 0] <= true) & (true <= high[ends, 0])))
    assert np.mean(plain) < 0.9, np.mean(plain)
    assert np.mean(simultaneous) >= 0.95, np.mean(simultaneous)


def test_simultaneous_intervals_are_sidak_over_the_defined_groups():
    values = np.array([[1.0, 2.0], [0.0, np.nan], [-1.0, 0.5]])
    stderr = np.ones_like(values)
    masks = _masks(20, 3, 1)
    influence = estimate_influence(masks, np.zeros((20, 2))).overall
    from dataclasses import replace

    influence = replace(influence, values=values, stderr=stderr, dof=10**6)
    low, high = influence.simultaneous_ci(0.95)
    three = (high[0, 0] - values[0, 0]) / 1.0  # the first column has three defined groups
    two = high[0, 1] - values[0, 1]  # the second has two
    from scipy.stats import norm

    assert three == pytest.approx(norm.isf((1 - 0.95 ** (1 / 3)) / 2), rel=1e-4)
    assert two == pytest.approx(norm.isf((1 - 0.95 ** (1 / 2)) / 2), rel=1e-4)
    assert np.isnan(low[1, 1])
    with pytest.raises(ValueError, match="confidence level"):
        influence.simultaneous_ci(1.0)


def _outputs(masks: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    signal = masks @ rng.normal(0.0, 1.0, masks.shape[1])
    noise = math.sqrt(signal.var() * (1 - share) / share)
    return (signal + rng.normal(0.0, noise, len(masks)))[:, None]


def test_auto_keeps_the_difference_where_the_two_are_close_and_takes_a_clear_gain():
    """Where the regression gains nothing (K = 100, m = 150, subsets explaining 2/3) it is
    narrower in about half the runs by chance; auto never takes it (half the models cannot
    fit it). Where it gains about 4x in models (K = 20, m = 400, 0.8 explained), auto takes it
    every time."""
    rng = np.random.default_rng(2)
    close, narrower = [], []
    for run in range(40):
        masks = _masks(150, 100, run)
        y = _outputs(masks, 2 / 3, rng)
        close.append(estimate_influence(masks, y, estimator="auto").estimator)
        errors = [
            np.median(estimate_influence(masks, y, estimator=name).overall.stderr)
            for name in ("difference", "regression")
        ]
        narrower.append(errors[1] < errors[0])
    assert np.mean(narrower) > 0.25, np.mean(narrower)  # what picking the narrower would do
    assert close.count("regression") == 0, close.count("regression")
    for run in range(5):
        masks = _masks(400, 20, 100 + run)
        chosen = estimate_influence(masks, _outputs(masks, 0.8, rng), estimator="auto")
        assert chosen.estimator == "regression"


def test_auto_decides_on_half_of_the_models_never_on_the_errors_it_picks_between():
    """The choice reads the explained share in every other model: changing the other half's
    outputs, which moves both estimators' errors, leaves it as it was. (Deciding on the
    errors themselves cost coverage: docs/results.md, "Choosing the estimator".)"""
    rng = np.random.default_rng(4)
    masks = _masks(300, 40, 11)
    y = _outputs(masks, 0.55, rng)
    choices, ratios = set(), []
    for _ in range(12):
        changed = y.copy()
        changed[1::2] += rng.normal(0.0, 3.0 * y.std(), (150, 1))
        choices.add(estimate_influence(masks, changed, estimator="auto").estimator)
        errors = [
            np.median(estimate_influence(masks, changed, estimator=name).overall.stderr)
            for name in ("difference", "regression")
        ]
        ratios.append(errors[0] / errors[1])
    assert len(choices) == 1, choices
    assert max(ratios) / min(ratios) > 1.1, ratios  # the errors it did not look at moved
    # Changing the half it reads can change it: from no signal to all signal.
    noise = rng.normal(0.0, 1.0, (300, 1))
    signal = _outputs(masks, 0.999, rng)
    assert estimate_influence(masks, noise, estimator="auto").estimator == "difference"
    assert estimate_influence(masks, signal, estimator="auto").estimator == "regression"


def test_stability_describes_the_estimator_whose_ranking_is_shown():
    rng = np.random.default_rng(3)
    masks = _masks(400, 20, 7)
    y = _outputs(masks, 0.8, rng)[:, 0]
    assert model_stability(masks, y, None, "regression").estimator == "regression"
    assert model_stability(masks, y, None, "difference").estimator == "difference"
    # Halves too small for the regression: the difference in means, and it says so.
    assert model_stability(masks[:50], y[:50], None, "regression").estimator == "difference"


def test_an_independent_run_of_the_same_size_is_predicted_to_agree_as_it_does():
    """Gaussian effects, K = 40, m = 300: the predicted agreement with an independent run of
    the same size against the measured agreement of independent runs (8 pairs each) over 5
    runs; benchmarks/trust_calibration.py measures the bias at more settings (within 0.05)."""
    from transfer_influence.estimation.agreement import independent_agreement
    from transfer_influence.estimation.diagnostics import overall_difference

    rng = np.random.default_rng(5)
    errors = []
    for run in range(5):
        theta = rng.normal(0.0, 1.0, 40)

        def one(seed: int, theta: np.ndarray = theta) -> tuple[np.ndarray, np.ndarray]:
            masks = _masks(300, 40, seed)
            return masks, masks @ theta + rng.normal(0.0, 3.5, 300)

        masks, y = one(1000 * run)
        overall = estimate_influence(masks, y[:, None]).overall
        found = independent_agreement(
            overall.values[:, 0], overall.stderr[:, 0], 300, 10, bootstrap=8
        )
        measured = []
        for pair in range(8):
            a = overall_difference(*one(1000 * run + 2 * pair + 1))
            b = overall_difference(*one(1000 * run + 2 * pair + 2))
            top = np.intersect1d(np.argsort(-a)[:10], np.argsort(-b)[:10]).size / 10
            measured.append(
                [np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1], top]
            )
        measured = np.mean(measured, axis=0)
        errors.append(
            [found.expected["spearman"] - measured[0], found.expected["top"] - measured[1]]
        )
        for name in ("spearman", "top", "bottom"):
            low, high = found.ranges[name]
            assert low <= found.expected[name] + 0.05 and found.expected[name] - 0.05 <= high
            point, n_low, n_high = found.needed[name]
            reached = found.expected[name] >= found.targets[name]
            assert n_low <= n_high and (point <= 300) == reached
    bias = np.mean(errors, axis=0)
    assert abs(bias[0]) < 0.06 and abs(bias[1]) < 0.08, bias


def test_the_agreement_is_saved_and_read_back_whole():
    from transfer_influence.estimation.agreement import Agreement, Ties

    agreement = Agreement(
        models=100, groups=40, k=10,
        expected={"spearman": 0.5, "top": 0.6, "bottom": 0.3},
        ranges={"spearman": (0.4, 0.6), "top": (0.5, 0.7), "bottom": (0.2, 0.4)},
        targets={"spearman": 0.9, "top": 0.8, "bottom": 0.8},
        needed={"spearman": (900.0, 600.0, 1500.0), "top": (300.0, 200.0, 500.0),
                "bottom": (math.inf, 3000.0, math.inf)},
        ceiling={"spearman": 0.99, "top": 0.95, "bottom": 0.7}, ties=Ties(0.2, 0.3, 0.5),
    )  # fmt: skip
    import json

    record = json.loads(json.dumps(agreement.to_record(), allow_nan=False))
    assert Agreement.from_record(record) == agreement
    # No projection yet (agreement at chance) stays told apart from out of reach.
    unknown = dataclasses.replace(agreement, needed={"top": (math.nan, math.nan, math.nan)})
    back = Agreement.from_record(json.loads(json.dumps(unknown.to_record(), allow_nan=False)))
    assert all(math.isnan(x) for x in back.needed["top"])
    from transfer_influence.words import agreement_end_words

    assert "no projection to 8 of 10 while" in agreement_end_words(back, "top")
    assert "no number of models is projected" in agreement_end_words(agreement, "bottom")


def test_the_spearman_a_projection_aims_at_is_the_expected_one_of_k_classes():
    """Scores with the Pearson correlation reliability_for_spearman(0.9, K) give a Spearman of
    0.9 on average over K classes (not the population's, which is higher at small K)."""
    from scipy.stats import spearmanr

    from transfer_influence.estimation.diagnostics import reliability_for_spearman

    rng = np.random.default_rng(5)
    for groups in (20, 100):
        r = reliability_for_spearman(0.9, groups)
        a = rng.standard_normal((4000, groups))
        b = r * a + math.sqrt(1 - r**2) * rng.standard_normal((4000, groups))
        found = np.mean([spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)])
        assert found == pytest.approx(0.9, abs=0.003), (groups, found)
        assert r > 2 * math.sin(math.pi * 0.9 / 6)  # the population's reading asks for less


def test_a_range_is_the_bootstraps_spread_between_percentiles_placed_around_the_point():
    """The bootstrap sees the spread of an estimate, not all of its error: each figure's range
    is its own pair of percentiles (set in simulation) of the bootstrap's spread about its
    median, placed around the point; a model count's on the log scale, its high end out of
    reach where more of the bootstrap than the high percentile's share never reaches it."""
    from transfer_influence.estimation.agreement import (
        PROJECTION_RANGES,
        RANGE,
        _centred_range,
    )

    boot = np.exp(np.linspace(-1.0, 1.0, 101))  # log-spread -1 .. 1 about a median of 1
    low, high = _centred_range(100.0, boot, (5.0, 95.0), log=True)
    assert low == pytest.approx(100 * math.exp(-0.9)) and high == pytest.approx(100 * math.exp(0.9))
    low, high = _centred_range(100.0, boot, (10.0, 90.0), log=True)
    assert low == pytest.approx(100 * math.exp(-0.8)) and high == pytest.approx(100 * math.exp(0.8))
    low, high = _centred_range(0.3, np.linspace(0.0, 1.0, 101), (7.5, 92.5))
    assert (low, high) == (pytest.approx(0.3 - 0.425), pytest.approx(0.3 + 0.425))
    out_of_reach = boot.copy()
    out_of_reach[:6] = math.inf  # more than a twentieth of the bootstrap never reaches it
    assert _centred_range(100.0, out_of_reach, (5.0, 95.0), log=True)[1] == math.inf
    assert math.isfinite(_centred_range(100.0, out_of_reach[1:], (5.0, 95.0), log=True)[1])
    assert _centred_range(100.0, out_of_reach, (2.5, 97.5), log=True)[1] == math.inf
    assert math.isfinite(_centred_range(100.0, out_of_reach[1:], (10.0, 90.0), log=True)[1])
    # Every range is a central one, and every metric's projection has its own.
    for pair in (RANGE, *PROJECTION_RANGES.values()):
        assert pair[0] + pair[1] == 100.0 and pair[0] < pair[1]
    assert set(PROJECTION_RANGES) == {"spearman", "top", "bottom"}


def test_the_smooth_prior_is_as_heavy_tailed_as_the_effects():
    """Fitted to heavy-tailed effects (Student t, 3 degrees of freedom) the smooth prior has
    heavy tails; fitted to Gaussian ones it is close to Gaussian (excess kurtosis near 0)."""
    from transfer_influence.estimation.agreement import smooth_prior

    def excess_kurtosis(support: np.ndarray, weights: np.ndarray) -> float:
        mean = weights @ support
        variance = weights @ (support - mean) ** 2
        return float(weights @ (support - mean) ** 4 / variance**2 - 3.0)

    rng = np.random.default_rng(3)
    stderr = np.full(400, 0.2)
    heavy = rng.standard_t(3, 400) / math.sqrt(3.0)
    light = rng.normal(0.0, 1.0, 400)
    assert excess_kurtosis(*smooth_prior(heavy + rng.normal(0.0, 0.2, 400), stderr)) > 3.0
    assert abs(excess_kurtosis(*smooth_prior(light + rng.normal(0.0, 0.2, 400), stderr))) < 0.5


def test_the_spearman_projection_is_not_short_where_effects_are_heavy_tailed():
    """Heavy-tailed effects (Student t, 3 degrees of freedom), K = 100, estimates at 150
    models with errors 0.6 of the effects' sd: the models projected for Spearman 0.9 against
    the size at which the known effects give it (the oracle, from independent runs on one set
    of random numbers), over 8 runs. Measured: a median of 0.92x (0.65x to 1.54x); reading
    the agreement as that of Gaussian effects gave 0.86x (0.63x to 1.09x)."""
    from transfer_influence.estimation.agreement import _spearman, independent_agreement

    groups, models, stderr = 100, 150, 0.6
    sizes = models * 2.0 ** np.arange(-2.0, 13.0, 0.125)
    ratios = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        theta = rng.standard_t(3, groups) / math.sqrt(3.0)
        values = theta + rng.normal(0.0, stderr, groups)
        found = independent_agreement(
            values, np.full(groups, stderr), models, 10, seed=seed, bootstrap=4
        )
        noise = rng.standard_normal((2, 200, groups)) * stderr
        scales = np.sqrt(models / sizes)
        curve = np.array(
            [_spearman(theta + noise[0] * c, theta + noise[1] * c).mean() for c in scales]
        )
        i = int(np.flatnonzero(curve >= 0.9)[0])
        t = (0.9 - curve[i - 1]) / (curve[i] - curve[i - 1])
        oracle = sizes[i - 1] * (sizes[i] / sizes[i - 1]) ** t
        ratios.append(found.needed["spearman"][0] / oracle)
    assert 0.8 <= np.median(ratios) <= 1.25, np.round(ratios, 2)


def test_a_run_that_hardly_tells_its_classes_apart_is_projected_as_a_gaussian_one():
    """Effects of sd 0.15 against errors of 0.6 (an expected Spearman of 0.04 to 0.10 at the
    run's size): a spread of effects does not fit clearly better than none, so the smooth
    prior's scale and tails are all but unknown and the projection is the Gaussian reading
    (Spearman-Brown from the expected agreement). Read off the smooth prior, with tails
    fitted to noise, one of the 6 runs asked for 8x as many."""
    from transfer_influence.estimation.agreement import (
        _spread_is_clear,
        independent_agreement,
        smooth_prior,
    )
    from transfer_influence.estimation.diagnostics import reliability_for_spearman, spearman_brown

    groups, models, stderr = 100, 200, np.full(100, 0.6)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        values = rng.normal(0.0, 0.15, groups) + rng.normal(0.0, 0.6, groups)
        assert not _spread_is_clear(values, stderr, smooth_prior(values, stderr)), seed
        found = independent_agreement(values, stderr, models, 10, seed=seed, bootstrap=4)
        have, want = (
            reliability_for_spearman(x, groups) for x in (found.expected["spearman"], 0.9)
        )
        gaussian = spearman_brown(have, want, models)
        assert found.needed["spearman"][0] == pytest.approx(gaussian), (seed, found.needed)


def test_a_spearman_projection_does_not_contradict_the_agreement_beside_it():
    """Where the smooth prior's curve and the agreement expected at the run's size disagree
    on which side of it the target lies, the projection is the run's size."""
    from transfer_influence.estimation.agreement import _spearman_needed

    rng = np.random.default_rng(0)
    effects = rng.normal(0.0, 1.0, 40)
    for error, agreement, side in ((0.6, 0.5, "above"), (0.6, 0.95, "at"), (0.05, 0.5, "at")):
        stderr = np.full(40, error)
        values = effects + rng.normal(0.0, error, 40)
        needed = _spearman_needed(values, stderr, 100, agreement, 0.9, seed=0)
        assert needed > 100 if side == "above" else needed == 100, (error, agreement, needed)


def test_a_projection_past_any_float_is_out_of_reach(monkeypatch):
    """A curve extended along a nearly flat end can cross the target beyond any float's
    range: that is out of reach, not an overflow."""
    from transfer_influence.estimation import agreement

    monkeypatch.setattr(agreement, "_log_size_at", lambda curve, value: 800.0)
    rng = np.random.default_rng(0)
    stderr = np.full(40, 0.3)
    values = rng.normal(0.0, 1.0, 40) + rng.normal(0.0, 0.3, 40)
    assert agreement._spearman_needed(values, stderr, 100, 0.5, 0.9, seed=0) == math.inf


def test_a_clear_spread_of_effects_is_told_from_none():
    """Effects of sd 1 against errors of 0.3 are a clear spread; all effects equal are not."""
    from transfer_influence.estimation.agreement import _spread_is_clear, smooth_prior

    rng = np.random.default_rng(0)
    stderr = np.full(40, 0.3)
    spread = rng.normal(0.0, 1.0, 40) + rng.normal(0.0, 0.3, 40)
    equal = rng.normal(0.0, 0.3, 40)
    assert _spread_is_clear(spread, stderr, smooth_prior(spread, stderr))
    assert not _spread_is_clear(equal, stderr, smooth_prior(equal, stderr))


def test_classes_that_truly_tie_put_spearman_out_of_reach_and_the_words_say_why():
    """60% of 100 classes share one effect exactly, so no number of models passes a Spearman
    of about 0.8: the tie check finds them (measured: the projection out of reach in 5 of 6
    runs, the top of its range in all 6, each with a finite low end), and the words say
    why. Gaussian effects of the same errors are not called tied (0 of 6)."""
    from transfer_influence.estimation.agreement import independent_agreement
    from transfer_influence.words import agreement_sentences, ties_sentences

    groups, models, stderr = 100, 600, 0.3
    out_of_reach = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        theta = np.where(rng.random(groups) < 0.6, 0.0, rng.normal(0.0, 1.6, groups))
        values = theta + rng.normal(0.0, stderr, groups)
        found = independent_agreement(
            values, np.full(groups, stderr), models, 10, seed=seed, bootstrap=4
        )
        point, low, high = found.needed["spearman"]
        assert math.isinf(high) and math.isfinite(low), found.needed
        # The report's reason for the range's top, in the words of what was ranked.
        assert "of the pool images have" in ties_sentences(found, ["spearman"], "pool images")[0]
        ties = found.ties
        assert 0.4 <= ties.likely <= ties.plausible <= 0.8 and ties.fewest <= ties.likely, ties
        out_of_reach += math.isinf(point)
        if math.isinf(point):
            assert found.ceiling["spearman"] < 0.9
            words = " ".join(agreement_sentences(found))
            assert "look tied" in words and "cannot rule out that up to" in words, words
    assert out_of_reach >= 4
    for seed in range(6):
        rng = np.random.default_rng(seed)
        values = rng.normal(0.0, 1.0, groups) + rng.normal(0.0, stderr, groups)
        found = independent_agreement(
            values, np.full(groups, stderr), models, 10, seed=seed, bootstrap=4
        )
        assert found.ties.fewest == found.ties.likely == 0.0 and found.ceiling["spearman"] > 0.99
        assert all(math.isfinite(x) for x in found.needed["spearman"]), found.needed
        assert not ties_sentences(found, ["spearman"])
