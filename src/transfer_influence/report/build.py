"""``Report``: a run turned into RUN/report/ — index.html (one self-contained file, every image
embedded, works offline), figures/*.png and tables/*.csv."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..analyses import (
    class_matrix,
    failure_modes,
    find_leakage,
    group_index,
    most_hurt,
    projection,
    top_groups,
)
from ..estimation import ClassInfluence
from ..estimation.significance import FLAG_LEVEL, chance_extreme
from ..files import csv_text, read_json, write_folder
from ..outputs import output_units, with_unit
from ..provenance import package_version
from ..store import RunStore
from ..trainers.protocol import parse_key
from ..words import q_text
from .examples import example_section, is_example_run
from .figures import class_bars, class_heatmap
from .header import answer_sentence, run_facts, trust_sentence
from .images import RunImages, load_run_images, png, thumbnail

__all__ = ["Report"]

_MAX_TARGET_ROWS = 50  # target classes listed one per row; the CSV has them all
_LEAK_ROWS = 25


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _selection_note(shown: pd.DataFrame, out_of: int, picked: str) -> str:
    """How far from zero the images shown lie, next to where the most extreme of as many
    null estimates would: images picked as extremes are not evidence one by one."""
    z = (shown["influence"] / shown["stderr"]).abs()
    z = z[np.isfinite(z)]
    if z.empty:
        return ""
    return (
        f"{picked}: with no real effects the most extreme would lie "
        f"{chance_extreme(out_of):.1f} standard errors from zero (in half of all runs), and "
        f"these lie {z.min():.1f}–{z.max():.1f}; read them together, not one by one."
    )


class Report:
    """A visual report of one (target, mode, output) of a run.

    Parameters
    ----------
    target, mode, output, estimator, level:
        What to estimate, as for :class:`ClassInfluence`.
    top:
        Source classes in the bar chart on each side (most and least helpful), and classes shown in
        the projection and failure-mode sections (``top // 2`` each, at least 3).
    examples:
        Target images shown per source class.
    classes:
        Source classes to project onto the target besides the most helpful ones.
    source_data, target_data:
        Where the images are, for runs not trained by the built-in trainer: a path (ImageFolder
        directory or tarballs, or ``.npz``) or a dataset table.
    leakage_z, leakage_similarity:
        Thresholds of :func:`~transfer_influence.analyses.find_leakage`.
    target_examples:
        Example-level runs (a built-in ``pool``): target images (ids) whose most helpful and
        least helpful source images are shown; by default the 4 most affected ones.

    After :meth:`build`: ``path_`` (index.html), ``influence_`` (the fitted ClassInfluence),
    ``tables_`` (every table written, by name), ``leakage_`` (all leakage candidates; None
    when there were no images to check) and ``left_out_`` (what the page leaves out for want
    of images, and why; empty when nothing).
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        mode: str | None = None,
        output: str = "p_correct",
        estimator: str = "auto",
        level: float = 0.95,
        top: int = 10,
        examples: int = 8,
        classes: Sequence[str] = (),
        source_data: str | dict[str, Any] | None = None,
        target_data: str | dict[str, Any] | None = None,
        leakage_z: float = 4.0,
        leakage_similarity: float = 0.75,
        target_examples: Sequence[str] = (),
    ) -> None:
        self.target = target
        self.mode = mode
        self.output = output
        self.estimator = estimator
        self.level = level
        self.top = top
        self.examples = examples
        self.classes = tuple(classes)
        self.source_data = source_data
        self.target_data = target_data
        self.leakage_z = leakage_z
        self.leakage_similarity = leakage_similarity
        self.target_examples = tuple(target_examples)

    def build(self, store: RunStore, out: str | Path | None = None, progress: bool = False):
        """Estimate, analyse and write the report into ``out`` (default RUN/report)."""
        if self.top < 1 or self.examples < 1:
            raise ValueError("top and examples must be at least 1")
        steps = tqdm(total=5, desc="report", unit="step", disable=not progress, leave=False)
        influence = ClassInfluence(
            target=self.target, mode=self.mode, output=self.output, level=self.level,
            estimator=self.estimator,
        ).fit(store, progress=progress)  # fmt: skip
        for name in self.classes:
            group_index(influence, name)  # an unknown class fails before any work
        self.influence_ = influence
        target_name = parse_key(influence.key_)[0]
        steps.update()
        images = load_run_images(store, target_name, self.source_data, self.target_data)
        self.left_out_ = [
            f"{what} ({why})"
            for what, missing, why in (
                ("target images and the leakage check", images.target is None, images.target_note),
                ("source images beside each class", images.source is None, images.source_note),
            )
            if missing
        ]
        steps.update()
        folder = Path(out) if out is not None else store.path("report")
        files: dict[str, bytes] = {}
        self.tables_: dict[str, pd.DataFrame] = {}
        context = self._sections(influence, images)
        steps.update()
        context["leakage"] = self._leakage(influence, images)
        context["examples"] = None
        if is_example_run(store):
            context["examples"], tables = example_section(
                store, influence, images, self.target_examples, self.examples,
                self._value, _data_uri,
            )  # fmt: skip
            self.tables_.update(tables)
        steps.update()
        context["header"] = self._header(store, influence)
        context["figures"] = self._figures(influence, files)
        context["matrix_rows"] = len(self.tables_["class_matrix"])
        context["prune"] = self._prune(store, folder)
        for name, table in self.tables_.items():
            files[f"tables/{name}.csv"] = csv_text(with_unit(table, influence.unit_)).encode()
        environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        template = environment.from_string(
            resources.files(__package__).joinpath("template.html").read_text()
        )
        files["index.html"] = template.render(**context).encode()
        # One set, swapped in whole: never new tables beside an old page.
        write_folder(folder, files)
        self.path_ = folder / "index.html"
        steps.update()
        steps.close()
        return self

    # -- sections -----------------------------------------------------------------------------

    @staticmethod
    def _value(value: float, stderr: float | None = None) -> str:
        text = f"{value:+.2f}"
        return text if stderr is None else f"{text} ± {stderr:.2f}"

    def _thumbs(self, images: np.ndarray | None, table: pd.DataFrame) -> list[dict[str, str]]:
        if images is None:
            return []
        return [
            {
                "src": _data_uri(png(thumbnail(images[row.example]))),
                "caption": f"{row.target_class} {self._value(row.influence, row.stderr)}",
            }
            for row in table.itertuples()
        ]

    def _block(self, influence: ClassInfluence, images: RunImages, name: str, table) -> dict:
        k = group_index(influence, name)
        overall = influence.classes_.set_index("group").loc[influence.groups_[k]]
        source = [
            {"src": _data_uri(png(thumbnail(image))), "caption": "source"}
            for image in images.source_samples(k, 4)
        ]
        return {
            "name": influence.groups_[k],
            "summary": f"overall {self._value(overall.influence, overall.stderr)}",
            "source": source,
            "target": self._thumbs(images.target, table),
        }

    def _sections(self, influence: ClassInfluence, images: RunImages) -> dict[str, Any]:
        shown = max(3, self.top // 2)
        helpful = top_groups(influence, shown)["group"].tolist()
        bottom = top_groups(influence, shown, bottom=True)["group"].tolist()
        projected = list(dict.fromkeys([*self.classes, *helpful]))
        projections = [projection(influence, name, self.examples) for name in projected]
        failures = [failure_modes(influence, name, self.examples) for name in bottom]
        hurt = most_hurt(influence, 2 * self.examples)
        self.tables_["classes"] = influence.classes_
        all_classes = [self._class_row(r) for r in influence.classes_.itertuples()]
        self.tables_["per_target_class"] = influence.per_target_class_
        self.tables_["projection"] = pd.concat(projections, ignore_index=True)
        self.tables_["failure_modes"] = pd.concat(failures, ignore_index=True)
        self.tables_["most_hurt"] = hurt
        per_target = [
            {
                "target": name,
                "helpful": self._top3(influence, c, bottom=False),
                "bottom": self._top3(influence, c, bottom=True),
            }
            for c, name in enumerate(influence.target_classes_[:_MAX_TARGET_ROWS])
        ]
        hurt_thumbs = [
            {
                "src": _data_uri(png(thumbnail(images.target[r.example])))
                if images.target is not None
                else "",
                "caption": f"{r.target_class} image; source class {r.source}: "
                f"{self._value(r.influence, r.stderr)}",
            }
            for r in hurt.itertuples()
        ]
        examples = influence.example_ids_.size
        per_class = f"Each class's images are its {self.examples} most extreme of {examples:,}"
        return {
            "projection_note": _selection_note(self.tables_["projection"], examples, per_class),
            "failures_note": _selection_note(self.tables_["failure_modes"], examples, per_class),
            "hurt_note": _selection_note(
                hurt,
                examples * len(influence.groups_),
                f"These are the {len(hurt)} most extreme of "
                f"{examples * len(influence.groups_):,} (class, image) pairs",
            ),  # fmt: skip
            "projection": [
                self._block(influence, images, name, table)
                for name, table in zip(projected, projections, strict=True)
            ],
            "failures": [
                self._block(influence, images, name, table)
                for name, table in zip(bottom, failures, strict=True)
            ],
            "most_hurt": hurt_thumbs,
            "all_classes": all_classes,
            "per_target": per_target,
            "per_target_more": len(influence.target_classes_)
            if len(influence.target_classes_) > _MAX_TARGET_ROWS
            else 0,
            "images_note": images.note,
            "images_shown": images.target is not None,
        }

    def _class_row(self, r: Any) -> dict[str, Any]:
        """One row of the page's table of every class (its order: most helpful first)."""
        defined = bool(np.isfinite(r.influence))
        flagged = defined and r.q_value <= FLAG_LEVEL
        reads = ("above average" if r.influence > 0 else "below average") if flagged else ""
        return {
            "rank": r.Index + 1,
            "name": r.group,
            "value": f"{r.influence:.6g}" if defined else "nan",
            "text": f"{r.influence:+.2f}" if defined else "undefined",
            "low": f"{r.ci_low:.6g}" if defined else "nan",
            "interval": f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if defined else "",
            "q": f"{r.q_value:.6g}" if defined else "nan",
            "q_text": q_text(r.q_value) if defined else "",
            "reads": reads,
            "css": "pos" if reads == "above average" else "neg" if reads else "",
        }

    def _top3(self, influence: ClassInfluence, target_class: int, bottom: bool) -> list[dict]:
        rows = top_groups(influence, 3, target_class, bottom=bottom).itertuples()
        return [
            {
                "name": r.group + (" *" if r.q_value <= FLAG_LEVEL else ""),
                "text": self._interval(r.influence, r.simultaneous_low, r.simultaneous_high),
            }
            for r in rows
        ]

    @staticmethod
    def _interval(value: float, low: float, high: float) -> str:
        return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"

    def _leakage(self, influence: ClassInfluence, images: RunImages) -> dict[str, Any]:
        base = {
            "z_min": self.leakage_z,
            "similarity_min": self.leakage_similarity,
            "rows": [],
            "look_alikes": [],
        }
        if images.target is None or images.source is None:
            self.leakage_ = None
            self.tables_["leakage"] = pd.DataFrame()
            return {**base, "summary": f"Not checked: no images ({images.note})."}
        found = find_leakage(
            influence.per_example("difference").values,
            images.target,
            images.source,
            images.source_groups,
            self.leakage_z,
            self.leakage_similarity,
        )
        table = found.assign(
            group=[influence.groups_[k] for k in found["group"]],
            example_id=influence.example_ids_[found["example"]],
            target_class=[
                influence.target_classes_[c] for c in influence.example_labels_[found["example"]]
            ],
        )
        self.leakage_ = table
        self.tables_["leakage"] = table
        leaks, look_alikes = table[table["leak"]], table[table["look_alike"]]

        def rows(pairs: pd.DataFrame) -> list[dict[str, str]]:
            return [
                {
                    "target_src": _data_uri(png(thumbnail(images.target[r.example]))),
                    "source_src": _data_uri(png(thumbnail(images.source[r.source_image]))),
                    "example": r.example_id,
                    "target_class": r.target_class,
                    "group": r.group,
                    "influence": self._value(r.influence),
                    "z": f"{r.z:.1f}",
                    "similarity": f"{r.similarity:.2f}",
                }
                for r in pairs.head(_LEAK_ROWS).itertuples()
            ]

        summary = (
            f"{len(table)} (class, image) pairs are extreme; {len(leaks)} of them have a "
            f"near-duplicate in the class that resembles no other flagged image"
            + (f" (the first {_LEAK_ROWS} are shown)." if len(leaks) > _LEAK_ROWS else ".")
        )
        return {**base, "rows": rows(leaks), "look_alikes": rows(look_alikes),
                "summary": summary}  # fmt: skip

    def _figures(self, influence: ClassInfluence, files: dict[str, bytes]) -> dict[str, str]:
        matrix = class_matrix(influence, rows=40)
        self.tables_["class_matrix"] = matrix.reset_index()
        figures = {
            "bars": class_bars(
                top_groups(influence, self.top),
                top_groups(influence, self.top, bottom=True),
                self.output,
                self.level,
            ),
            "heatmap": class_heatmap(matrix, self.output),
        }
        for name, data in figures.items():
            files[f"figures/{name}.png"] = data
        return {name: _data_uri(data) for name, data in figures.items()}

    def _header(self, store: RunStore, influence: ClassInfluence) -> dict[str, Any]:
        facts = run_facts(store, influence)
        _, unit = output_units(self.output)
        return {
            "run": store.root.name,
            "target": parse_key(influence.key_)[0],
            "mode": parse_key(influence.key_)[1],
            "output": self.output,
            "estimator": influence.estimate_.estimator,
            "created": time.strftime("%Y-%m-%d %H:%M"),
            "version": package_version(),
            "examples": f"{influence.example_ids_.size:,}",
            "groups": f"{len(influence.groups_):,}",
            "unit": unit,
            "level": f"{self.level:.0%}",
            "facts": facts,
            "answer": answer_sentence(influence),
            "trust": trust_sentence(influence),
        }

    def _prune(self, store: RunStore, folder: Path) -> dict[str, str] | None:
        summary = store.path("prune") / "summary.json"
        figure = store.path("prune") / "accuracy.png"
        if not (summary.is_file() and figure.is_file()):
            return None
        data = read_json(summary)
        return {
            "summary": str(data.get("headline", "")),
            "figure": _data_uri(figure.read_bytes()),
            "csv": Path("..", "prune", "results.csv").as_posix()
            if folder == store.path("report")
            else (store.path("prune") / "results.csv").resolve().as_uri(),
        }
