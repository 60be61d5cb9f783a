"""Groups beyond classes: feature clusters of the source images, used as a run's groups."""

import json

import numpy as np
import pytest

from conftest import tiny_builtin_config
from transfer_influence import RunStore
from transfer_influence.clustering import FeatureClusters
from transfer_influence.datasets.synthetic import demo_dataset
from transfer_influence.trainers.source_groups import mapped_groups


def test_clusters_recover_planted_directions_numbered_by_size():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    sizes = [10, 40, 25]
    truth = np.repeat([0, 1, 2], sizes)
    # Scaled copies of a direction belong together: clusters follow directions, not lengths.
    features = centres[truth] * rng.uniform(0.5, 5, (truth.size, 1))
    features += rng.normal(0, 0.05, features.shape)
    classes = np.where(truth == 2, 1, 0)  # cluster 2 holds class "b", the others class "a"
    clusters = FeatureClusters(3).fit(features, classes, ["a", "b"])
    assert list(clusters.clusters_["images"]) == [40, 25, 10]
    for planted, number in ((1, 0), (2, 1), (0, 2)):
        assert (clusters.labels_[truth == planted] == number).all()
    assert clusters.names_ == ("c0 a", "c1 b", "c2 a")
    assert list(clusters.clusters_["purity"]) == [1.0, 1.0, 1.0]
    mapping = clusters.mapping([f"img{i}" for i in range(truth.size)])
    assert mapping["img0"] == "c2 a" and mapping["img10"] == "c0 a"
    with pytest.raises(ValueError, match="between 2 and half the images"):
        FeatureClusters(60).fit(features, classes, ["a", "b"])
    with pytest.raises(ValueError, match="one row per image"):
        FeatureClusters(3).fit(features[:5], classes, ["a", "b"])


@pytest.mark.slow
def test_a_trained_models_features_cluster_by_class_unlike_an_untrained_ones():
    """What makes feature clusters worth grouping by: pretraining organises the images."""
    import torch

    from transfer_influence.trainers.builtin import pretrained_features
    from transfer_influence.trainers.networks import build_network
    from transfer_influence.trainers.stack import Recipe, extract_features

    source = demo_dataset("source", "train", source_per_class=80)
    recipe = Recipe(widths=(16, 32, 64), epochs=8, batch_size=64)
    trained = pretrained_features(source, recipe, seed=0, device=torch.device("cpu"))
    net = build_network([0], recipe, len(source.class_names), 16, torch.device("cpu"))
    untrained = extract_features(net, source.images)[0].numpy()  # host memory, batch by batch
    purity = {
        name: FeatureClusters(16).fit(f, source.labels, source.names).clusters_["purity"].median()
        for name, f in (("trained", trained), ("untrained", untrained))
    }
    assert purity["trained"] > 0.7 and purity["trained"] > purity["untrained"] + 0.3, purity


def test_features_for_clusters_are_the_same_when_the_source_is_streamed(monkeypatch):
    import torch

    from transfer_influence.trainers.builtin import pretrained_features
    from transfer_influence.trainers.stack import Recipe

    source = demo_dataset("source", "train", source_per_class=20)
    recipe = Recipe(widths=(8, 16, 32), epochs=1, batch_size=64)
    features = {}
    for choice in ("never", "always"):
        monkeypatch.setenv("TRANSFER_INFLUENCE_STREAM", choice)
        features[choice] = pretrained_features(source, recipe, device=torch.device("cpu"))
    np.testing.assert_array_equal(features["never"], features["always"])


def test_a_groups_file_may_map_images(tmp_path):
    source = demo_dataset("source", "train", source_per_class=4)
    ids = [str(i) for i in source.example_ids]
    mapping = {i: f"g{n % 3}" for n, i in enumerate(ids)}
    (tmp_path / "images.json").write_text(json.dumps(mapping))
    groups = mapped_groups(source, str(tmp_path / "images.json"))
    assert groups.names == ("g0", "g1", "g2")
    np.testing.assert_array_equal(groups.group_of_image, np.arange(len(source)) % 3)
    chosen = groups.images(np.array([False, True, False]))
    np.testing.assert_array_equal(chosen, np.arange(1, len(source), 3))
    del mapping[ids[5]]
    (tmp_path / "partial.json").write_text(json.dumps(mapping))
    with pytest.raises(ValueError, match=f"no group for 1 source image.*{ids[5]}"):
        mapped_groups(source, str(tmp_path / "partial.json"))


@pytest.mark.slow
def test_cluster_command_makes_groups_a_run_uses(tmp_path, cli, tiny_data):
    data = tiny_data()
    config = tiny_builtin_config(tmp_path / "tiny.toml", data)
    groups = tmp_path / "clusters.json"
    code, out, err = cli("cluster", config, "--clusters", 4, "--out", groups, "--device", "cpu")
    assert code == 0, err
    assert "pretraining one model on all 36 source images" in err
    mapping = json.loads(groups.read_text())
    assert len(mapping) == 36 and len(set(mapping.values())) == 4
    assert (tmp_path / "clusters.csv").read_text().startswith("group,images,purity,classes")
    assert f"--set trainer.params.groups={groups}" in out

    run = tmp_path / "run"
    setting = f"trainer.params.groups={groups}"
    assert cli("run", config, "--run-dir", run, "--set", setting, "--quiet")[0] == 0
    assert RunStore(run).groups == tuple(sorted(set(mapping.values())))
    assert cli("estimate", run)[0] == 0

    first, second = sorted(mapping)[:2]  # same names, other members: a different grouping
    if mapping[first] == mapping[second]:
        second = next(i for i in sorted(mapping) if mapping[i] != mapping[first])
    mapping[first], mapping[second] = mapping[second], mapping[first]
    groups.write_text(json.dumps(mapping))
    code, _, err = cli("run", config, "--run-dir", run, "--set", setting, "--set", "run.models=12")
    assert code == 2 and "made on other data" in err


def test_cluster_command_reads_your_own_features_and_names_bad_input(tmp_path, cli, tiny_data):
    data = tiny_data()
    config = tiny_builtin_config(tmp_path / "tiny.toml", data)
    from transfer_influence.datasets import load_dataset

    source = load_dataset({"kind": "folder", "path": f"{data}/source"}, "train", "source")
    features = np.eye(3)[source.labels % 3] + 0.01 * np.arange(36)[:, None]
    np.savez(tmp_path / "f.npz", example_ids=source.example_ids.astype(str), features=features)
    out = tmp_path / "mine.json"
    code, printed, err = cli("cluster", config, "--clusters", 3, "--features", tmp_path / "f.npz",
                             "--out", out)  # fmt: skip
    assert code == 0, err
    mapping = json.loads(out.read_text())
    by_label = {}
    for i, label in zip(source.example_ids, source.labels, strict=True):
        by_label.setdefault(label % 3, set()).add(mapping[str(i)])
    assert all(len(names) == 1 for names in by_label.values()), by_label
    assert "pretraining" not in err

    np.savez(tmp_path / "short.npz", example_ids=source.example_ids[:30].astype(str),
             features=features[:30])  # fmt: skip
    code, _, err = cli("cluster", config, "--features", tmp_path / "short.npz", "--out", out)
    assert code == 2 and "no features for 6 image(s)" in err and len(err.splitlines()) == 1
    code, _, err = cli("cluster", config, "--clusters", 40, "--features", tmp_path / "f.npz")
    assert code == 2 and "between 2 and half the images (18)" in err
    code, _, err = cli("cluster", config, "--out", tmp_path / "groups.csv")
    assert code == 2 and "the groups file is JSON" in err
    simulated = tmp_path / "sim.toml"
    simulated.write_text('[trainer]\ntype = "simulated"\n')
    code, _, err = cli("cluster", simulated)
    assert code == 2 and "built-in trainer config" in err
