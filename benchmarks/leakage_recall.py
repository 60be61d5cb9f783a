"""Does the leakage finder find planted copies of target images, and not their look-alikes?

A planted run on real outputs: the 149 real subset models of the reference case
(``../shared/fixtures``) and the real images (``../shared/datasets``). One source class L gets
``--copies`` CIFAR-10 test images, each re-encoded as JPEG (quality 50-90), cropped by 1-4
pixels and resized back, and colour-shifted (per-channel gain 0.8-1.2, offset +-20) — plus
``--decoys`` look-alikes that are not copies: for other test images, their most similar CIFAR-10
*training* image by thumbnail correlation that is not itself a near-duplicate (correlation
below 0.97), with the
same transformations. Training on a copy helps the model on that very image, so the outputs of
the models whose subset holds L are raised on each copied image, on the logit scale by an
effect drawn from ``--effect`` (the decoys get none: they are different photos). Nothing else
about the outputs changes.

Scored against the planted pairs (L, copied image): recall and false-discovery rate of
``find_leakage`` (influence AND pixels), and of a plain duplicate search (pixels alone, all
test images against class L) at the same similarity threshold. The thresholds (the library's
defaults, z >= 4 and similarity >= 0.75) were chosen on seeds 1-3; seeds 11-15 are reported.

    python benchmarks/leakage_recall.py [--seeds 5] [--copies 50] [--decoys 50]
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save_result  # noqa: E402
from transfer_influence import estimate_influence  # noqa: E402
from transfer_influence.analyses.leakage import (  # noqa: E402
    duplicate_search,
    find_leakage,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURE = SHARED / "fixtures" / "cifar100-to-cifar10-149-models.npz"
DECOY_CEILING = 0.97


@dataclass
class PlantedRun:
    masks: np.ndarray  # m x K
    outputs: np.ndarray  # m x n p_correct with the planted effects
    source_images: np.ndarray  # N' x 32 x 32 x 3, the real source plus copies and decoys
    source_groups: np.ndarray  # N'
    leak_class: int
    copied: np.ndarray  # target examples with a copy in leak_class
    decoy_of: np.ndarray  # target examples that have a look-alike (not a copy) in leak_class


def lookalike_signatures(images: np.ndarray) -> torch.Tensor:
    """How alike two images look at a glance: correlation of 16 x 16 thumbnails, each channel
    standardised. Independent of the finder's own signature, so decoys are not chosen to
    suit it."""
    pixels = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
    flat = F.interpolate(pixels, size=(16, 16), mode="bilinear", antialias=True).flatten(2)
    flat = (flat - flat.mean(dim=2, keepdim=True)) / (flat.std(dim=2, keepdim=True) + 1e-3)
    return F.normalize(flat.flatten(1), dim=1)


def disguise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop 1-4 pixels and resize back, shift colours per channel, re-encode as JPEG."""
    side = image.shape[0]
    cut = int(rng.integers(1, 5))
    top, left = (int(v) for v in rng.integers(0, cut + 1, size=2))
    picture = Image.fromarray(image).crop((left, top, left + side - cut, top + side - cut))
    pixels = np.asarray(picture.resize((side, side), Image.BICUBIC), dtype=np.float32)
    pixels = pixels * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=int(rng.integers(50, 91))
    )
    return np.asarray(Image.open(buffer).convert("RGB"))


def plant(
    masks: np.ndarray,
    p_correct: np.ndarray,
    source_images: np.ndarray,
    source_labels: np.ndarray,
    target_images: np.ndarray,
    lookalike_pool: np.ndarray,
    seed: int,
    copies: int = 50,
    decoys: int = 50,
    effect: tuple[float, float] = (1.0, 3.0),
) -> PlantedRun:
    """Plant copies and look-alike decoys of target images into one source class."""
    rng = np.random.default_rng(seed)
    leak_class = int(rng.integers(masks.shape[1]))
    chosen = rng.choice(len(target_images), copies + decoys, replace=False)
    copied, decoy_of = np.sort(chosen[:copies]), np.sort(chosen[copies:])
    # Each decoy: the pool image that looks most alike, unless it is a near-duplicate itself.
    similarity = (
        lookalike_signatures(target_images[decoy_of]) @ lookalike_signatures(lookalike_pool).T
    )
    similarity[similarity >= DECOY_CEILING] = -2.0
    index = similarity.argmax(dim=1).numpy()
    planted = [disguise(target_images[j], rng) for j in copied]
    planted += [disguise(lookalike_pool[i], rng) for i in index]
    outputs = p_correct.astype(np.float64).copy()
    logit = np.log(np.clip(outputs, 1e-6, 1 - 1e-6) / np.clip(1 - outputs, 1e-6, 1))
    lift = rng.uniform(*effect, size=copies)
    holders = masks[:, leak_class]
    raised = logit[np.ix_(holders, copied)] + lift
    outputs[np.ix_(holders, copied)] = 1.0 / (1.0 + np.exp(-raised))
    return PlantedRun(
        masks,
        outputs.astype(np.float32),
        np.concatenate([source_images, np.stack(planted)]),
        np.concatenate([source_labels, np.full(len(planted), leak_class)]),
        leak_class,
        copied,
        decoy_of,
    )


def score(run: PlantedRun, target_images: np.ndarray, estimator: str = "difference") -> dict:
    """Recall and false-discovery rate of find_leakage and of a plain duplicate search."""
    estimate = estimate_influence(run.masks, run.outputs, estimator=estimator)
    found = find_leakage(
        estimate.per_example.values, target_images, run.source_images, run.source_groups
    )
    leaks = found[found["leak"]]
    truth = {(run.leak_class, int(j)) for j in run.copied}
    hits = {(int(k), int(j)) for k, j in zip(leaks["group"], leaks["example"], strict=True)}
    in_class = np.flatnonzero(run.source_groups == run.leak_class)
    plain = duplicate_search(target_images, run.source_images[in_class])
    plain_hits = {(run.leak_class, int(j)) for j in plain["example"]}
    return {
        "estimator": estimate.estimator,
        "leak_class": run.leak_class,
        "candidates": int(len(found)),
        "recall": len(hits & truth) / len(truth),
        "false_discovery_rate": len(hits - truth) / max(1, len(hits)),
        "flagged": len(hits),
        "plain_recall": len(plain_hits & truth) / len(truth),
        "plain_false_discovery_rate": len(plain_hits - truth) / max(1, len(plain_hits)),
        "plain_flagged": len(plain_hits),
        "plain_decoys_flagged": int(np.isin(plain["example"], run.decoy_of).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--decoys", type=int, default=50)
    args = parser.parse_args()
    if not FIXTURE.is_file():
        raise SystemExit(f"needs the fixture and datasets in {SHARED}")
    from transfer_influence.datasets import load_dataset

    fixture = np.load(FIXTURE, allow_pickle=False)
    source = {"kind": "folder", "path": str(SHARED / "datasets/cifar100")}
    source = load_dataset(source, "train", "")
    target = {"kind": "folder", "path": str(SHARED / "datasets/cifar10")}
    test, train = load_dataset(target, "test", ""), load_dataset(target, "train", "")
    rows = []
    for seed in range(11, 11 + args.seeds):
        run = plant(
            fixture["masks"], fixture["p_correct"], source.images, source.labels,
            test.images, train.images, seed, args.copies, args.decoys,
        )  # fmt: skip
        rows.append({"seed": seed, **score(run, test.images)})
        print(rows[-1])
    summary = {
        key: float(np.mean([r[key] for r in rows]))
        for key in ("recall", "false_discovery_rate", "plain_recall", "plain_false_discovery_rate")
    }
    print("mean", summary)
    path = save_result(
        "leakage_recall",
        {"copies": args.copies, "decoys": args.decoys, "seeds": rows, "mean": summary},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
