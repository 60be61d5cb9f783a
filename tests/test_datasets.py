import numpy as np
import pytest

from conftest import SHARED, make_image_folder
from transfer_influence.datasets import load_dataset
from transfer_influence.datasets.folder import expand_path


@pytest.mark.parametrize("as_tar", [False, True])
def test_folder_and_tarball_give_the_same_labels_and_pixels(tmp_path, monkeypatch, as_tar):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["zebra", "apple", "mango"], 4, as_tar=as_tar)
    data = load_dataset({"kind": "folder", "path": str(tmp_path / "data")}, "train", "source")
    assert data.class_names == ("apple", "mango", "zebra")  # sorted folder names
    assert data.images.shape == (12, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.example_ids[0] == "apple/000.png" and data.labels.tolist()[:4] == [0] * 4
    assert tuple(data.images[data.labels == 2][0, 0, 0]) == (0, 0, 100)  # zebra, k=0, i=0
    again = load_dataset({"kind": "folder", "path": str(tmp_path / "data")}, "train", "source")
    assert again.fingerprint == data.fingerprint  # from the cache, memory-mapped
    assert isinstance(again.images, np.memmap)


def test_missing_dataset_says_what_and_where(tmp_path):
    with pytest.raises(ValueError, match="dataset not found: .*nowhere"):
        load_dataset({"kind": "folder", "path": str(tmp_path / "nowhere")}, "train", "source")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="looked for test/ and test.tar.gz"):
        load_dataset({"kind": "folder", "path": str(tmp_path / "empty")}, "test", "source")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset({"kind": "parquet"}, "train", "source")


def test_paths_expand_environment_with_defaults(monkeypatch):
    monkeypatch.delenv("TI_NOWHERE", raising=False)
    assert expand_path("${TI_NOWHERE:-../shared}/x") == "../shared/x"
    monkeypatch.setenv("TI_NOWHERE", "/data")
    assert expand_path("${TI_NOWHERE:-../shared}/x") == "/data/x"


@pytest.mark.skipif(not (SHARED / "datasets").exists(), reason="needs ../shared/datasets")
def test_reference_cifar10_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    data = load_dataset(
        {"kind": "folder", "path": str(SHARED / "datasets" / "cifar10")}, "test", "target"
    )
    assert data.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.labels).tolist() == [1000] * 10
    assert data.class_names[0] == "airplane" and data.example_ids[0] == "airplane/00000.jpg"
