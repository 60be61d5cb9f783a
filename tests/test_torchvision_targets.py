"""The torchvision adapter opens each of the paper's targets the way its class takes a split.

torchvision cannot be installed beside the CPU torch wheel here, so each class is a stand-in
with the exact constructor signature of torchvision 0.29 (checked against the real classes
where torchvision imports); the stand-ins refuse a split their class refuses and hand out PIL
images of mixed sizes, as the real ones do."""

import inspect
import json
import re
import sys
import types

import numpy as np
import pytest
from PIL import Image

from transfer_influence.datasets import (
    DatasetSurvey,
    fingerprint_arrays,
    load_dataset,
    survey_dataset,
)
from transfer_influence.datasets.external import SPLITS

# torchvision 0.29's signatures (less transforms and loaders, which the adapter never passes),
# and the splits each class accepts.
SIGNATURES = {
    "CIFAR10": ("root, train=True, transform=None, target_transform=None, download=False", None),
    "CIFAR100": ("root, train=True, transform=None, target_transform=None, download=False", None),
    "Flowers102": ("root, split='train', transform=None, target_transform=None, download=False",
                   ("train", "val", "test")),
    "Food101": ("root, split='train', transform=None, target_transform=None, download=False",
                ("train", "test")),
    "OxfordIIITPet": ("root, split='trainval', target_types='category', transforms=None, "
                      "transform=None, target_transform=None, download=False",
                      ("trainval", "test")),
    "StanfordCars": ("root, split='train', transform=None, target_transform=None, "
                     "download=False", ("train", "test")),
    "FGVCAircraft": ("root, split='trainval', annotation_level='variant', transform=None, "
                     "target_transform=None, download=False", ("train", "val", "trainval", "test")),
    "SUN397": ("root, transform=None, target_transform=None, download=False", None),
    "Caltech101": ("root, target_type='category', transform=None, target_transform=None, "
                   "download=False", None),
    "Caltech256": ("root, transform=None, target_transform=None, download=False", None),
}  # fmt: skip


def _stand_in(name: str, calls: list) -> type:
    """A class with ``name``'s signature that records how it was called."""
    text, accepted = SIGNATURES[name]
    namespace: dict = {}
    exec(f"def __init__(self, {text}):\n    self._opened(locals())", namespace)

    def opened(self, arguments):
        arguments = {k: v for k, v in arguments.items() if k != "self"}
        calls.append(arguments)
        assert arguments["download"] is False  # never downloads at run time
        split = arguments.get("split")
        if accepted is not None and split not in accepted:
            raise ValueError(f"Unknown value '{split}' for argument split.")
        rng = np.random.default_rng(len(calls))
        n = 10
        self.labels = [i % 3 for i in range(n)]
        self.pictures = [  # mixed sizes and modes, as Caltech's greyscale images
            Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 30, 3), dtype=np.uint8)).convert(
                "L" if i % 4 == 0 else "RGB"
            )
            for i in range(n)
        ]

    def getitem(self, index):
        return self.pictures[index], self.labels[index]

    attributes = {"__init__": namespace["__init__"], "_opened": opened,
                  "__getitem__": getitem, "__len__": lambda self: len(self.labels)}  # fmt: skip
    attributes["categories" if name.startswith("Caltech") else "classes"] = ["a", "b", "c"]
    return type(name, (), attributes)


@pytest.fixture
def torchvision(monkeypatch, tmp_path):
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    calls: list = []
    module = types.ModuleType("torchvision.datasets")
    for name in SIGNATURES:
        setattr(module, name, _stand_in(name, calls))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)
    return calls


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_each_target_is_opened_as_its_class_takes_a_split(torchvision, name, tmp_path):
    spec = {"kind": "torchvision", "dataset": name, "root": str(tmp_path), "size": 16}
    train, test = (load_dataset(spec, split, "target") for split in ("train", "test"))
    first, second = torchvision[-2:]
    _, accepted = SIGNATURES[name]
    if name.startswith("CIFAR"):
        assert (first["train"], second["train"]) == (True, False)
    elif accepted is not None:  # "train+val": both splits, joined
        head, outputs = SPLITS[name]
        assert [call["split"] for call in torchvision] == [*head.split("+"), outputs]
        assert len(train) == 10 * len(head.split("+")) and len(test) == 10
        assert len(set(train.example_ids)) == len(train)
    else:  # one set, split here at random: disjoint, together the whole set
        assert "split" not in first and "train" not in first
        ids = set(train.example_ids) | set(test.example_ids)
        assert len(ids) == len(train) + len(test) == 10 and len(test) == 2
        assert all(i.startswith("all/") for i in ids)
    for data in (train, test):
        assert data.images.shape[1:] == (16, 16, 3) and data.class_names == ("a", "b", "c")


def test_a_split_the_class_refuses_or_mixed_sizes_are_one_line(torchvision, tmp_path):
    spec = {"kind": "torchvision", "dataset": "Food101", "root": str(tmp_path)}
    with pytest.raises(ValueError, match="images have different sizes .* set size = N"):
        load_dataset(spec, "train", "target")
    with pytest.raises(ValueError, match="Unknown value 'val'.*give splits = \\[TRAIN, TEST\\]"):
        load_dataset(dict(spec, size=8, splits=["train", "val"]), "test", "target")
    with pytest.raises(ValueError, match="has no 'Food102'"):
        load_dataset(dict(spec, dataset="Food102"), "test", "target")


def test_the_stand_ins_have_torchvisions_own_signatures():
    why = "torchvision does not import beside this torch"
    datasets = pytest.importorskip("torchvision.datasets", exc_type=Exception, reason=why)
    for name, (text, _) in SIGNATURES.items():
        real = inspect.signature(getattr(datasets, name)).parameters
        wanted = [p.strip().split("=")[0] for p in text.split(",")]
        assert [p for p in real if p not in ("loader",)] == wanted, name


class _Numbered:
    """A dataset of 10 images, image i all of value 20 i, that fails at ``fail_at``."""

    def __init__(self, fail_at=None):
        self.fail_at = fail_at

    def __len__(self):
        return 10

    def __getitem__(self, index):
        if index == self.fail_at:
            raise OSError("truncated file")
        return Image.new("RGB", (12, 9), (20 * index, 0, 0)), index % 3


def test_files_are_decoded_once_into_the_cache(torchvision, tmp_path):
    spec = {"kind": "torchvision", "dataset": "Food101", "root": str(tmp_path), "size": 8}
    sun = {**spec, "dataset": "SUN397", "size": None}  # one set, split here; sizes vary
    survey = survey_dataset(sun, "train", "target")  # sized by its first image's header
    assert survey.count == 8 and survey.side in {(20 + 3 * i, 30) for i in range(10)}
    assert survey_dataset(spec, "train", "target") == DatasetSurvey(10, (8, 8), decoded=False)
    assert not (tmp_path / "cache").exists()  # counted, not decoded
    first = load_dataset(spec, "train", "target")
    assert survey_dataset(spec, "train", "target") == DatasetSurvey(10, (8, 8), decoded=True)
    opened = len(torchvision)
    again = load_dataset(spec, "train", "target")  # its images, decoded anew, would differ
    np.testing.assert_array_equal(first.images, again.images)
    assert isinstance(again.images, np.memmap) and again.fingerprint == first.fingerprint
    # The fingerprint of the images held in memory: runs made before the cache stay valid.
    assert first.fingerprint == fingerprint_arrays(
        np.array(first.images), first.labels, first.example_ids
    )
    assert again.labels.tolist() == [i % 3 for i in range(10)]
    assert len(torchvision) == opened + 1  # opened to list its images, not decoded again


def test_a_killed_build_resumes_with_the_batches_it_finished(tmp_path, monkeypatch, capfd):
    import functools

    from transfer_influence.datasets import indexed

    monkeypatch.setattr(indexed, "BATCH", 3)
    indices, ids = np.arange(10), [f"all/{i}" for i in range(10)]
    built = {}
    for name, fail_at in (("whole", None), ("killed", 7), ("killed", None)):
        stem = tmp_path / name
        opener = functools.partial(_Numbered, fail_at)
        build = functools.partial(indexed.build_indexed_cache, stem, "numbered", opener(),
                                  opener, indices, ids, None, 4, workers=1)  # fmt: skip
        if fail_at is not None:
            with pytest.raises(ValueError, match="image 7 cannot be read \\(truncated file\\)"):
                build()
            assert not stem.with_suffix(".npy").exists()
            continue
        build()
        built[name] = (np.load(stem.with_suffix(".npy")), stem.with_suffix(".json").read_text())
    # Batches 0-2 and 3-5 kept, and 9 too when the worker finished it before the failure of
    # 6-8 was seen; never 6-8 itself.
    assert re.search(r"\((6|7) done before", capfd.readouterr().err)
    np.testing.assert_array_equal(built["whole"][0], built["killed"][0])
    assert built["whole"][1] == built["killed"][1]  # the same labels, ids and fingerprint
    assert built["whole"][0][:, 0, 0, 0].tolist() == [20 * i for i in range(10)]


def test_unreadable_images_are_left_out_with_skip_and_said_on_every_load(torchvision, tmp_path):
    import functools

    from transfer_influence.datasets import indexed
    from transfer_influence.datasets.cache import file_sha256
    from transfer_influence.datasets.folder import warn_skipped

    indices, ids = np.arange(10), [f"all/{i}" for i in range(10)]
    opener = functools.partial(_Numbered, 7)
    stem = tmp_path / "numbered"
    with pytest.raises(ValueError, match='image 7 cannot be read .*on_corrupt = "skip"'):
        indexed.build_indexed_cache(stem, "numbered", opener(), opener, indices, ids, None, 4,
                                    workers=1)  # fmt: skip
    indexed.build_indexed_cache(stem, "numbered", opener(), opener, indices, ids, None, 4, "skip",
                                workers=1)  # fmt: skip
    meta = json.loads(stem.with_suffix(".json").read_text())
    pixels = np.load(stem.with_suffix(".npy"))
    kept = [i for i in range(10) if i != 7]
    assert meta["skipped"] == ["all/7"] and meta["ids"] == [f"all/{i}" for i in kept]
    assert pixels[:, 0, 0, 0].tolist() == [20 * i for i in kept]
    assert meta["labels"] == [i % 3 for i in kept]
    assert meta["npy_sha256"] == file_sha256(stem.with_suffix(".npy"))
    labels = np.array(meta["labels"], dtype=np.int64)
    assert meta["fingerprint"] == fingerprint_arrays(pixels, labels, np.array(meta["ids"]))
    with pytest.warns(UserWarning, match="numbered: left out 1 corrupt image.*all/7"):
        warn_skipped("numbered", meta)
    spec = {"kind": "torchvision", "dataset": "Food101", "root": str(tmp_path)}
    with pytest.raises(ValueError, match="on_corrupt must be 'fail' or 'skip'"):
        load_dataset(dict(spec, on_corrupt="ignore"), "train", "target")
    spec.update(size=8, on_corrupt="skip")  # the table's key reaches the load and the survey
    loaded = load_dataset(spec, "train", "target")
    assert survey_dataset(spec, "train", "target").count == len(loaded) == 10
