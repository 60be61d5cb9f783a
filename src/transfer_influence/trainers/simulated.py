"""A simulated trainer with known true influence, for tests, benchmarks and dry runs.

Each model's correct-class logit on target example j is

    base_j + sum_k mask_k * effect[k, j] + model_noise + example_noise_j + unshared_noise_j

The first two noise terms are drawn from the model's training seed, so models that share a seed
share them; the last from the model's index, as the chaos of training that no shared seed
removes. The other logits are fixed per example, so the *margin* output is exactly additive in the
groups and its true difference-in-means influence is known in closed form.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..subsets import Job
from .protocol import JobResult, TargetInfo, TaskDescription, output_key

__all__ = ["SimulatedTrainer"]


class SimulatedTrainer:
    """Outputs = additive effects of the included groups + noise.

    Parameters
    ----------
    groups, examples, classes:
        K source groups, n target examples per target, C target classes.
    targets, modes:
        Names of the simulated targets and transfer modes.
    effect_scale:
        Standard deviation of a group's overall effect on the margin.
    active:
        Fraction of groups with any effect; the rest are irrelevant.
    model_noise, example_noise:
        Standard deviations of noise shared by all examples of a model, and per example; both
        follow the model's training seed.
    unshared_noise:
        Standard deviation of per-example noise that follows the model's index instead, so a
        shared seed does not remove it (default 0: a shared seed removes all noise).
    null:
        No group has any effect (for checking that confidence intervals hold).
    seconds_per_model:
        Sleep this long per model, to imitate real training in tests of scheduling.
    diverge:
        Model indices whose outputs come back as NaN (to test health checks).
    seed:
        Seed of the task itself (effects, labels); job seeds only drive the noise.
    """

    def __init__(
        self,
        groups: int = 20,
        examples: int = 200,
        classes: int = 10,
        targets: Sequence[str] = ("sim",),
        modes: Sequence[str] = ("fixed_feature", "finetune"),
        effect_scale: float = 0.05,
        active: float = 0.5,
        model_noise: float = 0.05,
        example_noise: float = 0.05,
        unshared_noise: float = 0.0,
        null: bool = False,
        seconds_per_model: float = 0.0,
        diverge: Sequence[int] = (),
        seed: int = 0,
    ) -> None:
        if groups < 2 or examples < 1 or classes < 2:
            raise ValueError("simulated trainer needs groups >= 2, examples >= 1, classes >= 2")
        if not 0.0 <= active <= 1.0:
            raise ValueError(f"active must be in [0, 1], got {active}")
        self.groups, self.examples, self.classes = groups, examples, classes
        self.targets, self.modes = tuple(targets), tuple(modes)
        self.model_noise, self.example_noise = model_noise, example_noise
        self.unshared_noise = unshared_noise
        self.seconds_per_model = seconds_per_model
        self.diverge = frozenset(int(i) for i in diverge)
        self.seed = seed
        self._tasks = {}
        for t, name in enumerate(self.targets):
            draw = self._draw([seed, t], effect_scale, active)
            labels, base, other_logits, strength, affinity = draw
            held_out, _, of = name.partition("@")
            if of == "test" and held_out in self.targets:
                # "NAME@test": other examples of the same task as NAME, so that choices made on
                # NAME (a validation split, say) can be checked on it.
                t_of = self.targets.index(held_out)
                labels, base, other_logits, _, _ = self._draw([seed, t_of, 1], effect_scale, active)
                _, _, _, strength, affinity = self._draw([seed, t_of], effect_scale, active)
            if null:
                strength[:] = 0.0
            effects = {
                mode: strength[:, None] * affinity[:, labels] * (1.0 if m == 0 else 0.5)
                for m, mode in enumerate(self.modes)
            }
            self._tasks[name] = (labels, base, other_logits, effects)

    def _draw(self, key: list[int], effect_scale: float, active: float) -> tuple:
        rng = np.random.default_rng(key)
        labels = rng.integers(0, self.classes, size=self.examples)
        base = rng.normal(1.0, 1.0, size=self.examples)
        other_logits = rng.normal(0.0, 1.0, size=(self.examples, self.classes))
        strength = rng.normal(0.0, effect_scale, size=self.groups)
        strength[rng.random(self.groups) >= active] = 0.0
        affinity = rng.uniform(0.0, 2.0, size=(self.groups, self.classes))  # which classes
        return labels, base, other_logits, strength, affinity

    def describe(self) -> TaskDescription:
        targets = tuple(
            TargetInfo(
                name=name,
                example_ids=np.array([f"{name}-{j:06d}" for j in range(self.examples)]),
                labels=self._tasks[name][0],
                class_names=tuple(f"class{c}" for c in range(self.classes)),
            )
            for name in self.targets
        )
        groups = tuple(f"group{k:03d}" for k in range(self.groups))
        return TaskDescription(groups, targets, self.modes, {"simulated": f"seed={self.seed}"})

    def true_influence(self, target: str, mode: str) -> np.ndarray:
        """Expected difference-in-means influence on the margin under uniform subsets, K x n.

        With fixed-size subsets, P(l in | k in) - P(l in | k out) = -1/(K-1) for every l != k.
        """
        effects = self._tasks[target][3][mode]
        others = effects.sum(axis=0, keepdims=True) - effects
        return effects - others / (self.groups - 1)

    def estimate_seconds_per_model(self) -> float:
        return self.seconds_per_model + 1e-4 * len(self.targets) * len(self.modes)

    def train(self, jobs: Sequence[Job]) -> list[JobResult]:
        results = []
        for job in jobs:
            start = time.perf_counter()
            if self.seconds_per_model:
                time.sleep(self.seconds_per_model)
            result = JobResult(index=job.index, source_accuracy=0.5 + 0.4 * job.mask.mean())
            for t, name in enumerate(self.targets):
                labels, base, other_logits, effects = self._tasks[name]
                for m, mode in enumerate(self.modes):
                    rng = np.random.default_rng([self.seed, job.seed, t, m])
                    score = (
                        base
                        + job.mask.astype(np.float64) @ effects[mode]
                        + rng.normal(0.0, self.model_noise)
                        + rng.normal(0.0, self.example_noise, size=self.examples)
                    )
                    if self.unshared_noise:
                        chaos = np.random.default_rng([self.seed, job.index, t, m, 1])
                        score += chaos.normal(0.0, self.unshared_noise, size=self.examples)
                    logits = other_logits.copy()
                    logits[np.arange(self.examples), labels] = score
                    if job.index in self.diverge:
                        logits[:] = np.nan
                    result.logits[output_key(name, mode)] = logits.astype(np.float32)
            result.seconds = time.perf_counter() - start
            results.append(result)
        return results
