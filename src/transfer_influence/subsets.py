"""Subsets are boolean masks over groups; a job is (model index, seed, mask).

Groups are source classes by default, but nothing here knows that: the same jobs serve
superclasses, clusters or single examples. Mask i is a pure function of (base seed, i), so any
worker can rebuild any job without coordination and a resumed run draws the same subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DESIGNS", "Job", "make_job", "make_jobs", "round_size", "subset_size"]

DESIGNS = ("random", "balanced")
# Runs of earlier versions may say "complementary": pairs of a subset and its complement,
# drawn differently from "balanced" at alpha = 0.5 (which makes the same kind of pairs), so
# their runs resume with the jobs they planned. New runs say "balanced".
_LEGACY_DESIGNS = ("complementary",)
_MASK_STREAM, _SEED_STREAM = 0, 1


@dataclass(frozen=True)
class Job:
    """One subset model to train: its index in the run, its training seed, its subset."""

    index: int
    seed: int
    mask: np.ndarray  # bool over groups

    @property
    def groups(self) -> np.ndarray:
        """Indices of the groups in this job's subset."""
        return np.flatnonzero(self.mask)


def subset_size(n_groups: int, alpha: float) -> int:
    """round(alpha * K), checked to leave every group both in and out of some subsets."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    size = round(alpha * n_groups)
    if not 1 <= size <= n_groups - 1:
        raise ValueError(
            f"alpha={alpha} with {n_groups} groups gives subsets of {size}; "
            "need between 1 and K-1 groups per subset"
        )
    return size


def round_size(design: str, alpha: float) -> int | None:
    """How many consecutive jobs of ``design`` partition the groups (each group in exactly one):
    2 for "complementary", 1/alpha for "balanced"; None where jobs are drawn independently."""
    return {"complementary": 2, "balanced": round(1 / alpha)}.get(design)


def make_job(
    index: int,
    n_groups: int,
    alpha: float,
    base_seed: int,
    design: str = "random",
    shared_seed: bool = False,
    seed_index: int | None = None,
) -> Job:
    """Job ``index`` of a run: a pure function of its arguments.

    ``design`` "random" draws each subset independently; "balanced" splits a
    fresh permutation of the groups into 1/alpha disjoint subsets for each round of 1/alpha
    jobs, so every group is in exactly alpha of the jobs of each round. With ``shared_seed``
    every job gets the same training seed (same initialisation, augmentation and sampling
    stream), which removes seed noise from comparisons between subsets. Jobs given the same
    ``seed_index`` share the seed drawn for it (a run's chunks: one seed per chunk).
    """
    if index < 0:
        raise ValueError(f"job index must be non-negative, got {index}")
    if design not in DESIGNS + _LEGACY_DESIGNS:
        raise ValueError(f"unknown subset design {design!r}; choose one of {', '.join(DESIGNS)}")
    size = subset_size(n_groups, alpha)
    if design == "complementary" and 2 * size != n_groups:
        raise ValueError("the complementary design needs alpha * K = K / 2 exactly")
    mask = np.zeros(n_groups, dtype=bool)
    if design == "balanced":
        parts = round_size(design, alpha)
        if parts * size != n_groups:
            raise ValueError(
                "the balanced design needs K to split into 1/alpha subsets of "
                "alpha*K groups (e.g. alpha = 0.25 with K divisible by 4)"
            )
        order = np.random.default_rng([base_seed, index // parts, _MASK_STREAM]).permutation(
            n_groups
        )
        part = index % parts
        mask[order[part * size : (part + 1) * size]] = True
    else:
        draw_index = index // 2 if design == "complementary" else index
        rng = np.random.default_rng([base_seed, draw_index, _MASK_STREAM])
        mask[rng.choice(n_groups, size=size, replace=False)] = True
        if design == "complementary" and index % 2 == 1:
            mask = ~mask
    if seed_index is None:
        seed_index = 0 if shared_seed else index
    seed_rng = np.random.default_rng([base_seed, seed_index, _SEED_STREAM])
    seed = int(seed_rng.integers(0, 2**31 - 1))
    return Job(index=index, seed=seed, mask=mask)


def make_jobs(
    indices: range | list[int],
    n_groups: int,
    alpha: float,
    base_seed: int,
    design: str = "random",
    shared_seed: bool = False,
    seed_index: int | None = None,
) -> list[Job]:
    return [
        make_job(i, n_groups, alpha, base_seed, design, shared_seed, seed_index) for i in indices
    ]
