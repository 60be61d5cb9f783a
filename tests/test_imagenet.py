"""ImageNet in the layouts users hold it: ILSVRC with its validation CSV, class folders,
Downsampled ImageNet's npz batches; human names from the synset file; one-line errors."""

import numpy as np
import pytest
from PIL import Image

from transfer_influence.datasets import load_dataset, survey_dataset

WNIDS = ["n01440764", "n02012849", "n03126707"]
SYNSETS = "n01440764 tench, Tinca tinca\nn02012849 crane\nn03126707 crane\n"


def _jpeg(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))


def _ilsvrc(root):
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    rows = ["ImageId,PredictionString"]
    for k, wnid in enumerate(WNIDS):
        for i in range(3):
            _jpeg(data / "train" / wnid / f"{wnid}_{i}.JPEG", (80 * k, 20 * i, 0))
        image_id = f"ILSVRC2012_val_{k + 1:08d}"
        _jpeg(data / "val" / f"{image_id}.JPEG", (80 * k, 0, 50), size=(30, 40))
        rows.append(f"{image_id},{wnid} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text(SYNSETS)
    return root


def test_the_ilsvrc_layout_reads_train_and_labelled_validation_with_human_names(tmp_path):
    spec = {"kind": "imagenet", "path": str(_ilsvrc(tmp_path / "imagenet")), "size": 16}
    train, test = (load_dataset(spec, split, "source") for split in ("train", "test"))
    assert train.class_names == tuple(WNIDS) and test.class_names == tuple(WNIDS)
    assert train.names == ("tench", "crane (n02012849)", "crane (n03126707)")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.labels.tolist() == [0, 1, 2] and test.images.shape == (3, 16, 16, 3)
    # The labels follow the CSV: its rows are part of the cache's identity.
    csv = tmp_path / "imagenet" / "LOC_val_solution.csv"
    rows = csv.read_text().replace(f"{WNIDS[0]} 1", "first").replace(f"{WNIDS[2]} 1", "last")
    csv.write_text(rows.replace("first", f"{WNIDS[2]} 1").replace("last", f"{WNIDS[0]} 1"))
    assert load_dataset(spec, "test", "source").labels.tolist() == [2, 1, 0]


def test_class_folders_with_a_named_synset_file(tmp_path):
    root = _class_folders(tmp_path / "in")
    synsets = tmp_path / "words.txt"
    synsets.write_text(SYNSETS)
    spec = {"kind": "imagenet", "path": str(root), "size": 8, "synsets": str(synsets)}
    test = load_dataset(spec, "test", "target")
    assert test.names[0] == "tench" and len(test) == 3
    synsets.write_text(SYNSETS.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="names no n02012849 \\(2 class\\(es\\) missing\\)"):
        load_dataset(spec, "test", "target")


def _downsampled(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_data_batch_1", 4), ("train_data_batch_2", 3), ("val_data", 2)):
        planar = rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8)
        labels = np.arange(n) % 3 + 1  # 1-based, as released
        np.savez(root / f"{name}.npz", data=planar.reshape(n, -1), labels=labels)
    (root / "map_clsloc.txt").write_text(
        "".join(f"{w} {k + 1} word{k}\n" for k, w in enumerate(WNIDS))
    )
    return root


def _class_folders(root):
    for split in ("train", "val"):
        for k, wnid in enumerate(WNIDS):
            _jpeg(root / split / wnid / "a.JPEG", (50 * k, 0, 0), size=(24, 20))
    return root


@pytest.mark.parametrize(
    "make, size", [(_ilsvrc, 16), (_ilsvrc, None), (_class_folders, 8), (_downsampled, None)]
)
def test_a_survey_counts_what_a_load_decodes_without_decoding(tmp_path, make, size):
    """What ``run --dry-run`` reads: every layout counted and sized from names and headers,
    the cache left unbuilt; once built, read from the cache."""
    spec = {"kind": "imagenet", "path": str(make(tmp_path / "in"))}
    spec |= {"size": size} if size else {}
    cache = tmp_path / "cache"
    for split in ("train", "test"):
        built = sorted(cache.glob("*")) if cache.exists() else []
        survey = survey_dataset(spec, split, "source")
        assert not survey.decoded and (sorted(cache.glob("*")) if cache.exists() else []) == built
        data = load_dataset(spec, split, "source")
        assert (survey.count, survey.side) == (len(data), data.images.shape[1:3])
        assert survey.nbytes == data.images.nbytes
        after = survey_dataset(spec, split, "source")
        assert after.decoded and (after.count, after.side) == (survey.count, survey.side)


def test_downsampled_npz_batches_and_never_a_pickle(tmp_path):
    root = _downsampled(tmp_path / "imagenet32")
    spec = {"kind": "imagenet", "path": str(root)}
    train = load_dataset(spec, "train", "source")
    assert train.images.shape == (7, 32, 32, 3) and train.labels.tolist() == [0, 1, 2, 0, 0, 1, 2]
    with np.load(root / "train_data_batch_2.npz") as batch:
        first = batch["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(train.images[4], first)  # planar RGB rows to H x W x 3
    assert train.class_names == tuple(WNIDS) and train.example_ids[4] == "train_data_batch_2/0"
    assert len(load_dataset(spec, "test", "source")) == 2
    (root / "train_data_batch_3").write_bytes(b"\x80\x04K\x01.")  # a pickle
    with pytest.raises(ValueError, match="is a Python pickle, which this tool never loads"):
        load_dataset(spec, "train", "source")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: (root / "train" / "n01440764").mkdir(parents=True), "no images found"),
        (lambda root: root.mkdir(), "holds no ImageNet layout"),
        (lambda root: None, "ImageNet not found"),
    ],
)
def test_bad_trees_are_one_line(tmp_path, make, message):
    root = tmp_path / "in"
    make(root)
    with pytest.raises(ValueError, match=message):
        load_dataset({"kind": "imagenet", "path": str(root)}, "train", "source")
