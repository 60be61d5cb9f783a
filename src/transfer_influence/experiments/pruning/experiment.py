"""``Pruning``: pretrain again without the selected source groups and measure the target.

The ranking comes from the run's influence on a *validation* split carved from the target's
training images; every retrained model is evaluated on that split (to choose k) and on the
test split (reported once). The conditions are a run of their own, ``RUN/prune/run``, whose
jobs are listed (each condition and seed a mask and a paired seed) rather than drawn: any
trainer the sweep accepts trains it, with any engine, and it resumes like the sweep. The
ranking is fixed when the prune first runs (``RUN/prune/plan.json``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...config import Config
from ...engines import Engine, LocalEngine
from ...estimation import ClassInfluence
from ...files import CorruptFileError, read_json, write_json
from ...report.figures import pruning_accuracy
from ...store import RunError, RunStore
from ...store.records import outputs_from_arrays
from ...store.run import EXPLICIT
from ...trainers import Trainer, load_trainer
from ...trainers.protocol import output_key, parse_key
from .conditions import RULES, Condition, plan_conditions, user_condition
from .summary import summarise, write_outputs

__all__ = ["Pruning", "test_companion"]

TEST_SUFFIX = "@test"


def test_companion(trainer_type: str, params: dict[str, Any], target: str) -> dict[str, Any]:
    """The run's trainer parameters plus a companion target ``TARGET@test``: the same target
    and transfer, evaluated on its test split (the built-in and simulated trainers). Refused
    unless the run ranks on validation. A user's trainer is used as it is: it describes its
    test target itself (see ``Pruning(test_target=...)``)."""
    targets = list(params.get("targets", []))
    if trainer_type == "simulated":
        names = [str(t) for t in targets] or ["sim"]
        return {**params, "targets": [*names, target + TEST_SUFFIX]}
    if trainer_type != "builtin":
        return params
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
    test_target:
        The target whose test split is reported (default ``TARGET@test``, which the built-in
        and simulated trainers add; a user's trainer describes it itself).

    After :meth:`fit`: ``results_`` (one row per model), ``summary_`` (per condition and k),
    ``chosen_k_`` (the k whose bottom removal is best on validation), ``keep_list_`` (the group
    names to keep at that k), ``ranking_``, ``folder_`` and ``store_`` (the conditions' run);
    ``complete_`` tells whether every planned model is done.
    """

    def __init__(
        self,
        *,
        remove: tuple[str, ...] = RULES,
        k: tuple[int, ...] = (10, 20, 40),
        seeds: int = 5,
        keep_file: str | None = None,
        drop_file: str | None = None,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        estimator: str = "auto",
        test_target: str | None = None,
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
        self.test_target = test_target

    def fit(
        self,
        store: RunStore,
        engine: Engine | None = None,
        progress: bool = True,
        time_limit: float | None = None,
        trainer: Trainer | None = None,
    ) -> Pruning:
        """Plan the conditions, train the missing ones with ``engine`` (default: one local
        worker, using ``trainer`` if given), and summarise every finished one."""
        key = store.resolve_key(self.target, self.mode)
        target, mode = parse_key(key)
        # Refused before anything is ranked or written: a run that ranks on its test split.
        params = test_companion(store.config.trainer.type, store.config.trainer.params, target)
        self.folder_ = store.path("prune")
        if (self.folder_ / "models").is_dir() and not (self.folder_ / "run").is_dir():
            raise RunError(
                f"{self.folder_} was made by an earlier version of this tool; move it aside "
                f"(mv {self.folder_} {self.folder_}-old) and prune again"
            )
        self.folder_.mkdir(exist_ok=True)
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
        # Sources of one size side by side, so a stack of models trains equal epochs.
        conditions.sort(key=lambda c: (-sum(c.keep), c.label))
        self.store_ = self._conditions_run(store, params, conditions, trainer)
        test_key = output_key(self.test_target or target + TEST_SUFFIX, mode)
        if test_key not in self.store_.keys:
            raise RunError(
                f"the trainer describes no target {parse_key(test_key)[0]!r} to report on: "
                "name the test target with test_target"
            )
        engine = engine or LocalEngine(workers=1, trainer=trainer)
        engine.run(self.store_, time_limit, progress)
        rows = self._results(store.groups, conditions, key, test_key)
        self.complete_ = len(rows) == len(conditions)
        self.results_ = pd.DataFrame(rows)
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
                if plan["key"] != key or plan["output"] != self.output:
                    raise RunError(
                        f"{self.folder_} ranks by {plan['output']} of {plan['key']}; "
                        "move it aside to prune by another output"
                    )
                return [str(name) for name in plan["ranking"]]
            except (CorruptFileError, KeyError, TypeError) as error:
                raise RunError(f"{plan_path} is damaged: {error}") from None
        target, mode = parse_key(key)
        influence = ClassInfluence(
            target=target, mode=mode, output=self.output, estimator=self.estimator,
            diagnostics=False,
        ).fit(store)  # fmt: skip
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

    def _conditions_run(
        self, store: RunStore, params: dict[str, Any], conditions: list[Condition], trainer
    ) -> RunStore:
        """The run of the conditions: created on first use, grown by new conditions."""
        masks = np.stack([c.mask for c in conditions])
        seeds = np.array([_paired_seed(store.config.run.seed, c.seed) for c in conditions])
        labels = [c.label for c in conditions]
        root = self.folder_ / "run"
        if (root / "run.json").exists():
            run = RunStore(root)
            planned_masks, _, planned = run.explicit_jobs()
            where = {label: i for i, label in enumerate(planned.tolist())}
            for condition in conditions:
                i = where.get(condition.label)
                if i is not None and not np.array_equal(planned_masks[i], condition.mask):
                    raise RunError(
                        f"{condition.label} was trained for another {condition.name} source; "
                        f"move {self.folder_} aside to start again"
                    )
            run.add_jobs(masks, seeds, labels)
            return run
        source = store.config.to_dict()
        outputs = list(dict.fromkeys([*source["run"]["outputs"], "correct"]))
        config = Config.from_dict(
            {
                "run": {
                    **source["run"], "models": len(conditions), "design": EXPLICIT,
                    "seeds": "model", "outputs": outputs,
                    "chunk_size": int(params.get("recipe", {}).get("stack", 8)),
                },
                "trainer": {"type": store.config.trainer.type, "params": copy.deepcopy(params)},
            }
        )  # fmt: skip
        trainer = (
            trainer
            if trainer is not None and params is store.config.trainer.params
            else load_trainer(config.trainer.type, config.trainer.params)
        )
        task = trainer.describe()
        if tuple(task.groups) != store.groups:
            raise RunError("the trainer describes other source groups than the run's")
        return RunStore.open_or_create(root, config, task, jobs=(masks, seeds, labels))

    def _results(
        self, groups: tuple[str, ...], conditions: list[Condition], key: str, test_key: str
    ) -> list[dict[str, Any]]:
        """One row per finished model of ``conditions``."""
        wanted = {c.label: c for c in conditions}
        _, _, labels = self.store_.explicit_jobs()
        test = self.store_.target(parse_key(test_key)[0])
        rows = []
        for _, arrays in self.store_.iter_chunks():
            correct = outputs_from_arrays(arrays, test_key, "correct", test.labels)
            for row, index in enumerate(arrays["index"].tolist()):
                condition = wanted.get(str(labels[index]))
                if condition is None or arrays["status"][row] != "ok":
                    continue
                hits = correct[row]
                rows.append(
                    {
                        "condition": condition.name,
                        "k": condition.k,
                        "seed": condition.seed,
                        "validation_accuracy": float(arrays[f"accuracy/{key}"][row]),
                        "test_accuracy": float(hits.mean()),
                        "source_accuracy": float(arrays["source_accuracy"][row]),
                        "seconds": float(arrays["seconds"][row]),
                        **{
                            f"test_acc/{name}": float(hits[test.labels == c].mean())
                            for c, name in enumerate(test.class_names)
                            if (test.labels == c).any()
                        },
                        "removed": ";".join(groups[g] for g in np.flatnonzero(~condition.mask)),
                    }
                )
        order = {c.label: i for i, c in enumerate(conditions)}
        return sorted(rows, key=lambda r: order[f"{r['condition']}-k{r['k']}-s{r['seed']}"])

    def _keep_list(self, groups: tuple[str, ...]) -> list[str] | None:
        if self.chosen_k_ is None:
            return None
        removed = set(self.ranking_[-self.chosen_k_ :])
        return [name for name in groups if name not in removed]


def _paired_seed(run_seed: int, seed: int) -> int:
    """The training seed of paired seed ``seed``: the same in every condition."""
    return int(np.random.default_rng([run_seed, 9973, seed]).integers(2**31 - 1))
