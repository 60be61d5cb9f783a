"""`transfer-influence data`: CIFAR from the authors' binary release, offline. A generated
release in the exact record layout is served from a loopback web server (the download path)
or read from a folder (--from); the result is read back by the folder dataset."""

import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

from transfer_influence.datasets import cifar, load_dataset


def _release(name, per_class=2):
    """A small archive laid out as the real one, its records in the real byte order."""
    release = cifar.CIFAR[name]
    rng = np.random.default_rng(0)
    classes = 3
    names = [f"class_{k}" for k in range(classes)]
    files = {}
    for part in (*release.train, release.test):
        labels = np.repeat(np.arange(classes), per_class)
        planes = rng.integers(0, 255, (labels.size, 3, 32, 32), dtype=np.uint8)
        head = [labels % 2, labels] if release.label_bytes == 2 else [labels]  # coarse, fine
        records = np.concatenate(
            [np.stack(head, 1).astype(np.uint8), planes.reshape(labels.size, -1)], axis=1
        )
        files[part] = records.tobytes()
    files[release.names] = ("\n".join(names) + "\n").encode()
    if release.coarse_names:
        files[release.coarse_names] = b"even\nodd\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name_, data in files.items():
            info = tarfile.TarInfo(f"{release.folder}/{name_}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), files


@pytest.fixture
def releases(monkeypatch, tmp_path):
    """Both releases on disk, the published MD5s replaced by theirs."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    made = {}
    for name, release in cifar.CIFAR.items():
        archive, files = _release(name)
        (folder / release.archive).write_bytes(archive)
        md5 = hashlib.md5(archive, usedforsecurity=False).hexdigest()
        monkeypatch.setitem(cifar.CIFAR, name, cifar.CifarRelease(
            **{**release.__dict__, "md5": md5}))  # fmt: skip
        made[name] = files
    monkeypatch.setenv("TRANSFER_INFLUENCE_CACHE", str(tmp_path / "cache"))
    return folder, made


def test_data_from_a_loopback_server_is_read_back_as_the_records_held(releases, tmp_path, cli,
                                                                       monkeypatch):  # fmt: skip
    folder, made = releases
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(cifar, "BASE_URL", f"http://127.0.0.1:{server.server_port}/")
    try:
        code, out, err = cli("data", "cifar10", "cifar100", "--to", tmp_path / "data", "--quiet")
    finally:
        server.shutdown()
    assert code == 0, err
    assert 'kind = "folder"' in out
    test = load_dataset({"kind": "folder", "path": str(tmp_path / "data" / "cifar10")}, "test",
                        "target")  # fmt: skip
    records = np.frombuffer(made["cifar10"]["test_batch.bin"], np.uint8).reshape(-1, 3073)
    assert test.class_names == ("class_0", "class_1", "class_2") and len(test) == 6
    first = records[0, 1:].reshape(3, 32, 32).transpose(1, 2, 0)  # red, green, blue planes
    np.testing.assert_array_equal(test.images[0], first)  # lossless
    coarse = (tmp_path / "data" / "cifar100" / "coarse.json").read_text()
    assert '"class_1": "odd"' in coarse


def test_data_from_a_folder_and_its_one_line_errors(releases, tmp_path, cli, monkeypatch):
    folder, _ = releases
    code, out, err = cli("data", "cifar100", "--to", tmp_path / "d", "--from", folder, "--quiet")
    assert code == 0, err
    train = load_dataset({"kind": "folder", "path": str(tmp_path / "d" / "cifar100")}, "train",
                         "source")  # fmt: skip
    assert len(train) == 6
    (folder / "cifar-10-binary.tar.gz").write_bytes(b"damaged")
    code, _, err = cli("data", "cifar10", "--to", tmp_path / "e", "--from", folder)
    assert code == 2 and "is not the published cifar-10-binary.tar.gz" in err
    assert "Traceback" not in err
    monkeypatch.setattr(cifar, "BASE_URL", "http://127.0.0.1:9/")  # nothing listens there
    code, _, err = cli("data", "cifar10", "--to", tmp_path / "f")
    assert code == 2 and "cannot download" in err and "--from FOLDER" in err
