"""The analyses: rankings, projection, failure modes and the leakage finder."""

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE, SHARED
from transfer_influence import ClassInfluence, RunStore
from transfer_influence.analyses import (
    class_matrix,
    duplicate_search,
    extremeness,
    failure_modes,
    find_leakage,
    most_hurt,
    projection,
    top_groups,
)
from transfer_influence.engines import LocalEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from leakage_recall import disguise, plant, score  # noqa: E402


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from transfer_influence.config import Config
    from transfer_influence.trainers import SimulatedTrainer

    params = {"groups": 12, "examples": 150, "classes": 3, "modes": ["fixed_feature"]}
    trainer_table = {"type": "simulated", "params": params}
    config = Config.from_dict({"run": {"models": 60, "chunk_size": 20}, "trainer": trainer_table})
    trainer = SimulatedTrainer(**params)
    store = RunStore.create(tmp_path_factory.mktemp("run") / "run", config, trainer.describe())
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    return ClassInfluence(output="margin").fit(store)


def test_top_groups_overall_and_per_target_class(fitted):
    helpful = top_groups(fitted, 4)
    assert helpful["group"].tolist() == fitted.classes_["group"].head(4).tolist()
    assert helpful["rank"].tolist() == [1, 2, 3, 4]
    harmful = top_groups(fitted, 3, bottom=True)
    assert harmful["rank"].tolist() == [12, 11, 10]
    assert harmful["influence"].is_monotonic_increasing
    name = fitted.target_classes_[1]
    on_class = top_groups(fitted, 12, target_class=name)
    expected = fitted.estimate_.per_target_class.values[:, 1]
    assert np.allclose(np.sort(on_class["influence"])[::-1], np.sort(expected)[::-1])
    assert top_groups(fitted, 2, target_class=1).equals(top_groups(fitted, 2, target_class=name))
    with pytest.raises(ValueError, match="unknown target class 'kitten'"):
        top_groups(fitted, 2, target_class="kitten")


def test_projection_failure_modes_and_most_hurt_read_the_per_example_influence(fitted):
    values = fitted.estimate_.per_example.values
    group = fitted.groups_[2]
    up = projection(fitted, group, 5)
    assert up["example"].tolist() == np.argsort(-values[2])[:5].tolist()
    assert np.allclose(up["influence"], values[2, up["example"]])
    down = failure_modes(fitted, 2, 5)
    assert down["example"].tolist() == np.argsort(values[2])[:5].tolist()
    hurt = most_hurt(fitted, 6)
    worst = values.min(axis=0)
    assert hurt["example"].tolist() == np.argsort(worst)[:6].tolist()
    assert [fitted.groups_.index(g) for g in hurt["source"]] == values[:, hurt["example"]].argmin(
        axis=0
    ).tolist()
    with pytest.raises(ValueError, match="unknown source group"):
        projection(fitted, "ostrich")


def test_class_matrix_keeps_the_strongest_rows_grouped_by_best_target_class(fitted):
    matrix = class_matrix(fitted, rows=5)
    values = fitted.estimate_.per_target_class.values
    strongest = np.argsort(-np.abs(values).max(axis=1))[:5]
    assert set(matrix.index) == {fitted.groups_[k] for k in strongest}
    assert list(matrix.columns) == list(fitted.target_classes_)
    best = matrix.to_numpy().argmax(axis=1)
    assert np.all(np.diff(best) >= 0)


def _photos(count, rng):
    """Smooth random colour fields with a sharp-edged patch: photo-like enough for the finder."""
    from PIL import Image

    images = []
    for _ in range(count):
        field = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(field).resize((32, 32), Image.BICUBIC), dtype=float)
        top, left = rng.integers(2, 20, size=2)
        image[top : top + 10, left : left + 10] = rng.integers(0, 256, size=3)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def test_find_leakage_needs_both_an_extreme_influence_and_a_copy():
    rng = np.random.default_rng(0)
    groups, n = 10, 200
    target = _photos(n, rng)
    source = _photos(groups * 20, rng)
    source_groups = np.repeat(np.arange(groups), 20)
    copied = np.array([3, 50, 77, 120, 199])
    slots = np.flatnonzero(source_groups == 4)[: copied.size]
    source[slots] = np.stack([disguise(target[j], rng) for j in copied])
    influence = rng.normal(0, 0.01, size=(groups, n))
    influence[4, copied] += 0.1  # the copies help their own images
    influence[7, [10, 11]] += 0.1  # extreme, but group 7 holds no copy: not a leak
    # One scene of group 2 that two flagged target images resemble: a look-alike, not a copy.
    scene = np.flatnonzero(source_groups == 2)[0]
    noise = rng.integers(-12, 13, size=(2, *source.shape[1:]))
    target[[30, 31]] = np.clip(source[scene].astype(int) + noise, 0, 255).astype(np.uint8)
    influence[2, [30, 31]] += 0.1
    found = find_leakage(influence, target, source, source_groups)
    leaks = found[found["leak"]]
    alike = found[found["look_alike"]]
    assert sorted(alike["example"]) == [30, 31] and set(alike["source_image"]) == {scene}
    assert not (found["leak"] & found["look_alike"]).any()
    assert sorted(leaks["example"]) == copied.tolist()
    assert set(leaks["group"]) == {4}
    assert set(leaks["source_image"]) == set(slots)
    decoy = found[(found["group"] == 7) & found["example"].isin([10, 11])]
    assert len(decoy) == 2 and not decoy["leak"].any()
    plain = duplicate_search(target, source)
    assert set(copied) <= set(plain["example"])


def test_extremeness_is_a_robust_z_score_per_example():
    values = np.zeros((5, 2))
    values[:, 0] = [0.0, 1.0, -1.0, 0.0, 10.0]
    z = extremeness(values)
    assert z[4, 0] == pytest.approx(10.0 / 1.4826)
    assert np.all(np.isnan(z[:, 1]))  # no spread: nothing is extreme


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"needs the shared fixture in {SHARED}")
@pytest.mark.slow
def test_planted_leakage_on_real_outputs_is_found_with_few_false_discoveries():
    """The bar: >= 90% recall, <= 10% false discoveries, against look-alike decoys."""
    from transfer_influence.datasets import load_dataset

    fixture = np.load(FIXTURE, allow_pickle=False)
    source = {"kind": "folder", "path": str(SHARED / "datasets/cifar100")}
    source = load_dataset(source, "train", "")
    target = {"kind": "folder", "path": str(SHARED / "datasets/cifar10")}
    test, train = load_dataset(target, "test", ""), load_dataset(target, "train", "")
    run = plant(
        fixture["masks"], fixture["p_correct"], source.images, source.labels,
        test.images, train.images, seed=21, copies=40, decoys=40,
    )  # fmt: skip
    result = score(run, test.images)
    assert result["recall"] >= 0.9
    assert result["false_discovery_rate"] <= 0.1
    assert result["plain_false_discovery_rate"] > result["false_discovery_rate"]
