"""Growing a run until what a user reads of it would repeat: train, ask whether an independent
run of this size would agree on the ends (and the whole ranking) as asked, plan more models by
the projection, and again, within a budget and a time limit. A target that no number of
models is projected to reach, or only far beyond the budget, stops the run and says so."""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..engines import Engine
from ..estimation import run_agreement
from ..estimation.agreement import Agreement
from ..estimation.diagnostics import end_size
from ..store import RunStore
from ..words import out_of_reach_reason

__all__ = ["Growth", "grow_until_stable", "grown_models", "parse_stability_targets"]

_TARGET = re.compile(r"^(top|bottom|spearman)=([0-9.]+)$")


def parse_stability_targets(text: str, groups: int) -> dict[str, float]:
    """``--until-stable``'s targets as shares: "top=8,bottom=8" (classes of the k read at each
    end that an independent run of the same size would share), "spearman=0.9", or a bare
    number (the Spearman). Raises ValueError with a one-line reason."""
    k = end_size(groups)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) == 1 and _is_number(parts[0]):
        parts = [f"spearman={parts[0]}"]
    targets: dict[str, float] = {}
    for part in parts:
        found = _TARGET.match(part)
        if not found or not _is_number(found.group(2)):
            raise ValueError(
                f"--until-stable: {part!r} is not top=N, bottom=N (of the {k} read at each "
                "end) or spearman=R"
            )
        name, value = found.group(1), float(found.group(2))
        if name == "spearman":
            if not 0.0 < value < 1.0:
                raise ValueError(f"--until-stable: spearman={value:g} must lie between 0 and 1")
            targets[name] = value
        else:
            if value != int(value) or not 1 <= value <= k:
                raise ValueError(
                    f"--until-stable: {name}={value:g} must be a whole number from 1 to {k}, "
                    f"the classes read at each end of {groups}"
                )
            targets[name] = value / k
    return targets


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True)
class Growth:
    """How growing a run ended: ``reason`` is "met", "budget", "time", "out of reach" or
    "beyond budget"; ``agreement`` the last measured (None while too few models)."""

    reason: str
    agreement: Agreement | None
    detail: str = ""


def grow_until_stable(
    store: RunStore,
    engine: Engine,
    targets: dict[str, float],
    *,
    max_models: int | None = None,
    time_limit: float | None = None,
    progress: bool = True,
    on_round: Callable[[Agreement], None] | None = None,
) -> Growth:
    """Train ``store`` with ``engine`` until an independent run of its size would agree with
    it as ``targets`` asks (shares of the ends, or a Spearman) at the low end of the 80%
    range of that agreement, the run reaches ``max_models`` (default: its planned size) or
    ``time_limit`` seconds pass. ``on_round`` is told each round's agreement."""
    deadline = None if time_limit is None else time.time() + time_limit
    budget = max_models or store.planned_models
    agreement = None
    unreachable_before: set[str] = set()
    while True:
        left = None if deadline is None else max(deadline - time.time(), 0.0)
        engine.run(store, left, progress)
        if dataclasses.is_dataclass(engine) and getattr(engine, "verify", False):
            engine = dataclasses.replace(engine, verify=False)  # later rounds only add chunks
        if store.missing_chunks():
            return Growth("time", agreement)
        agreement = run_agreement(store, targets)
        if agreement is None:  # too few models for estimates of enough classes
            if store.planned_models >= budget:
                return Growth("budget", None)
            store.set_models(min(2 * store.planned_models, budget))
            continue
        if on_round is not None:
            on_round(agreement)
        # Met when the low end of its 80% range is: checking a noisy estimate after every
        # round and stopping at its first crossing would stop early (optional stopping).
        unmet = [name for name, goal in targets.items() if agreement.ranges[name][0] < goal]
        if not unmet:
            return Growth("met", agreement)
        unreachable = {name for name in unmet if math.isinf(agreement.needed[name][0])}
        # Out of reach twice running: one round's estimates can be unlucky, and stopping
        # on them would end a run that a few more models show to be on its way.
        out_of_reach = sorted(unreachable & unreachable_before)
        unreachable_before = unreachable
        if out_of_reach:
            name = out_of_reach[0]
            return Growth(
                "out of reach",
                agreement,
                f"{name}: with many more models an independent run would still agree only "
                # Rounded down: a ceiling of 0.898 must not read as the target of 0.9.
                f"about {math.floor(agreement.ceiling[name] * 100) / 100:.2f} "
                f"(target {targets[name]:g}): "
                f"{out_of_reach_reason(agreement)}",
            )
        lowest = max((agreement.needed[n][1] for n in unmet if n not in unreachable), default=0)
        if lowest > budget:
            return Growth(
                "beyond budget",
                agreement,
                f"even the low end of the projection, about {lowest:,.0f} models, is more "
                f"than the budget of {budget:,}",
            )
        if store.planned_models >= budget:
            return Growth("budget", agreement)
        # Towards the high end of each projection's range, so that the low end of the
        # agreement's range gets there too (at most half as many again a round, then measure
        # again: a round that doubles overshoots by up to 2x when its target is met).
        highs = [agreement.needed[name][2] for name in unmet]
        needed = math.nan if any(math.isnan(h) for h in highs) else max(highs)  # NaN: GROWTH
        chunk_size = store.config.run.chunk_size
        store.set_models(grown_models(needed, store.planned_models, chunk_size, budget))


GROWTH = 1.5  # the most a round multiplies the models by


def grown_models(needed: float, planned: int, chunk_size: int, budget: int) -> int:
    """How many models to plan next on the way to ``needed``: at least a chunk more and at
    most ``GROWTH`` times as many (then measure again), within ``budget``."""
    most = max(GROWTH * planned, planned + chunk_size)
    wanted = max(needed, planned + chunk_size) if math.isfinite(needed) else most
    return int(math.ceil(min(wanted, most, budget)))
