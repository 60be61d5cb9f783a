"""Growing a run until its ranking is stable: train, measure split-half stability, plan more
models by its projection, and again, within a budget and a time limit."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

from ..engines import Engine
from ..estimation import run_stability
from ..estimation.diagnostics import SplitHalf
from ..store import RunStore

__all__ = ["grow_until_stable", "grown_models"]


def grow_until_stable(
    store: RunStore,
    engine: Engine,
    target: float,
    *,
    max_models: int | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    on_round: Callable[[SplitHalf], None] | None = None,
) -> SplitHalf | None:
    """Train ``store`` with ``engine`` until the split-half Spearman of its overall ranking
    reaches ``target``, the run reaches ``max_models`` (default: its planned size) or
    ``time_limit`` seconds pass. ``on_round`` is told each round's stability. Returns the
    last stability measured (None while there are too few models to measure it)."""
    deadline = None if time_limit is None else time.time() + time_limit
    budget = max_models or store.planned_models
    stability = None
    while True:
        left = None if deadline is None else max(deadline - time.time(), 0.0)
        engine.run(store, left, progress)
        if dataclasses.is_dataclass(engine) and getattr(engine, "verify", False):
            engine = dataclasses.replace(engine, verify=False)  # later rounds only add chunks
        if store.missing_chunks():  # the time limit stopped it
            return stability
        stability = run_stability(store)
        if stability is None:  # too few models (or seeds) to split yet
            if store.planned_models >= budget:
                return None
            store.set_models(min(2 * store.planned_models, budget))
            continue
        if on_round is not None:
            on_round(stability)
        if stability.spearman >= target or store.planned_models >= budget:
            return stability
        chunk_size = store.config.run.chunk_size
        store.set_models(grown_models(stability, target, store.planned_models, chunk_size, budget))


def grown_models(
    stability: SplitHalf, target: float, planned: int, chunk_size: int, budget: int
) -> int:
    """How many models to plan next on the way to ``target``: the Spearman-Brown projection,
    at least a chunk more and at most double (then measure again), within ``budget``. While
    the halves do not agree at all there is no projection, so double."""
    projected = stability.models_needed(target)
    wanted = max(projected, planned + chunk_size) if math.isfinite(projected) else 2 * planned
    return int(math.ceil(min(wanted, 2 * planned, budget)))
