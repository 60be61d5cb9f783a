"""Building the dataset cache from an ImageNet-layout tree: peak memory and decode throughput.

    python benchmarks/cache_build.py [--images 100000] [--classes 1000] [--side 400] [--size 64]

Generates ``train/<wnid>/<wnid>_<i>.JPEG`` (smooth random pictures of side x 3/4 side, as
large as ImageNet's typical image; written once, reused), then measures, ``--repeats`` times
in turn (a shared machine's speed drifts; medians are reported):

- one process's rate at a build's work per image (read, SHA-256, decode and fit to ``size``,
  store) on a sample spread over the tree, and its rate at decoding alone;
- the cache build with every core: images per second, and that rate against cores x the one
  process's rate (the goal is >= 80%);
- peak resident memory of the building process and of its largest worker (goal <= 1 GB);
- the build's serial part alone (listing the tree), which bounds its efficiency on many
  cores (the cache's checksum is taken batch by batch while the workers decode).

Writes benchmarks/results/cache_build-*.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import save_result
from transfer_influence.datasets.cache import build_cache, list_members
from transfer_influence.datasets.images import decode


def make_tree(root: Path, images: int, classes: int, side: int) -> Path:
    """An ILSVRC-style train folder of smooth pictures with noise, so that JPEG sizes are like
    photographs'. 256 distinct pictures are encoded and written in turn: decoding costs the
    same whatever the picture, and the tree is made in a minute rather than an hour."""
    train = root / "train"
    marker = root / f"made-{images}-{classes}-{side}"
    if marker.exists():
        return train
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    height = side * 3 // 4
    yy, xx = np.mgrid[0:height, 0:side].astype(np.float32)
    blobs = []
    for _ in range(256):
        a, b, c = rng.uniform(0.005, 0.05, 3)
        picture = np.stack(
            [np.sin(a * xx + b * yy + k) * 100 + 128 for k in (0.0, 2.0, 4.0)], axis=-1
        )
        picture += rng.normal(0, 8, picture.shape).astype(np.float32) * c * 20
        buffer = io.BytesIO()
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    for i in range(images):
        wnid = f"n{1440764 + i % classes:08d}"
        folder = train / wnid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{wnid}_{i}.JPEG").write_bytes(blobs[i % len(blobs)])
    marker.touch()
    return train


def one_process_rates(train: Path, size: int, sample: int = 5000) -> tuple[float, float]:
    """Images per second of one process doing a build worker's work per image (read, SHA-256,
    decode, store), and of decoding alone (the files already read), on every 19th image (a
    step prime to the 256 pictures, so that all of them are decoded)."""
    paths = [train / name for name in list_members(train)[::19][:sample]]
    pixels = np.zeros((size, size, 3), np.uint8)
    started = time.perf_counter()
    for path in paths:
        blob = path.read_bytes()
        hashlib.sha256(blob).digest()
        pixels[...] = decode(blob, size)
    whole = len(paths) / (time.perf_counter() - started)
    blobs = [path.read_bytes() for path in paths[:1000]]
    started = time.perf_counter()
    for blob in blobs:
        pixels[...] = decode(blob, size)
    return whole, len(blobs) / (time.perf_counter() - started)


def build_seconds(train: Path, size: int) -> tuple[float, int]:
    """Seconds to build the cache with every core, and the cache's size in bytes."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        build_cache(train, Path(cache) / "tree", size, "fail", lambda n: n.split("/")[0])
        return time.perf_counter() - started, (Path(cache) / "tree.npy").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--side", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", default=os.path.join(tempfile.gettempdir(), "ti-imagenet-tree"))
    args = parser.parse_args()
    started = time.perf_counter()
    train = make_tree(Path(args.tree), args.images, args.classes, args.side)
    made = time.perf_counter() - started
    cores = os.cpu_count() or 1
    passes = []
    for _ in range(args.repeats):
        whole, decoding = one_process_rates(train, args.size)
        seconds, cached = build_seconds(train, args.size)
        passes.append(
            {
                "one_process_images_per_s": round(whole, 1),
                "decode_only_images_per_s": round(decoding, 1),
                "build_seconds": round(seconds, 1),
                "efficiency": round(args.images / seconds / (cores * whole), 3),
            }
        )
    single = float(np.median([p["one_process_images_per_s"] for p in passes]))
    decoding = float(np.median([p["decode_only_images_per_s"] for p in passes]))
    seconds = float(np.median([p["build_seconds"] for p in passes]))
    # The build's serial part, measured alone: listing the tree.
    started = time.perf_counter()
    list_members(train)
    listing = time.perf_counter() - started
    rate = args.images / seconds
    result = {
        "images": args.images,
        "classes": args.classes,
        "jpeg_side": [args.side, args.side * 3 // 4],
        "size": args.size,
        "tree_seconds": round(made, 1),
        "cores": cores,
        "repeats": args.repeats,
        "one_process_images_per_s": round(single, 1),
        "one_process_decode_only_images_per_s": round(decoding, 1),
        "build_seconds": round(seconds, 1),
        "build_images_per_s": round(rate, 1),
        # Each pass's build against the one-process rate measured just before it: the median.
        "efficiency_vs_cores_x_one_process": float(np.median([p["efficiency"] for p in passes])),
        "serial_listing_seconds": round(listing, 1),
        "decode_phase_efficiency": float(
            np.median(
                [
                    args.images
                    / (p["build_seconds"] - listing)
                    / (cores * p["one_process_images_per_s"])
                    for p in passes
                ]
            ).round(3)
        ),
        "efficiency_per_pass": [p["efficiency"] for p in passes],
        "passes": passes,
        "cache_bytes": cached,
        # ru_maxrss is in KiB on Linux: the builder, and the largest of its worker processes.
        "peak_rss_builder_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_largest_worker_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ),
    }
    print(result)
    print(save_result("cache_build", result))


if __name__ == "__main__":
    main()
