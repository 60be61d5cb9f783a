"""``Pruning``: pretrain again without the selected source groups and measure the target.

The ranking comes from the run's influence on a *validation* split carved from the target's
training images; every retrained model is evaluated on that split (to choose k) and on the
test split (reported once). Results live in RUN/prune/: one JSON per model, written atomically,
so an interrupted prune resumes where it stopped; a result is never mixed with one trained for
a different condition under the same name.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ...estimation import ClassInfluence
from ...files import CorruptFileError, read_json, write_json
from ...report.figures import pruning_accuracy
from ...store import RunError, RunStore
from ...subsets import Job
from ...trainers import Trainer, load_trainer
from ...trainers.protocol import output_key
from .conditions import RULES, Condition, plan_conditions, user_condition
from .summary import summarise, write_outputs

__all__ = ["Pruning", "test_companion"]

TEST_SUFFIX = "@test"


def test_companion(trainer_type: str, params: dict[str, Any], target: str) -> dict[str, Any]:
    """The run's trainer parameters plus a companion target ``TARGET@test``: the same target
    and transfer, evaluated on its test split. Refused unless the run ranks on validation."""
    targets = list(params.get("targets", []))
    if trainer_type == "simulated":
        names = [str(t) for t in targets] or ["sim"]
        return {**params, "targets": [*names, target + TEST_SUFFIX]}
    if trainer_type != "builtin":
        raise RunError("prune retrains with the run's trainer: the built-in or simulated one")
    spec = next((t for t in targets if t.get("name") == target), None)
    if spec is None:
        raise RunError(f"the run's config has no target named {target!r}")
    if spec.get("evaluate", "test") != "validation":
        raise RunError(
            f"prune ranks classes on a validation split, never the test set: give target "
            f'{target!r} `validation = 0.1` and `evaluate = "validation"` in the run\'s config'
        )
    return {**params, "targets": [spec, {**spec, "name": target + TEST_SUFFIX, "evaluate": "test"}]}


def _read_names(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ValueError(f"cannot read class list {path}: {error.strerror}") from None
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"class list {path} names no class")
    return names


class Pruning:
    """Retrain source models on the source minus selected groups, transfer, evaluate.

    Parameters
    ----------
    remove:
        Rules among "bottom" (least helpful first), "top" (most helpful first), "random".
    k:
        Numbers of groups to remove.
    seeds:
        Paired seeds per condition (the full source runs with every seed).
    keep_file, drop_file:
        Optional hand-picked sources: text files with one group name per line.
    target, mode, output, estimator:
        Which influence ranks the groups (on the run's validation outputs).

    After :meth:`fit`: ``results_`` (one row per model), ``summary_`` (per condition and k),
    ``chosen_k_`` (the k whose bottom removal is best on validation), ``keep_list_`` (the group
    names to keep at that k), ``ranking_`` and ``folder_``; ``complete_`` tells whether every
    planned model is done.
    """

    def __init__(
        self,
        remove: tuple[str, ...] = RULES,
        k: tuple[int, ...] = (10, 20, 40),
        seeds: int = 5,
        keep_file: str | None = None,
        drop_file: str | None = None,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        estimator: str = "auto",
    ) -> None:
        self.remove = tuple(remove)
        self.k = tuple(k)
        self.seeds = seeds
        self.keep_file = keep_file
        self.drop_file = drop_file
        self.target = target
        self.mode = mode
        self.output = output
        self.estimator = estimator

    def fit(
        self,
        store: RunStore,
        progress: bool = True,
        time_limit: float | None = None,
        trainer: Trainer | None = None,
    ) -> Pruning:
        key = store.resolve_key(self.target, self.mode)
        target, mode = key.split("/")
        params = test_companion(store.config.trainer.type, store.config.trainer.params, target)
        self.folder_ = store.root / "prune"
        (self.folder_ / "models").mkdir(parents=True, exist_ok=True)
        self.ranking_ = self._ranking(store, key)
        index = {name: k for k, name in enumerate(store.groups)}
        conditions = plan_conditions(
            [index[name] for name in self.ranking_],
            list(self.remove),
            list(self.k),
            self.seeds,
            store.config.run.seed,
        )
        for kind, path in (("keep", self.keep_file), ("drop", self.drop_file)):
            if path:
                conditions += user_condition(kind, _read_names(path), store.groups, self.seeds)
        done = self._check_existing(conditions)
        pending = [c for c in conditions if c.label not in done]
        if pending:
            trainer = trainer or load_trainer(store.config.trainer.type, params)
            if tuple(trainer.describe().groups) != store.groups:
                raise RunError("the trainer describes other source groups than the run's")
            self._train(store, trainer, pending, target, mode, progress, time_limit)
        self.complete_ = all((self._path(c)).is_file() for c in conditions)
        records = [read_json(self._path(c)) for c in conditions if self._path(c).is_file()]
        self.results_ = pd.DataFrame([_flatten(r) for r in records])
        self.summary_, self.chosen_k_ = summarise(self.results_)
        self.keep_list_ = self._keep_list(store.groups)
        figure = pruning_accuracy(self.summary_) if len(self.summary_) else None
        write_outputs(
            self.folder_, self.results_, self.summary_, self.chosen_k_, self.keep_list_, figure
        )
        return self

    # -- steps ------------------------------------------------------------------------------

    def _ranking(self, store: RunStore, key: str) -> list[str]:
        """The groups from most helpful to least helpful, fixed when the prune first ran."""
        plan_path = self.folder_ / "plan.json"
        if plan_path.is_file():
            try:
                plan = read_json(plan_path)
            except CorruptFileError as error:
                raise RunError(f"{plan_path} is damaged: {error}") from None
            if plan["key"] != key or plan["output"] != self.output:
                raise RunError(
                    f"{self.folder_} ranks by {plan['output']} of {plan['key']}; "
                    "move it aside to prune by another output"
                )
            return list(plan["ranking"])
        influence = ClassInfluence(
            *key.split("/"), self.output, estimator=self.estimator, diagnostics=False
        ).fit(store)
        table = influence.classes_
        if table["influence"].isna().any():
            raise RunError("some groups have no influence estimate yet; train more models first")
        ranking = table["group"].tolist()
        write_json(
            plan_path,
            {
                "key": key,
                "output": self.output,
                "estimator": influence.estimate_.estimator,
                "n_models": influence.n_models_,
                "ranking": ranking,
                "influence": table["influence"].tolist(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        return ranking

    def _path(self, condition: Condition) -> Path:
        return self.folder_ / "models" / f"{condition.label}.json"

    def _check_existing(self, conditions: list[Condition]) -> set[str]:
        done = set()
        for condition in conditions:
            path = self._path(condition)
            if not path.is_file():
                continue
            try:
                record = read_json(path)
            except CorruptFileError:
                path.unlink()  # a damaged result is redone, never read
                continue
            if record["keep"] != [int(v) for v in condition.keep]:
                raise RunError(
                    f"{path} was trained for another {condition.name} source; "
                    "move prune/ aside to start again"
                )
            done.add(condition.label)
        return done

    def _train(self, store, trainer, pending, target, mode, progress, time_limit) -> None:
        deadline = None if time_limit is None else time.time() + time_limit
        labels = store.target(target).labels
        test = next(t for t in trainer.describe().targets if t.name == target + TEST_SUFFIX)
        stack = int(getattr(getattr(trainer, "recipe", None), "stack", 8))
        # Equal-sized sources share a stack, so each model's epoch is its own source's size.
        pending = sorted(pending, key=lambda c: (-sum(c.keep), c.label))
        bar = tqdm(total=len(pending), unit="model", desc="pruning", disable=not progress)
        with bar:
            for start in range(0, len(pending), stack):
                if deadline is not None and time.time() >= deadline:
                    break
                batch = pending[start : start + stack]
                jobs = [
                    Job(i, _paired_seed(store.config.run.seed, c.seed), c.mask)
                    for i, c in enumerate(batch)
                ]
                for condition, result in zip(batch, trainer.train(jobs), strict=True):
                    validation = result.logits[output_key(target, mode)].argmax(axis=1)
                    tested = result.logits[output_key(test.name, mode)].argmax(axis=1)
                    hits = tested == test.labels
                    write_json(
                        self._path(condition),
                        {
                            "condition": condition.name,
                            "k": condition.k,
                            "seed": condition.seed,
                            "keep": [int(v) for v in condition.keep],
                            "removed": [store.groups[g] for g in np.flatnonzero(~condition.mask)],
                            "validation_accuracy": float((validation == labels).mean()),
                            "test_accuracy": float(hits.mean()),
                            "test_class_accuracy": {
                                str(name): float(hits[test.labels == c].mean())
                                for c, name in enumerate(test.class_names)
                                if (test.labels == c).any()
                            },
                            "source_accuracy": result.source_accuracy,
                            "seconds": result.seconds,
                        },
                    )
                    bar.update()

    def _keep_list(self, groups: tuple[str, ...]) -> list[str] | None:
        if self.chosen_k_ is None:
            return None
        removed = set(self.ranking_[-self.chosen_k_ :])
        return [name for name in groups if name not in removed]


def _paired_seed(run_seed: int, seed: int) -> int:
    """The training seed of paired seed ``seed``: the same in every condition."""
    return int(np.random.default_rng([run_seed, 9973, seed]).integers(2**31 - 1))


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    row = {
        key: record[key]
        for key in ("condition", "k", "seed", "validation_accuracy", "test_accuracy")
    }
    row["source_accuracy"] = record.get("source_accuracy")
    row["seconds"] = record.get("seconds")
    row.update({f"test_acc/{name}": v for name, v in record["test_class_accuracy"].items()})
    row["removed"] = ";".join(record["removed"])
    return row
