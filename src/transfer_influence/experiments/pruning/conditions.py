"""Which source groups each pruning condition keeps (pure: names and masks, no I/O).

A condition removes k groups chosen by a rule: ``bottom`` (most negative influence first),
``top`` (most positive first), ``random`` (a fresh draw per seed), or a user's list (``keep``
or ``drop`` file). ``full`` removes nothing and is always run, as the reference. Seeds are
paired: model seed s trains with the same seed in every condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RULES", "Condition", "plan_conditions", "user_condition"]

RULES = ("bottom", "top", "random")


@dataclass(frozen=True)
class Condition:
    """One pretraining source: ``name`` (e.g. "bottom"), ``k`` groups removed, ``seed``."""

    name: str
    k: int
    seed: int
    keep: tuple[bool, ...]

    @property
    def label(self) -> str:
        return f"{self.name}-k{self.k}-s{self.seed}"

    @property
    def mask(self) -> np.ndarray:
        return np.array(self.keep, dtype=bool)


def plan_conditions(
    ranking: list[int], rules: list[str], ks: list[int], seeds: int, base_seed: int = 0
) -> list[Condition]:
    """Every (rule, k, seed) condition plus ``full`` per seed.

    ``ranking`` lists group indices from most helpful to least helpful.
    """
    groups = len(ranking)
    unknown = [rule for rule in rules if rule not in RULES]
    if unknown:
        raise ValueError(f"unknown remove rule {unknown[0]!r}; choose from {', '.join(RULES)}")
    bad = [k for k in ks if not 0 < k < groups]
    if bad:
        raise ValueError(f"k = {bad[0]} must be between 1 and {groups - 1} ({groups} groups)")
    if seeds < 1:
        raise ValueError("seeds must be at least 1")
    conditions = []
    for seed in range(seeds):
        conditions.append(Condition("full", 0, seed, (True,) * groups))
        for rule in rules:
            for k in ks:
                if rule == "bottom":
                    removed = ranking[-k:]
                elif rule == "top":
                    removed = ranking[:k]
                else:
                    rng = np.random.default_rng([base_seed, seed, k, 7])
                    removed = rng.choice(groups, k, replace=False).tolist()
                keep = np.ones(groups, bool)
                keep[removed] = False
                conditions.append(Condition(rule, k, seed, tuple(keep.tolist())))
    return conditions


def user_condition(
    kind: str, names: list[str], groups: tuple[str, ...], seeds: int
) -> list[Condition]:
    """A hand-picked source: ``kind`` "keep" (only these groups) or "drop" (all but these)."""
    index = {name: k for k, name in enumerate(groups)}
    missing = [name for name in names if name not in index]
    if missing:
        raise ValueError(f"{kind} file names unknown source group {missing[0]!r}")
    listed = np.zeros(len(groups), bool)
    listed[[index[name] for name in names]] = True
    keep = listed if kind == "keep" else ~listed
    if not keep.any() or keep.all():
        raise ValueError(f"the {kind} file leaves {'no' if not keep.any() else 'every'} group")
    removed = int((~keep).sum())
    return [Condition(f"{kind}-file", removed, seed, tuple(keep.tolist())) for seed in range(seeds)]
