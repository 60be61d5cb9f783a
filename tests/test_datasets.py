import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from transfer_influence.datasets import load_dataset
from transfer_influence.datasets.folder import expand_path


def _jpeg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_folder(root, as_tar):
    files = {f"{c}/{i:03d}.png": _jpeg((40 * k, 10 * i, 100))
             for k, c in enumerate(["zebra", "apple", "mango"]) for i in range(4)}
    root.mkdir()
    if as_tar:
        with tarfile.open(root / "train.tar.gz", "w:gz") as archive:
            for name, blob in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
    else:
        for name, blob in files.items():
            (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "train" / name).write_bytes(blob)


@pytest.mark.parametrize("as_tar", [False, True])
def test_folder_and_tarball_give_the_same_labels_and_pixels(tmp_path, monkeypatch, as_tar):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    _make_folder(tmp_path / "data", as_tar)
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
    data = load_dataset({"kind": "folder", "path": str(SHARED / "datasets" / "cifar10")},
                        "test", "target")
    assert data.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.labels).tolist() == [1000] * 10
    assert data.class_names[0] == "airplane" and data.example_ids[0] == "airplane/00000.jpg"
