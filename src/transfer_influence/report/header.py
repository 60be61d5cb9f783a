"""What was run and how far to trust it: the report's header, as plain strings."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..estimation import ClassInfluence
from ..estimation.significance import FLAG_LEVEL
from ..files import CorruptFileError, read_json
from ..store import RunStore
from ..subsets import round_size
from ..trainers.protocol import parse_key
from ..words import (
    RELATIVE_NOTE,
    SHARED_SEED_CAVEAT,
    agreement_end_words,
    explained_sentence,
    flagged_sentence,
    q_text,
    ties_sentences,
)

__all__ = ["answer_sentence", "describe_dataset", "run_facts", "trust_sentence"]

_SEEDS = {"model": "", "run": ", one seed for all models", "chunk": ", a seed per chunk of models"}


def describe_dataset(spec: Any) -> str:
    if not isinstance(spec, dict):
        return str(spec)
    kind = spec.get("kind", "?")
    where = spec.get("path") or spec.get("dataset")
    extras = [f"{key} {spec[key]}" for key in ("validation", "evaluate", "size") if key in spec]
    text = f"{kind}: {where}" if where else str(kind)
    return text + (f" ({', '.join(extras)})" if extras else "")


def _percent(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if not values.size:
        return "not recorded"
    spread = f" (std {100 * values.std(ddof=1):.1f} points)" if values.size > 1 else ""
    return f"{100 * values.mean():.1f}%{spread}"


def _control(store: RunStore, key: str) -> str:
    try:
        control = read_json(store.path("control.json"))
    except (FileNotFoundError, CorruptFileError):
        return "not recorded for this run"
    accuracy = control.get("accuracy", {}).get(key)
    return f"{100 * accuracy:.1f}%" if accuracy is not None else "not recorded for this output"


def _estimator(influence: ClassInfluence, design: str, alpha: float) -> str:
    estimate = influence.estimate_
    if estimate.estimator == "regression":
        return "regression on all groups (least squares)"
    if round_size(design, alpha) is not None:
        return "difference in means; errors over design rounds"
    return "difference in means (the paper's)"


def _imported_from(store: RunStore) -> str:
    """Where an imported run's models came from: the files recorded, as far as known."""
    files = []
    for chunk in store.chunks:
        name = ((store.chunk_meta(chunk) or {}).get("record") or {}).get("file")
        if name and name not in files:
            files.append(str(name))
    if not files:
        return "imported results"
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"imported from {shown}"


def run_facts(store: RunStore, influence: ClassInfluence) -> list[tuple[str, str]]:
    """(label, value) pairs: datasets, models, design, recipe, accuracy, control, stability."""
    config = store.config
    params = config.trainer.params
    key = influence.key_
    metrics = store.model_metrics(key)
    healthy = metrics["status"] == "ok"
    name = parse_key(key)[0]
    target = next((t for t in params.get("targets", []) if t.get("name") == name), {})
    if store.external:
        source_text = target_text = _imported_from(store)
        recipe = "trained elsewhere"
    else:
        source_text = describe_dataset(params.get("source", config.trainer.type))
        target_text = describe_dataset(target) if target else name
        recipe = ", ".join(f"{k} {v}" for k, v in (params.get("recipe") or {}).items()) or (
            f"{config.trainer.type} trainer defaults"
        )
    seconds = metrics["seconds"][healthy]
    seconds = seconds[seconds > 0]
    facts = [
        ("Source", f"{source_text} — {len(store.groups):,} groups"),
        (
            "Target",
            f"{target_text} — {influence.example_ids_.size:,} examples, "
            f"{len(influence.target_classes_)} classes",
        ),
        (
            "Models",
            f"{influence.n_models_:,} used"
            + (f", {influence.n_excluded_} unhealthy left out" if influence.n_excluded_ else ""),
        ),
        (
            "Subsets",
            f"α = {config.run.alpha:g} of the groups each, {config.run.design} design"
            + _SEEDS[config.run.seeds],
        ),
        ("Estimator", _estimator(influence, config.run.design, config.run.alpha)),
        ("Trainer", f"{config.trainer.type}: {recipe}"),
        ("Target accuracy of the models", _percent(metrics["target_accuracy"][healthy])),
        ("Untrained backbone, same head", _control(store, key)),
        (
            "Time per model",
            f"{np.median(seconds):.2f} s (median)" if seconds.size else "not recorded",
        ),
    ]
    agreement = influence.agreement_
    if agreement is not None:
        k = agreement.k
        facts.append(
            (
                f"An independent run of {agreement.models:,} models would share",
                f"about {agreement.expected['top'] * k:.1f} of the top {k}, "
                f"{agreement.expected['bottom'] * k:.1f} of the bottom {k} (chance "
                f"{agreement.chance_share * k:.1f}); Spearman "
                f"{agreement.expected['spearman']:.2f}",
            )
        )
    stability = influence.stability_
    facts.append(
        (
            "Split-half stability (measured)",
            f"top {stability.k} shared {stability.top_overlap * stability.k:.1f}, bottom "
            f"{stability.bottom_overlap * stability.k:.1f} (chance "
            f"{stability.chance_overlap * stability.k:.1f}); Spearman {stability.spearman:.2f}"
            + ("; halves of whole chunks, so across seeds" if influence.seeds_ == "chunk" else "")
            if stability is not None
            else "needs at least 8 models (in 2 chunks, with a seed per chunk)",
        )
    )
    facts.append(
        (
            "Differences between models explained by their subsets",
            f"{max(influence.explained_, 0.0):.0%} (adjusted R²)"
            if influence.explained_ is not None
            else "needs 10 more models than groups",
        )
    )
    facts.append(
        (
            "Held-out LDS",
            f"{influence.lds_:.2f}" if influence.lds_ is not None else "too few models to hold out",
        )
    )
    # A card with nothing to say is left out.
    return [(name, value) for name, value in facts if not value.startswith(_SAYS_NOTHING)]


_SAYS_NOTHING = ("not recorded", "needs ", "too few models")


def answer_sentence(influence: ClassInfluence, shown: int = 5) -> str:
    """What the evidence supports, in one paragraph: the classes the q-values flag, by name
    with their estimates, or that none is flagged yet and how many models the bottom needs."""
    table = influence.classes_.dropna(subset=["influence"])
    flagged = table[table["q_value"] <= FLAG_LEVEL]
    above, below = flagged[flagged["influence"] > 0], flagged[flagged["influence"] < 0][::-1]
    parts = []
    for rows, verb in ((above, "more"), (below, "less")):
        if len(rows):
            named = [
                f"{r.group} ({r.influence:+.2f} "
                f"[{r.simultaneous_low:+.2f}, {r.simultaneous_high:+.2f}], "
                f"q {q_text(r.q_value)})"
                for r in rows.head(shown).itertuples()
            ]
            if len(rows) > shown:
                named.append(f"{len(rows) - shown} more")
            listed = " and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named)
            parts.append(f"{listed} help{'s' if len(rows) == 1 else ''} the target {verb}")
    if parts:
        rest = len(table) - len(flagged)
        text = (
            f"Compared with the average source class, {', and '.join(parts)} "
            f"({influence.unit_}, {influence.level:.0%} intervals simultaneous over all "
            f"{len(table)} classes). The other {rest} are not "
            "distinguishable from the average class yet."
        )
    else:
        text = "No source class is distinguishable from the average class yet."
    agreement = influence.agreement_
    if agreement is not None and agreement.expected["bottom"] < agreement.targets["bottom"]:
        bottom = agreement_end_words(agreement, "bottom")
        text += f" The bottom of the list is not yet stable: {bottom}."
        text += "".join(f" {sentence}" for sentence in ties_sentences(agreement, ["bottom"]))
    return text


def trust_sentence(influence: ClassInfluence) -> str:
    """One paragraph that says how far the rankings below can be trusted."""
    table = influence.classes_.dropna(subset=["influence"])
    parts = [flagged_sentence(*influence.flagged(), len(table))]
    agreement = influence.agreement_
    if agreement is not None:
        parts.append(f"At the top, {agreement_end_words(agreement, 'top')}.")
        parts += ties_sentences(agreement, ["top"])
        if agreement.expected["spearman"] < 0.9:
            parts.append(
                "Read the intervals and q-values, not the order, of classes whose intervals "
                "overlap."
            )
    if influence.stability_ is not None and influence.seeds_ == "run":
        parts.append(SHARED_SEED_CAVEAT)
    if influence.lds_ is not None:
        parts.append(
            f"Held-out models' mean output is predicted from their subsets with Spearman "
            f"{influence.lds_:.2f} (LDS)."
        )
    if influence.explained_ is not None:
        parts.append(explained_sentence(influence.explained_))
    parts.append(RELATIVE_NOTE.replace("`", ""))
    return " ".join(parts)
