import numpy as np
import pytest

from transfer_influence import make_job, make_jobs
from transfer_influence.subsets import subset_size


def test_mask_is_a_pure_function_of_seed_and_index():
    a = make_job(17, 100, 0.5, base_seed=3)
    b = make_jobs(range(20), 100, 0.5, base_seed=3)[17]
    assert np.array_equal(a.mask, b.mask) and a.seed == b.seed and a.index == 17
    assert not np.array_equal(a.mask, make_job(17, 100, 0.5, base_seed=4).mask)
    assert not np.array_equal(a.mask, make_job(18, 100, 0.5, base_seed=3).mask)


@pytest.mark.parametrize(
    "k, alpha, size", [(100, 0.5, 50), (10, 0.25, 2), (7, 0.5, 4), (3, 0.4, 1)]
)
def test_subset_size_is_rounded_alpha_k(k, alpha, size):
    assert subset_size(k, alpha) == size
    assert make_job(0, k, alpha, 0).mask.sum() == size


def test_every_group_is_drawn_about_alpha_of_the_time():
    masks = np.stack([j.mask for j in make_jobs(range(2000), 40, 0.5, base_seed=0)])
    assert np.all(np.abs(masks.mean(axis=0) - 0.5) < 0.05)


def test_complementary_pairs():
    jobs = make_jobs(range(6), 10, 0.5, base_seed=1, design="complementary")
    for even, odd in zip(jobs[::2], jobs[1::2], strict=True):
        assert np.array_equal(even.mask, ~odd.mask)
    with pytest.raises(ValueError, match="complementary"):
        make_job(0, 11, 0.5, 0, design="complementary")


def test_balanced_design_uses_every_group_equally_in_each_round():
    jobs = make_jobs(range(12), 20, 0.25, base_seed=3, design="balanced")
    masks = np.stack([j.mask for j in jobs])
    assert (masks.sum(axis=1) == 5).all()
    for start in (0, 4, 8):  # rounds of 1/alpha = 4 jobs partition the groups
        assert (masks[start : start + 4].sum(axis=0) == 1).all()
    assert not np.array_equal(masks[0], masks[4])  # a fresh permutation per round
    with pytest.raises(ValueError, match="balanced design needs"):
        make_job(0, 10, 0.25, 0, design="balanced")


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.2])
def test_alpha_outside_open_interval_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        subset_size(10, alpha)


def test_subsets_with_no_room_are_refused():
    with pytest.raises(ValueError, match="between 1 and K-1"):
        subset_size(4, 0.1)
    with pytest.raises(ValueError, match="design"):
        make_job(0, 10, 0.5, 0, design="fancy")
