"""Trainers: the tool's own, the simulated one, and users' via ``"package.module:factory"``."""

from __future__ import annotations

import importlib
from typing import Any

from .protocol import JobResult, TargetInfo, TaskDescription, Trainer, output_key, warm_up
from .simulated import SimulatedTrainer

__all__ = [
    "JobResult",
    "SimulatedTrainer",
    "TargetInfo",
    "TaskDescription",
    "Trainer",
    "load_trainer",
    "output_key",
    "warm_up",
]

# Imported on first use: the built-in trainer pulls in torch, which status/estimate never need.
_BUILTIN = {
    "simulated": "transfer_influence.trainers.simulated:SimulatedTrainer",
    "builtin": "transfer_influence.trainers.builtin:BuiltinTrainer",
}


def load_trainer(kind: str, params: dict[str, Any]) -> Trainer:
    """Build the trainer a config names: a built-in name or ``"package.module:factory"``."""
    if kind in _BUILTIN or ":" in kind:
        module_name, _, attr = _BUILTIN.get(kind, kind).partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import trainer {kind!r}: {error}") from None
    else:
        known = ", ".join(sorted(_BUILTIN))
        raise ValueError(
            f"unknown trainer type {kind!r}; known: {known} or 'package.module:factory'"
        )
    try:
        trainer = factory(**params)
    except TypeError as error:
        raise ValueError(f"trainer {kind!r}: {error}") from None
    if not isinstance(trainer, Trainer):
        raise ValueError(f"trainer {kind!r} has no describe() and train(jobs) methods")
    return trainer
