"""Run configuration: TOML in, validated and resolved, with ``--set key=value`` overrides.

A config has two tables::

    [run]                     # how subsets are drawn and what is recorded
    seed = 0
    alpha = 0.5
    models = 100
    ...
    [trainer]                 # who trains: "simulated", or "package.module:factory"
    type = "simulated"
    [trainer.params]          # passed to the trainer's constructor
    groups = 20

Every field except those in NON_DEFINING defines the run: a run directory refuses a config that
differs in any of them, so results from different set-ups are never mixed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .outputs import DEFAULT_OUTPUTS, get_output
from .subsets import DESIGNS, round_size

__all__ = [
    "MAX_CHUNKS",
    "MAX_MODELS",
    "NON_DEFINING",
    "SEEDS",
    "Config",
    "ConfigError",
    "defining_diff",
    "load_config",
]

NON_DEFINING = frozenset({"run.models", "run.claim_timeout_s"})
# Whose training seed a model uses: its own, its chunk's (shared by the chunk's models, its
# offset removed in estimation), or the run's (one seed for all).
SEEDS = ("model", "chunk", "run")
# Bounds said up front (docs/method.md): a plan beyond them is refused before anything is
# written. A million models is over a hundred times the paper's largest run; the chunk bound
# keeps run.json, claims and status listings small.
MAX_MODELS = 1_000_000
MAX_CHUNKS = 100_000


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    alpha: float = 0.5
    models: int = 100
    chunk_size: int = 10
    design: str = "random"
    seeds: str = "model"
    keep_logits: bool = True
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    claim_timeout_s: float = 900.0


@dataclass(frozen=True)
class TrainerSection:
    type: str = "simulated"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run"]["outputs"] = list(self.run.outputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], import_code: bool = True) -> Config:
        """A validated config. ``import_code=False`` checks the names of a user's output
        functions without importing them: for reading a run directory, which must never run
        code that the directory names."""
        data = copy.deepcopy(data)
        _reject_unknown(data, {"run", "trainer"}, "")
        run = data.get("run", {})
        trainer = data.get("trainer", {})
        _legacy_seeds(run)
        _reject_unknown(run, {f.name for f in fields(RunSection)}, "run.")
        _reject_unknown(trainer, {"type", "params"}, "trainer.")
        if "outputs" in run:
            run["outputs"] = tuple(_typed(run, "outputs", list))
        config = cls(RunSection(**run), TrainerSection(**trainer))
        config.validate(import_code)
        return config

    def validate(self, import_code: bool = True) -> None:
        r = self.run
        _check(_whole(r.seed) and r.seed >= 0, "run.seed must be a non-negative integer")
        _check(
            _number(r.alpha) and 0.0 < r.alpha < 1.0,
            f"run.alpha must be in (0, 1), got {r.alpha!r}",
        )
        _check(_whole(r.models) and r.models >= 2, "run.models must be an integer >= 2")
        _check(
            r.models <= MAX_MODELS,
            f"run.models = {r.models:,} is over the limit of {MAX_MODELS:,} models",
        )
        _check(_whole(r.chunk_size) and r.chunk_size >= 1, "run.chunk_size must be an integer >= 1")
        _check(
            -(-r.models // r.chunk_size) <= MAX_CHUNKS,
            f"run.models = {r.models:,} in chunks of {r.chunk_size} is "
            f"{-(-r.models // r.chunk_size):,} chunks, over the limit of {MAX_CHUNKS:,}; "
            "raise run.chunk_size",
        )
        _check(isinstance(r.design, str), "run.design must be a name")
        _check(isinstance(r.seeds, str), "run.seeds must be a name")
        _check(isinstance(self.trainer.type, str), "trainer.type must be a string")
        external = self.trainer.type == "external"  # results imported with `record`
        _check(
            r.design in DESIGNS
            or r.design in ("complementary", "explicit")
            or (external and r.design == "external"),
            f"run.design must be one of {', '.join(DESIGNS)}",
        )
        _check(
            r.seeds in SEEDS,
            f"run.seeds must be one of {', '.join(repr(s) for s in SEEDS)}, got {r.seeds!r}",
        )
        if r.seeds == "chunk":
            # Whole rounds of the design per chunk, so each seed's models hold every group
            # equally often and the seed's offset cancels from every contrast.
            rounds = round_size(r.design, r.alpha) or 1
            _check(r.chunk_size >= 2, 'run.seeds = "chunk" needs run.chunk_size >= 2')
            _check(
                r.chunk_size % rounds == 0,
                f'run.seeds = "chunk" with the {r.design} design needs run.chunk_size '
                f"to be a multiple of {rounds}",
            )
        _check(isinstance(r.keep_logits, bool), "run.keep_logits must be true or false")
        _check(
            _number(r.claim_timeout_s) and r.claim_timeout_s > 0,
            "run.claim_timeout_s must be a positive number of seconds",
        )
        _check(len(r.outputs) > 0, "run.outputs must name at least one output")
        for name in r.outputs:
            _check(isinstance(name, str), "run.outputs must be names")
            if not import_code and ":" in name:
                continue  # a user's function, imported only where it is used to train
            try:
                get_output(name)
            except ValueError as error:
                raise ConfigError(f"run.outputs: {error}") from None
        _check(isinstance(self.trainer.type, str), "trainer.type must be a string")
        _check(isinstance(self.trainer.params, dict), "trainer.params must be a table")

    def defining_hash(self) -> str:
        blob = json.dumps(_defining(self.to_dict()), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a TOML config, apply ``key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    data = apply_overrides(data, overrides)
    _resolve_data_paths(data, path.resolve().parent)
    if not isinstance(data.get("trainer"), dict) or "type" not in data["trainer"]:
        # Without it a config would train the simulated trainer without a word.
        raise ConfigError(
            f'{path} has no [trainer] table with a type ("builtin", "simulated" or '
            '"package.module:factory")'
        )
    return Config.from_dict(data)


def _data_specs(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset tables of a builtin trainer's params: the source and every target."""
    trainer = data.get("trainer")
    params = trainer.get("params") if isinstance(trainer, dict) else None
    if not isinstance(params, dict):
        return []
    targets = params.get("targets")
    specs = [params.get("source"), *(targets if isinstance(targets, list) else [])]
    return [spec for spec in specs if isinstance(spec, dict)]


def _resolve_data_paths(data: dict[str, Any], base: Path) -> None:
    """What a config writes of a data path is relative to the config file: a plain relative
    path, and the default of a leading ``${NAME:-default}``. The variable itself is kept and
    expanded where the data is read (its value taken as it is), so that a run directory can
    move to a machine whose data lives elsewhere."""

    def absolute(where: str) -> str:
        relative = where and not where.startswith(("/", "~", "$"))
        return os.path.normpath(base / where) if relative else where

    for spec in _data_specs(data):
        key = "root" if spec.get("kind") == "torchvision" else "path"
        where = spec.get(key)
        if not isinstance(where, str):
            continue
        if spec.get("kind") == "huggingface" and not (base / where).exists():
            continue  # a hub name, not a folder
        spec[key] = re.sub(
            r"^\$\{(\w+):-([^}]*)\}",
            lambda m: f"${{{m.group(1)}:-{absolute(m.group(2))}}}",
            absolute(where),
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``run.models=200`` style overrides; values are parsed as TOML, else taken as strings."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"an override must look like key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a table")
        node[parts[-1]] = value
    return data


def defining_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences in the defining fields of two resolved configs."""
    a, b = _flatten(_defining(old)), _flatten(_defining(new))
    return [
        f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def _defining(data: dict[str, Any]) -> dict[str, Any]:
    # Where the data lives is not what it is: the run's dataset fingerprints say that.
    data = copy.deepcopy(data)
    for spec in _data_specs(data):
        spec.pop("path", None)
        spec.pop("root", None)
    return {k: v for k, v in _flatten(data).items() if k not in NON_DEFINING}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def _legacy_seeds(run: Any) -> None:
    """Configs and run directories of earlier versions said ``shared_seed = true`` (now
    ``seeds = "run"``) and ``seed_per_chunk = true`` (now ``seeds = "chunk"``)."""
    if not isinstance(run, dict) or not {"shared_seed", "seed_per_chunk"} & set(run):
        return
    shared, per_chunk = run.pop("shared_seed", False), run.pop("seed_per_chunk", False)
    for key, value in (("shared_seed", shared), ("seed_per_chunk", per_chunk)):
        _check(isinstance(value, bool), f"run.{key} must be true or false")
    _check(not (shared and per_chunk), "choose run.shared_seed or run.seed_per_chunk, not both")
    legacy = "run" if shared else "chunk" if per_chunk else "model"
    _check(
        run.get("seeds", legacy) == legacy or legacy == "model",
        f"run.seeds = {run.get('seeds')!r} contradicts the older key that says {legacy!r}",
    )
    run.setdefault("seeds", legacy)


def _reject_unknown(table: Any, allowed: set[str], prefix: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (allowed in this table: "
            f"{', '.join(sorted(allowed))})"
        )


def _typed(table: dict[str, Any], key: str, kind: type) -> Any:
    if not isinstance(table[key], kind):
        raise ConfigError(f"run.{key} must be a {kind.__name__}")
    return table[key]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
