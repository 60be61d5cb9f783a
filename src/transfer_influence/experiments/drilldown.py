"""Drill-down: from a class-level run to an example-level run over the images of its most
influential classes, so that the model budget of example-wise influence stays within reach."""

from __future__ import annotations

import copy

from ..config import Config
from ..estimation import ClassInfluence
from ..store import RunError, RunStore

__all__ = ["drill_down_config"]


def drill_down_config(
    store: RunStore,
    top: int = 3,
    bottom: int = 3,
    models: int = 200,
    context: str = "none",
    estimator: str = "auto",
) -> tuple[Config, list[str]]:
    """An example-level config whose pool is the ``top`` most helpful and ``bottom`` least
    helpful source classes of ``store`` (same trainer, recipe and target); and those classes."""
    if store.config.trainer.type != "builtin":
        raise RunError("drill-down makes a built-in trainer run; this run has another trainer")
    params = copy.deepcopy(store.config.trainer.params)
    if params.get("groups") is not None or params.get("pool") is not None:
        raise RunError("drill-down starts from a run over single classes (no groups or pool)")
    if top < 0 or bottom < 0 or top + bottom < 1:
        raise ValueError("choose at least one class: top and bottom are counts >= 0")
    model = ClassInfluence(estimator=estimator, diagnostics=False).fit(store)
    table = model.classes_.dropna(subset=["influence"])
    chosen = table["group"].head(top).tolist() + table["group"].tail(bottom).tolist()
    chosen = list(dict.fromkeys(chosen))
    params["pool"] = {"classes": chosen, "context": context}
    run = store.config.to_dict()["run"]
    config = Config.from_dict(
        {
            "run": {**run, "models": models, "design": "random", "seeds": "run"},
            "trainer": {"type": "builtin", "params": params},
        }
    )
    return config, chosen
