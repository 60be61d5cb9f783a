"""Feature clusters of the source images, to use as groups.

Class labels are one way to cut the source data; a trained model's features give others that
no label names — a kind of background, a photographic style, near-duplicates spread over
classes. Cluster the images by their features, and the clusters become the groups that masks
range over, with the same estimators and the same confidence as classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["FeatureClusters"]


class FeatureClusters:
    """k-means clusters of source images by the direction of their features (cosine).

    Parameters
    ----------
    n_clusters:
        How many groups to make.
    seed:
        Seed of the k-means initialisations.
    n_init:
        k-means restarts; the one with the lowest within-cluster spread is kept.

    Attributes (after ``fit``)
    --------------------------
    labels_:
        Cluster of every image (0 is the largest cluster).
    names_:
        A name per cluster: its number and its most common class(es), e.g. ``c07 oak_tree``.
    clusters_:
        One row per cluster: ``group, images, purity`` (share of its most common class) and
        ``classes`` (its three most common classes with their shares).
    """

    def __init__(self, n_clusters: int = 50, seed: int = 0, n_init: int = 4) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.n_init = n_init

    def fit(
        self, features: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
    ) -> FeatureClusters:
        """Cluster ``features`` (N x D, one row per image); ``labels`` are the images' classes,
        used only to name and describe the clusters."""
        from sklearn.cluster import KMeans

        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels)
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                f"features must be one row per image: got shape {features.shape} "
                f"for {labels.shape[0]} images"
            )
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        if not 2 <= self.n_clusters <= features.shape[0] // 2:
            raise ValueError(
                f"clusters must be between 2 and half the images ({features.shape[0] // 2}), "
                f"got {self.n_clusters}"
            )
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        directions = features / np.maximum(norms, 1e-12)
        kmeans = KMeans(self.n_clusters, n_init=self.n_init, random_state=self.seed)
        found = kmeans.fit_predict(directions)
        # Number clusters by size, so that cluster 0 is the largest whatever k-means did.
        sizes = np.bincount(found, minlength=self.n_clusters)
        order = np.argsort(-sizes, kind="stable")
        renumber = np.empty_like(order)
        renumber[order] = np.arange(self.n_clusters)
        self.labels_ = renumber[found]
        self.clusters_ = _describe(self.labels_, labels, list(class_names), self.n_clusters)
        self.names_ = tuple(self.clusters_["group"])
        return self

    def mapping(self, example_ids: Sequence[object]) -> dict[str, str]:
        """Example id -> cluster name: a groups file for ``trainer.params.groups``."""
        if len(example_ids) != len(self.labels_):
            raise ValueError(f"{len(example_ids)} example ids for {len(self.labels_)} images")
        return {str(i): self.names_[c] for i, c in zip(example_ids, self.labels_, strict=True)}


def _describe(
    clusters: np.ndarray, labels: np.ndarray, class_names: list[str], n_clusters: int
) -> pd.DataFrame:
    width = len(str(n_clusters - 1))
    rows = []
    for c in range(n_clusters):
        counts = np.bincount(labels[clusters == c], minlength=len(class_names))
        total = int(counts.sum())
        top = np.argsort(-counts, kind="stable")[:3]
        shares = [(class_names[k], counts[k] / total) for k in top if counts[k]]
        # A second class in the name when the first holds less than half of the cluster.
        named = [shares[0][0]] + ([shares[1][0]] if shares[0][1] < 0.5 and len(shares) > 1 else [])
        rows.append(
            {
                "group": f"c{c:0{width}d} {'/'.join(named)}",
                "images": total,
                "purity": shares[0][1],
                "classes": ", ".join(f"{name} {share:.0%}" for name, share in shares),
            }
        )
    return pd.DataFrame(rows)
