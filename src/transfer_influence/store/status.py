"""How far a run has got: chunks done, running and missing, the rate, the time to finish."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .run import RunStore

__all__ = ["RunStatus", "duration", "run_status"]

_RECENT_CHUNKS = 20


@dataclass(frozen=True)
class RunStatus:
    planned_models: int
    chunks: int
    done: int
    running: int
    stale: int
    missing: int
    models_done: int
    models_per_hour: float  # over the most recent finished chunks, all workers together
    seconds_per_model: float  # median wall time of one model inside a chunk
    eta_seconds: float

    def lines(self) -> list[str]:
        rows = [
            f"models   {self.models_done} of {self.planned_models} done",
            f"chunks   {self.done} done, {self.running} running, {self.missing} missing"
            + (f" ({self.stale} with stale claims, will be redone)" if self.stale else ""),
        ]
        if not math.isnan(self.seconds_per_model):
            rows.append(
                f"speed    {self.seconds_per_model:.3g} s per model per worker, "
                f"{self.models_per_hour:,.0f} models/hour recently"
            )
        if self.missing and not math.isnan(self.eta_seconds):
            rows.append(f"finish   in about {duration(self.eta_seconds)} at the recent rate")
        return rows


def duration(seconds: float) -> str:
    """Seconds as a person reads them: "45 s", "12 min", "3.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_status(store: RunStore) -> RunStatus:
    done, metas, states = [], [], {"held": 0, "stale": 0}
    for chunk in store.chunks:
        if store.is_done(chunk):
            done.append(chunk)
            meta = store.chunk_meta(chunk)
            if meta and "started" in meta:
                metas.append((meta["started"], meta["finished"], chunk.size))
        else:
            state = store.claim_state(chunk)
            if state in states:
                states[state] += 1
    models_done = sum(c.size for c in done)
    missing_models = store.planned_models - models_done
    rate = per_model = eta = math.nan
    if metas:
        recent = sorted(metas, key=lambda m: m[1])[-_RECENT_CHUNKS:]
        span = recent[-1][1] - min(m[0] for m in recent)
        if span > 0:
            rate = sum(m[2] for m in recent) / span * 3600.0
            eta = missing_models / rate * 3600.0
        per_model = statistics.median((m[1] - m[0]) / m[2] for m in recent)
    return RunStatus(
        planned_models=store.planned_models,
        chunks=len(store.chunks),
        done=len(done),
        running=states["held"],
        stale=states["stale"],
        missing=len(store.chunks) - len(done) - states["held"],
        models_done=models_done,
        models_per_hour=rate,
        seconds_per_model=per_model,
        eta_seconds=eta,
    )
