import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path

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


def test_corrupt_image_fails_by_name_or_is_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["a", "b"], 3, as_tar=False)
    (tmp_path / "data" / "train" / "b" / "001.png").write_bytes(b"\x89PNG broken")
    spec = {"kind": "folder", "path": str(tmp_path / "data")}
    with pytest.raises(ValueError, match="1 corrupt image.*first b/001.png.*on_corrupt"):
        load_dataset(spec, "train", "source")
    with pytest.warns(UserWarning, match="left out 1 corrupt image.*b/001.png"):
        data = load_dataset(dict(spec, on_corrupt="skip"), "train", "source")
    assert len(data) == 5 and "b/001.png" not in data.example_ids.tolist()
    with pytest.raises(ValueError, match="on_corrupt must be"):
        load_dataset(dict(spec, on_corrupt="ignore"), "train", "source")


def test_images_of_different_sizes_need_a_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["a"], 2, as_tar=False, size=8)
    make_image_folder(tmp_path / "more", ["b"], 2, as_tar=False, size=12)
    (tmp_path / "more" / "train" / "b").rename(tmp_path / "data" / "train" / "b")
    spec = {"kind": "folder", "path": str(tmp_path / "data")}
    with pytest.raises(ValueError, match="different sizes.*set size = N"):
        load_dataset(spec, "train", "source")
    assert load_dataset(dict(spec, size=10), "train", "source").images.shape == (4, 10, 10, 3)


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(6, 4, 4, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "d.npz",
        train_images=images,
        train_labels=np.array([0, 1, 2] * 2),
        class_names=np.array(["x", "y", "z"]),
    )
    data = load_dataset({"kind": "npz", "path": str(tmp_path / "d.npz")}, "train", "source")
    assert data.class_names == ("x", "y", "z") and np.array_equal(data.images, images)
    assert data.example_ids[1] == "train/1"
    with pytest.raises(ValueError, match="no array 'test_images'"):
        load_dataset({"kind": "npz", "path": str(tmp_path / "d.npz")}, "test", "source")


def test_validation_split_is_carved_from_training_data():
    from transfer_influence.trainers.builtin import TargetData

    spec = {"kind": "demo", "name": "t", "target_per_class": 50}
    plain = TargetData(spec)
    carved = TargetData(dict(spec, validation=0.2, evaluate="validation"))
    train_ids, held_out = set(carved.train.example_ids), set(carved.test.example_ids)
    assert not train_ids & held_out
    assert train_ids | held_out == set(plain.train.example_ids)
    assert len(held_out) == 40
    again = TargetData(dict(spec, validation=0.2, evaluate="validation"))
    assert set(again.test.example_ids) == held_out  # seeded
    kept_test = TargetData(dict(spec, validation=0.2))
    assert np.array_equal(kept_test.test.example_ids, plain.test.example_ids)
    with pytest.raises(ValueError, match="evaluate must be"):
        TargetData(dict(spec, evaluate="validation"))


def test_huggingface_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the huggingface extra is not installed")
    from PIL import Image

    images = [Image.new("RGB", (6, 6), (10 * i, 0, 0)) for i in range(4)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    )
    split = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 0, 1]}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "hf"))
    data = load_dataset({"kind": "huggingface", "path": str(tmp_path / "hf")}, "test", "target")
    assert data.class_names == ("cat", "dog") and data.labels.tolist() == [0, 1, 0, 1]
    assert data.images.shape == (4, 6, 6, 3) and data.images[3, 0, 0, 0] == 30
    with pytest.raises(ValueError, match="no column 'image'"):
        load_dataset(
            {"kind": "huggingface", "path": str(tmp_path / "hf"), "image_column": "image"},
            "test",
            "target",
        )


def test_torchvision_adapter_reads_a_downloaded_dataset(tmp_path, monkeypatch):
    """torchvision cannot be installed beside the CPU torch wheel here, so a stand-in module
    with torchvision's dataset interface checks the adapter's logic."""
    import sys
    import types

    class FakeCIFAR:
        classes = ["plane", "car"]

        def __init__(self, root, train, download):
            assert download is False  # never downloads at run time
            n = 6 if train else 4
            self.data = np.full((n, 5, 5, 3), 7, dtype=np.uint8)
            self.targets = [i % 2 for i in range(n)]

        def __len__(self):
            return len(self.targets)

    module = types.ModuleType("torchvision.datasets")
    module.CIFAR10 = FakeCIFAR
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)
    spec = {"kind": "torchvision", "dataset": "CIFAR10", "root": str(tmp_path)}
    data = load_dataset(spec, "test", "target")
    assert data.class_names == ("plane", "car") and data.images.shape == (4, 5, 5, 3)
    assert data.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="has no 'MNISTT'"):
        load_dataset(dict(spec, dataset="MNISTT"), "test", "target")


def test_a_huggingface_name_not_on_disk_fails_at_once_without_the_network(tmp_path):
    """A mistyped path used to go to the hub: 24 s of retries here, a download elsewhere."""
    pytest.importorskip("datasets", reason="the huggingface extra is not installed")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="not found locally"):
        load_dataset({"kind": "huggingface", "path": "nobody-here/no-such-set"}, "test", "target")
    assert time.perf_counter() - start < 10


def test_the_folder_cache_follows_every_change_to_the_images(tmp_path, monkeypatch):
    """The cache was keyed by the split directory's own stat: moving an image between class
    folders kept the old labels and fingerprint, and flipped bytes in the cache went unseen."""
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["x", "y"], 3, splits=("test",), as_tar=False)
    spec = {"kind": "folder", "path": str(tmp_path / "data")}
    before = load_dataset(spec, "test", "target")
    split = tmp_path / "data" / "test"
    (split / "x" / "002.png").rename(split / "y" / "009.png")
    after = load_dataset(spec, "test", "target")
    assert after.fingerprint != before.fingerprint
    assert after.labels.tolist() == [0, 0, 1, 1, 1, 1] and "y/009.png" in after.example_ids
    # Damage the cached pixels: the checksum catches it and the cache is built again.
    cached = next((tmp_path / "cache").glob("data-test-*.npy"))
    pixels = np.array(after.images)
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    again = load_dataset(spec, "test", "target")
    np.testing.assert_array_equal(np.array(again.images), pixels)


def test_hostile_members_of_image_folders_and_archives(tmp_path, monkeypatch):
    """A FIFO named like an image hung the load; a hard-linked tar member was dropped; a name
    twice in a tar failed with "'<' not supported between instances of 'TarInfo'"."""
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "dir", ["x", "y"], 2, splits=("test",), as_tar=False)
    os.mkfifo(tmp_path / "dir" / "test" / "x" / "fifo.png")
    loaded = []
    thread = threading.Thread(
        target=lambda: loaded.append(
            load_dataset({"kind": "folder", "path": str(tmp_path / "dir")}, "test", "target")
        ),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=60)
    assert loaded and len(loaded[0].labels) == 4
    make_image_folder(tmp_path / "tar", ["x", "y"], 2, splits=("test",))
    archive_path = tmp_path / "tar" / "test.tar.gz"
    with tarfile.open(archive_path) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    link = tarfile.TarInfo("y/linked.png")
    link.type, link.linkname = tarfile.LNKTYPE, members[0][0].name
    with tarfile.open(archive_path, "w:gz") as archive:
        for member, blob in members:
            archive.addfile(member, io.BytesIO(blob))
        archive.addfile(link)
    linked = load_dataset({"kind": "folder", "path": str(tmp_path / "tar")}, "test", "target")
    assert "y/linked.png" in linked.example_ids and len(linked.labels) == 5
    with tarfile.open(archive_path, "w:gz") as archive:
        for member, blob in members + members[:1]:
            archive.addfile(member, io.BytesIO(blob))
    with pytest.raises(ValueError, match="holds x/000.png twice"):
        load_dataset({"kind": "folder", "path": str(tmp_path / "tar")}, "test", "target")


def test_the_cache_command_shows_and_clears_the_cache(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["x", "y"], 3, splits=("test",))
    load_dataset({"kind": "folder", "path": str(tmp_path / "data")}, "test", "target")
    code, out, _ = cli("cache")
    assert code == 0 and f"{tmp_path / 'cache'}: 1 cached dataset split(s)" in out
    code, out, _ = cli("cache", "--clear")
    assert code == 0 and "cleared" in out and not list((tmp_path / "cache").glob("*.npy"))


def test_config_data_paths_are_relative_to_the_config_file(tmp_path, tiny_data, cli, monkeypatch):
    """A config that names its data relative to itself runs from any directory; data moved
    elsewhere (the same data: same fingerprints) resumes the run and is read from its new
    place by every worker from then on."""
    import json

    from conftest import tiny_builtin_config

    data = tiny_data()
    (tmp_path / "project" / "configs").mkdir(parents=True)
    config = tiny_builtin_config(tmp_path / "project" / "configs" / "tiny.toml", "../../data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("run", config, "--run-dir", tmp_path / "run", "--quiet")
    assert code == 0, err
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["config"]["trainer"]["params"]["source"]["path"] == str(data / "source")
    data.rename(tmp_path / "moved")
    tiny_builtin_config(config, "../../moved")
    code, _, err = cli("run", config, "--run-dir", tmp_path / "run", "--set", "run.models=12")
    assert code == 0, err  # not "a run of another config"
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["config"]["trainer"]["params"]["source"]["path"] == str(tmp_path / "moved/source")
    assert len(list((tmp_path / "run" / "chunks").glob("*.npz"))) == 3


def test_config_paths_from_the_environment_are_expanded_where_read(tmp_path):
    from transfer_influence.config import load_config

    config = tmp_path / "c.toml"
    config.write_text(
        '[trainer]\ntype = "builtin"\n[trainer.params]\n'
        'source = { kind = "folder", path = "${TI_DATA:-../shared}/source" }\n'
        'targets = [{ name = "t", kind = "folder", path = "/abs/t" }, '
        '{ name = "u", kind = "npz", path = "u.npz" }, '
        '{ name = "h", kind = "huggingface", path = "uoft-cs/cifar10" }, '
        '{ name = "v", kind = "torchvision", dataset = "CIFAR10", root = "tv" }]\n'
    )
    params = load_config(config).trainer.params
    # The variable is expanded where the data is read; the default is the config's own.
    assert params["source"]["path"] == "${TI_DATA:-" + str(tmp_path.parent / "shared") + "}/source"
    paths = [t.get("path", t.get("root")) for t in params["targets"]]
    assert paths == ["/abs/t", str(tmp_path / "u.npz"), "uoft-cs/cifar10", str(tmp_path / "tv")]


def test_a_build_records_a_batch_only_after_its_arrays_are_synced(tmp_path, monkeypatch):
    """The workers write into page-cache memory maps and never wait for the disk; the builder
    syncs every array before the progress file names a batch, so a machine that went down
    cannot leave a record of pixels it lost."""
    from transfer_influence.datasets import cache

    arrays = tuple(tmp_path / f"{name}.npy" for name in ("pixels", "sums"))
    for array in arrays:
        np.save(array, np.zeros((3, 2), np.uint8))
    events, fsync = [], os.fsync
    synced = lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))  # noqa: E731
    monkeypatch.setattr(os, "fsync", lambda fd: (synced(fd), fsync(fd))[1])
    replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(("rename", str(b))), replace(a, b))[1]
    )
    cache.record_progress(tmp_path / "progress.json", arrays, {0}, set(), 3)
    renamed = events.index(("rename", str(tmp_path / "progress.json")))
    assert {("fsync", str(a)) for a in arrays} <= set(events[:renamed]), events
    assert cache.resume_progress(tmp_path / "progress.json", arrays, 3) == ({0}, set())
    assert cache.resume_progress(tmp_path / "progress.json", arrays, 4) == (set(), set())


@pytest.mark.parametrize("size", [100000, 0, True, 2.5])
def test_an_impossible_image_size_is_refused_before_any_decoding(tmp_path, size):
    """size = 100000 used to kill the decoding processes (a traceback of a broken pool)."""
    make_image_folder(tmp_path / "data", ["a", "b"], 2, ("train",), size=8)
    with pytest.raises(ValueError, match="size must be a whole number of pixels from 1 to 1024"):
        load_dataset({"kind": "folder", "path": str(tmp_path / "data"), "size": size}, "train", "")


def test_a_killed_cache_build_resumes_with_what_it_finished(tmp_path, monkeypatch):
    """Decoding streams batches into the cache under construction; a build killed after two
    batches decodes only the others when run again, and ends as a build never killed."""
    from transfer_influence.datasets import cache

    monkeypatch.setattr(cache, "BATCH", 4)  # 15 images: 4 batches
    make_image_folder(tmp_path / "data", ["x", "y", "z"], 5, splits=("train",), as_tar=False)
    source = tmp_path / "data" / "train"

    def build(stem):
        cache.build_cache(source, stem, 8, "fail", lambda name: name.split("/")[0], workers=1)
        return np.load(f"{stem}.npy"), json.loads(Path(f"{stem}.json").read_text())

    fresh_pixels, fresh_meta = build(tmp_path / "fresh" / "data")
    record = cache._record

    def killed(finished, done, *args):
        record(finished, done, *args)
        if len(done) >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "killed" / "data")
    monkeypatch.setattr(cache, "_record", record)
    decoded, batches = [], cache._batches

    def counted(*args):
        for number, batch in batches(*args):
            decoded.append(number)
            yield number, batch

    monkeypatch.setattr(cache, "_batches", counted)
    pixels, meta = build(tmp_path / "killed" / "data")
    assert len(decoded) <= 2 and set(decoded) <= {0, 1, 2, 3}, decoded
    np.testing.assert_array_equal(pixels, fresh_pixels)
    assert meta == fresh_meta
    # The checksum taken batch by batch during the build is the whole file's.
    assert meta["npy_sha256"] == cache.file_sha256(tmp_path / "killed" / "data.npy")
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["data.json", "data.npy"]


def test_two_loads_at_once_build_the_cache_once(tmp_path, monkeypatch):
    """Two workers of one machine starting on the same data: one builds, the other waits and
    reads it; neither sees the other's half-written arrays."""
    from transfer_influence.datasets import cache

    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "data", ["x", "y"], 6, splits=("train",), as_tar=False)
    builds, build = [], cache.build_cache
    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: builds.append(1) or build(*a, **k))
    import transfer_influence.datasets.folder as folder

    monkeypatch.setattr(folder, "build_cache", cache.build_cache)
    spec = {"kind": "folder", "path": str(tmp_path / "data"), "size": 8}
    loaded = []
    threads = [
        threading.Thread(target=lambda: loaded.append(load_dataset(spec, "train", "source")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(loaded) == 2
    assert loaded[0].fingerprint == loaded[1].fingerprint
    np.testing.assert_array_equal(np.array(loaded[0].images), np.array(loaded[1].images))


def test_image_names_are_listed_and_ordered_as_paths_are(tmp_path):
    """The order fixes every image's index in the cache and the fingerprint: one scan of each
    folder must list what pathlib lists (no FIFO, no link into another folder), in its order
    (part by part: "a/b.jpg" before "a-b/c.jpg", which a string sort puts first)."""
    from transfer_influence.datasets.cache import SUFFIXES, image_names

    root = tmp_path / "tree"
    for name in ("a/b.jpg", "a-b/c.jpg", "a/B.PNG", "a.b/x.jpeg", "z/.jpg", "z/notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    os.mkfifo(root / "a" / "pipe.jpg")
    (root / "a" / "link.jpg").symlink_to(root / "a" / "b.jpg")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.jpg").write_bytes(b"x")
    (root / "linked").symlink_to(tmp_path / "outside")
    by_pathlib = [
        p.relative_to(root).as_posix()
        for p in sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    ]
    assert image_names(root) == by_pathlib
    assert image_names(root) == ["a/B.PNG", "a/b.jpg", "a/link.jpg", "a-b/c.jpg", "a.b/x.jpeg"]
