"""Output functions: what a model "outputs" on each target example, computed from its logits.

Each function maps (logits n x C, labels n) to n float values; higher means better for the
target. Influence is then measured on one of them. Users add their own with
:func:`register_output` or name one as ``"package.module:function"`` in a config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_OUTPUTS",
    "UNITS",
    "OutputFunction",
    "compute_outputs",
    "get_output",
    "output_units",
    "register_output",
]

OutputFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_OUTPUTS = ("p_correct", "correct", "margin")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _correct_logit(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return logits[np.arange(labels.size), labels].astype(np.float64)


def p_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax probability of the correct class (the paper's default output)."""
    return np.exp(_log_softmax(logits)[np.arange(labels.size), labels])


def correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the arg-max prediction is the correct class."""
    return (logits.argmax(axis=1) == labels).astype(np.float64)


def margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Correct-class logit minus the largest other logit."""
    others = logits.astype(np.float64).copy()
    others[np.arange(labels.size), labels] = -np.inf
    return _correct_logit(logits, labels) - others.max(axis=1)


def neg_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Negative cross-entropy (higher is better, like every other output)."""
    return _log_softmax(logits)[np.arange(labels.size), labels]


def balanced_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Correctness weighted so that its mean over examples is the mean per-class accuracy."""
    counts = np.bincount(labels)
    present = np.count_nonzero(counts)
    weight = labels.size / (present * counts[labels])
    return correct(logits, labels) * weight


_REGISTRY: dict[str, OutputFunction] = {
    "p_correct": p_correct,
    "correct": correct,
    "margin": margin,
    "neg_loss": neg_loss,
    "balanced_correct": balanced_correct,
}


def register_output(name: str, function: OutputFunction) -> None:
    """Make ``function`` available as an output named ``name``."""
    if not name.isidentifier():
        raise ValueError(f"output name must be an identifier, got {name!r}")
    _REGISTRY[name] = function


def get_output(name: str) -> OutputFunction:
    """A registered output by name, or a user's ``"package.module:function"``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot import output function {name!r}: {error}") from None
        if not callable(function):
            raise ValueError(f"output {name!r} is not callable")
        return function
    known = ", ".join(sorted(_REGISTRY))
    raise ValueError(f"unknown output {name!r}; known: {known} (or 'package.module:function')")


def compute_outputs(
    logits: np.ndarray, labels: np.ndarray, names: tuple[str, ...] | list[str]
) -> dict[str, np.ndarray]:
    """Every named output for one model, as float32 arrays of length n."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise ValueError(f"logits must be n x C with n={labels.size}, got {logits.shape}")
    result = {}
    for name in names:
        values = np.asarray(get_output(name)(logits, labels), dtype=np.float32)
        if values.shape != labels.shape:
            raise ValueError(f"output {name!r} returned shape {values.shape}, not {labels.shape}")
        result[name] = values
    return result


# The unit of every influence on each output: (scale from the output's own unit, name).
UNITS = {
    "p_correct": (100.0, "points of p(correct class)"),
    "correct": (100.0, "points of accuracy"),
    "balanced_correct": (100.0, "points of balanced accuracy"),
    "margin": (1.0, "logit margin"),
    "neg_loss": (1.0, "nats of log-likelihood"),
}


def output_units(output: str) -> tuple[float, str]:
    """The one unit of every number about ``output`` that users read: (scale from the
    output's own unit, its name), e.g. 100 and "points of ..."."""
    return UNITS.get(output, (1.0, f"units of {output}"))


def with_unit(table: Any, unit: str) -> Any:
    """A table of influences as written to CSV: its numbers already in ``unit``, which a last
    column names ("unit", or "influence_unit" where a target class is called "unit")."""
    return table.assign(**{"unit" if "unit" not in table else "influence_unit": unit})
