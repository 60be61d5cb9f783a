"""Feature clusters of CIFAR-100 (the reference source) from one pretrained model, against an
untrained backbone of the same shape: how closely clusters follow the 100 classes and the 20
superclasses, and what it costs.

    python benchmarks/feature_clusters.py [--widths 32,64,128] [--epochs 4] [--clusters 100,20]

Reads ../shared/datasets/cifar100 (train split and coarse.json); writes
benchmarks/results/feature_clusters-*.json. Purity: share of a cluster's images in its most
common class (or superclass); ARI: adjusted Rand index of the clusters against the labels
(0 for chance, 1 for the same partition).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from _common import save_result
from transfer_influence.clustering import FeatureClusters
from transfer_influence.datasets.folder import load_folder
from transfer_influence.trainers.builtin import pretrained_features, resolve_device
from transfer_influence.trainers.networks import build_network
from transfer_influence.trainers.stack import Recipe, extract_features

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar100"


def _untrained(source, recipe: Recipe, device: torch.device) -> np.ndarray:
    net = build_network([0], recipe, len(source.class_names), source.images.shape[1], device)
    images = torch.from_numpy(np.array(source.images)).to(device)
    return extract_features(net, images)[0].cpu().numpy()


def _measure(features, source, coarse_labels, k: int) -> dict:
    started = time.perf_counter()
    clusters = FeatureClusters(k).fit(features, source.labels, source.names)
    superclass_purity = [
        np.bincount(coarse_labels[clusters.labels_ == c]).max() / np.sum(clusters.labels_ == c)
        for c in range(k)
    ]
    return {
        "clusters": k,
        "kmeans_seconds": round(time.perf_counter() - started, 1),
        "median_class_purity": round(float(clusters.clusters_["purity"].median()), 3),
        "median_superclass_purity": round(float(np.median(superclass_purity)), 3),
        "ari_classes": round(adjusted_rand_score(source.labels, clusters.labels_), 3),
        "ari_superclasses": round(adjusted_rand_score(coarse_labels, clusters.labels_), 3),
        "largest_clusters": clusters.clusters_.head(5).to_dict("records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--clusters", default="100,20")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the reference data at {SHARED}")
    source = load_folder(str(SHARED), "train")
    coarse = json.loads((SHARED / "coarse.json").read_text())
    superclasses = sorted(set(coarse.values()))
    coarse_labels = np.array([superclasses.index(coarse[c]) for c in source.class_names])
    coarse_labels = coarse_labels[source.labels]
    recipe = Recipe(widths=tuple(int(w) for w in args.widths.split(",")), epochs=args.epochs)
    device = resolve_device()
    started = time.perf_counter()
    trained = pretrained_features(source, recipe, seed=0, device=device)
    pretrain_seconds = time.perf_counter() - started
    untrained = _untrained(source, recipe, device)
    ks = [int(k) for k in args.clusters.split(",")]
    result = {
        "images": len(source),
        "recipe": {"widths": list(recipe.widths), "epochs": recipe.epochs},
        "pretrain_and_features_seconds": round(pretrain_seconds, 1),
        "trained": [_measure(trained, source, coarse_labels, k) for k in ks],
        "untrained": [_measure(untrained, source, coarse_labels, k) for k in ks],
    }
    path = save_result("feature_clusters", result, str(device))
    for name in ("trained", "untrained"):
        for row in result[name]:
            print(
                f"{name:>9} k={row['clusters']:<4} class purity {row['median_class_purity']:.0%}"
                f"  superclass purity {row['median_superclass_purity']:.0%}"
                f"  ARI classes {row['ari_classes']:.2f}"
                f"  superclasses {row['ari_superclasses']:.2f}"
            )
    print(f"pretraining + features: {pretrain_seconds:.0f} s; {path}")


if __name__ == "__main__":
    main()
