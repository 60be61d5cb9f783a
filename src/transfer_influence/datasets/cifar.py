"""CIFAR-10 and CIFAR-100 in the layout the tool reads, from their authors' binary release.

``transfer-influence data cifar10 cifar100 --to DIR`` downloads ``cifar-10-binary.tar.gz`` and
``cifar-100-binary.tar.gz`` (or takes them from ``--from FOLDER`` where they were downloaded
before), checks their MD5 against the published one, and writes for each

    DIR/cifar10/train.tar.gz, test.tar.gz   <class>/<NNNNN>.png, one folder per class
    DIR/cifar10/classes.json                 the class names in label order
    DIR/cifar100/coarse.json                 fine class -> superclass (CIFAR-100)

The binary release is read as the fixed-length records it is (a label byte or two, then
3,072 bytes of red, green and blue planes); the Python release is pickles, which the tool
never loads. Images are stored losslessly (PNG).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write_bytes

__all__ = ["CIFAR", "CifarRelease", "fetch_cifar"]


@dataclass(frozen=True)
class CifarRelease:
    archive: str
    md5: str
    folder: str
    train: tuple[str, ...]
    test: str
    label_bytes: int  # CIFAR-100 records carry the coarse label, then the fine one
    names: str
    coarse_names: str = ""


CIFAR = {
    "cifar10": CifarRelease(
        "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1,
        "batches.meta.txt",
    ),
    "cifar100": CifarRelease(
        "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
        ("train.bin",), "test.bin", 2, "fine_label_names.txt", "coarse_label_names.txt",
    ),
}  # fmt: skip
BASE_URL = "https://www.cs.toronto.edu/~kriz/"
RECORD = 32 * 32 * 3


def fetch_cifar(
    name: str, to: str | Path, source: str | Path | None = None, progress: bool = True
) -> Path:
    """Write ``name`` ("cifar10" or "cifar100") under ``to``; the archive is read from the
    folder (or file) ``source`` when given, else downloaded. Returns the dataset's folder."""
    if name not in CIFAR:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(CIFAR)}")
    release = CIFAR[name]
    out = Path(to) / name
    if (out / "classes.json").is_file():
        return out  # written before: classes.json is written last
    with tempfile.TemporaryDirectory() as scratch:
        archive = _archive(release, source, Path(scratch), progress)
        splits, names, coarse = _read_release(archive, release)
    out.mkdir(parents=True, exist_ok=True)
    for split, (labels, images, _) in splits.items():
        atomic_write_bytes(out / f"{split}.tar.gz", _image_tarball(names, labels, images))
    if coarse:
        _, (labels, _, coarse_labels) = next(iter(splits.items()))
        mapping = {names[f]: coarse[c] for f, c in zip(labels, coarse_labels, strict=True)}
        atomic_write_bytes(out / "coarse.json", json.dumps(mapping, indent=1).encode())
    atomic_write_bytes(out / "classes.json", json.dumps(names).encode())
    return out


def _archive(release: CifarRelease, source, scratch: Path, progress: bool) -> Path:
    """The release's archive, its MD5 checked: from ``source`` or downloaded."""
    if source is not None:
        path = Path(source)
        path = path / release.archive if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"{path} not found (download {BASE_URL}{release.archive} there)")
    else:
        path = scratch / release.archive
        _download(BASE_URL + release.archive, path, progress)
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != release.md5:
        raise ValueError(
            f"{path} is not the published {release.archive} (MD5 {digest.hexdigest()}, "
            f"expected {release.md5}); download it again"
        )
    return path


def _download(url: str, path: Path, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name,
                      disable=not progress, leave=False) as bar:  # fmt: skip
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as error:  # URLError and timeouts are OSErrors
        reason = getattr(error, "reason", error)
        raise ValueError(
            f"cannot download {url}: {reason} (no network? download it elsewhere and pass "
            "--from FOLDER)"
        ) from None


def _read_release(archive: Path, release: CifarRelease):
    """{split: (labels, images N x 32 x 32 x 3, coarse labels)}, class names, superclasses."""
    members: dict[str, bytes] = {}
    wanted = {*release.train, release.test, release.names, release.coarse_names} - {""}
    with tarfile.open(archive) as tar:
        for member in tar:
            base = Path(member.name).name
            if (
                member.isfile()
                and base in wanted
                and Path(member.name).parent.name == release.folder
            ):
                handle = tar.extractfile(member)
                members[base] = handle.read() if handle else b""
    missing = sorted(wanted - set(members))
    if missing:
        raise ValueError(f"{archive} holds no {release.folder}/{missing[0]}")

    def lines(name: str) -> list[str]:
        return [line.strip() for line in members[name].decode().splitlines() if line.strip()]

    names = lines(release.names)
    coarse = lines(release.coarse_names) if release.coarse_names else []
    splits = {}
    for split, files in (("train", release.train), ("test", (release.test,))):
        raw = b"".join(members[f] for f in files)
        width = release.label_bytes + RECORD
        if len(raw) % width:
            raise ValueError(f"{archive}: {split} records are not {width} bytes each")
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
        labels = records[:, release.label_bytes - 1].astype(np.int64)
        coarse_labels = records[:, 0].astype(np.int64) if release.label_bytes == 2 else labels
        images = records[:, release.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        if labels.max() >= len(names):
            raise ValueError(f"{archive}: a label beyond the {len(names)} class names")
        splits[split] = (labels, images, coarse_labels)
    return splits, names, coarse


def _image_tarball(names: list[str], labels: np.ndarray, images: np.ndarray) -> bytes:
    """A gzipped tarball of ``<class>/<NNNNN>.png``, numbered within each class in record
    order; written with fixed metadata, so the same images give the same bytes."""
    buffer = io.BytesIO()
    counters = [0] * len(names)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for label, image in zip(labels.tolist(), images, strict=True):
            png = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(image)).save(png, "PNG")
            info = tarfile.TarInfo(f"{names[label]}/{counters[label]:05d}.png")
            info.size, info.mtime, info.mode = png.tell(), 0, 0o644
            png.seek(0)
            tar.addfile(info, png)
            counters[label] += 1
    return gzip.compress(buffer.getvalue(), mtime=0)
