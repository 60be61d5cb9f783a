"""The built-in trainer's work, sized without decoding an image: what ``run --dry-run`` prints
before a run whose first step reads and decodes every image (ImageNet: 140 GB)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..datasets import DatasetSurvey, survey_dataset
from .builtin import (
    TargetData,
    checked_modes,
    resolve_device,
    seconds_per_model,
    streams_source,
)
from .stack import Recipe

__all__ = ["BuiltinPlan"]


@dataclass(frozen=True)
class BuiltinPlan:
    """The data of a built-in trainer's run, counted: ``source`` (its training split), every
    split it reads (``splits``, by name) and each target's (training, evaluation) image counts.
    Answers what the trainer answers about its cost, the same way."""

    recipe: Recipe
    modes: tuple[str, ...]
    device: torch.device
    splits: dict[str, DatasetSurvey]
    target_counts: tuple[tuple[int, int], ...]

    @classmethod
    def of(
        cls,
        source: dict[str, Any],
        targets: Sequence[dict[str, Any]],
        modes: Sequence[str] = ("fixed_feature",),
        recipe: dict[str, Any] | None = None,
        groups: str | None = None,
        pool: dict[str, Any] | None = None,
    ) -> BuiltinPlan:
        """The plan of a trainer built with these parameters (those of ``BuiltinTrainer``;
        ``groups`` and ``pool`` change which images a model sees, not how many it costs)."""
        checked = Recipe.from_dict(recipe), checked_modes(modes)
        if not targets:
            raise ValueError("the built-in trainer needs at least one target")
        splits = {
            "source/train": survey_dataset(source, "train", "source"),
            "source/test": survey_dataset(source, "test", "source"),
        }
        counts = []
        for target in targets:
            name, spec, fraction, _, evaluate = TargetData.read_spec(target)
            train = survey_dataset(spec, "train", "target")
            splits[f"{name}/train"] = train  # all of it is read, validation carved out or not
            if evaluate != "validation":
                splits[f"{name}/test"] = survey_dataset(spec, "test", "target")
            held_out = round(fraction * train.count)
            evaluated = held_out if evaluate == "validation" else splits[f"{name}/test"].count
            counts.append((train.count - held_out, evaluated))
        return cls(*checked, resolve_device(), splits, tuple(counts))

    @property
    def source(self) -> DatasetSurvey:
        return self.splits["source/train"]

    def data_bytes(self) -> int:
        """Bytes of every decoded image the run reads: the cache on disk, and the device's."""
        return sum(split.nbytes for split in self.splits.values())

    def undecoded(self) -> int:
        """Images the run's first load decodes into the cache (none once it has)."""
        return sum(split.count for split in self.splits.values() if not split.decoded)

    def estimate_seconds_per_model(self) -> float:
        return seconds_per_model(
            self.recipe, self.modes, self.device, self.source.count, self.source.side[0],
            self.target_counts,
        )  # fmt: skip

    @property
    def source_placement(self) -> str:
        side, padding = self.source.side, self.recipe.crop_padding
        streamed = streams_source(self.source.nbytes, side, padding, self.device)
        return "streamed" if streamed else "on the device"
