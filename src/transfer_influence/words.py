"""What the estimates and their diagnostics mean, in the sentences the CLI and report print:
the one presentation layer (``estimation`` returns numbers)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from .estimation.agreement import Agreement
from .estimation.classes import RELATIVE_NOTE
from .estimation.diagnostics import SplitHalf
from .estimation.significance import FLAG_LEVEL

__all__ = [
    "BELOW_AVERAGE",
    "agreement_sentences",
    "agreement_end_words",
    "RELATIVE_NOTE",
    "SHARED_SEED_CAVEAT",
    "ends_note",
    "explained_sentence",
    "flagged_sentence",
    "growth_words",
    "out_of_reach_reason",
    "q_text",
    "split_half_method",
    "split_half_measured",
    "ties_sentences",
]

# With subsets of a fixed size, holding class k means leaving out another class: a negative
# influence says k helps less than the class it displaces on average, not that it does harm.
BELOW_AVERAGE = "least helpful (below the average class)"
SHARED_SEED_CAVEAT = (
    "All models share one seed, so this is the ranking's stability for that seed; a run with "
    "another seed may rank somewhat differently."
)


def q_text(value: float) -> str:
    """A q-value as printed: two decimals, or "<0.01"; more where two would put it on the
    other side of the flag level (0.0503 is not flagged at q <= 0.05 and never reads "0.05")."""
    if value < 0.01:
        return "<0.01"
    for decimals in range(2, 16):
        text = f"{value:.{decimals}f}"
        if (float(text) <= FLAG_LEVEL) == (value <= FLAG_LEVEL):
            return text
    return repr(float(value))


def ends_note(level: float, groups: int) -> str:
    """What the intervals beside a list of the most and least helpful groups are."""
    return (
        f"{level:.0%} simultaneous over the {groups} groups, so they hold for the ends as "
        "picked (the CSVs also hold plain intervals, which cover picked ends less often)"
    )


def split_half_method(seed_per_chunk: bool, estimator: str = "difference") -> str:
    """What split-half stability estimates each half with: the regression or the difference
    in means, as slopes within chunks where seeds are per chunk."""
    if estimator == "regression":
        return "regression within chunks" if seed_per_chunk else "regression"
    return "slopes within chunks" if seed_per_chunk else "difference in means"


def split_half_measured(stability: SplitHalf) -> str:
    """What the halves shared, as measured, without a projection."""
    return (
        f"the halves share {stability.top_shared:.1f} of their top and "
        f"{stability.bottom_shared:.1f} of their bottom {stability.k} "
        f"({stability.chance_overlap * stability.k:.1f} by chance); "
        f"Spearman {stability.spearman:.2f}."
    )


def flagged_sentence(helps: int, below: int, groups: int) -> str:
    """How many groups the q-values flag, against what chance alone would flag."""
    if helps + below == 0:
        return (
            f"No class is distinguishable from the average class at a false discovery rate of "
            f"{FLAG_LEVEL:.0%} (q-values over all {groups} classes)."
        )
    return (
        f"{helps} class(es) help more and {below} less than the average class at a false "
        f"discovery rate of {FLAG_LEVEL:.0%} (q-values over all {groups} classes: about "
        f"{FLAG_LEVEL:.0%} of the flagged may be chance; with no real effects, 19 runs in 20 "
        "would flag none)."
    )


def explained_sentence(share: float) -> str:
    """What :func:`.diagnostics.explained_by_subsets` means for the user, in one sentence."""
    text = (
        f"The models' subsets explain {max(share, 0.0):.0%} of how models differ in their mean "
        "output (adjusted R\u00b2); the rest is training noise"
    )
    if share >= 0.5:
        return text + "."
    return text + ", which no estimator removes: more models or a steadier recipe reduce it."


def _rough(models: float) -> str:
    digits = max(len(str(int(models))) - 2, 0)  # a projection is rough: two figures
    return f"{round(models, -digits):,.0f}"


def _needed_range_words(
    agreement: Agreement, metric: str, wanted: str, noun: str = "classes"
) -> str:
    point, low, high = agreement.needed[metric]
    if math.isnan(point):
        return f"no projection to {wanted} while the agreement is no more than chance's"
    if not math.isfinite(point):
        if agreement.ties.fewest > 0.0 and math.isfinite(low):
            return (
                f"no number of models is projected to give {wanted}: "
                f"{_tied_share_words(agreement, noun)} (80% range {_rough(low)} to out of reach)"
            )
        return f"no number of models is projected to give {wanted}"
    if point <= agreement.models:
        return f"it gives {wanted} already"
    upper = "out of reach" if not math.isfinite(high) else _rough(high)
    return f"about {_rough(point)} models would give {wanted} (80% range {_rough(low)} to {upper})"


def _tied_share_words(agreement: Agreement, noun: str = "classes") -> str:
    return f"at least {agreement.ties.fewest:.0%} of the {noun} look tied"


def out_of_reach_reason(agreement: Agreement) -> str:
    """Why no number of models reaches a target: classes whose order is chance's."""
    if agreement.ties.fewest > 0.0:
        return (
            f"{_tied_share_words(agreement)}, and tied classes keep their order to chance at "
            "any size"
        )
    return "classes whose effects are estimated to be equal keep their order to chance at any size"


def agreement_end_words(agreement: Agreement, end: str, noun: str = "classes") -> str:
    """What an independent run of this size would share of one end ("top" or "bottom")."""
    k = agreement.k
    low, high = agreement.ranges[end]
    wanted = f"{round(agreement.targets[end] * k)} of {k}"
    return (
        f"an independent run of {agreement.models:,} models would share about "
        f"{agreement.expected[end] * k:.1f} of this {end} {k} (80% range {low * k:.1f} to "
        f"{high * k:.1f}; {agreement.chance_share * k:.1f} by chance); "
        f"{_needed_range_words(agreement, end, wanted, noun)}"
    )


def agreement_sentences(agreement: Agreement, noun: str = "classes") -> list[str]:
    """Would an independent run of this size agree, at both ends and overall, in words
    (``noun``: what was ranked)."""
    low, high = agreement.ranges["spearman"]
    target = agreement.targets["spearman"]
    sentences = [
        f"Top: {agreement_end_words(agreement, 'top', noun)}.",
        f"Bottom: {agreement_end_words(agreement, 'bottom', noun)}.",
        f"Whole ranking: Spearman about {agreement.expected['spearman']:.2f} with an "
        f"independent run (80% range {low:.2f} to {high:.2f}); "
        f"{_needed_range_words(agreement, 'spearman', f'Spearman {target:g}', noun)}.",
    ]
    return sentences + ties_sentences(agreement, agreement.needed, noun)


def ties_sentences(
    agreement: Agreement, metrics: Iterable[str], noun: str = "classes"
) -> list[str]:
    """Why a projection of one of ``metrics`` ends out of reach, where ties are why: classes
    whose effects may be exactly equal (none, or one sentence)."""
    needed = agreement.needed
    unbounded = any(name in needed and math.isinf(needed[name][2]) for name in metrics)
    if not (agreement.ties.plausible > 0.0 and unbounded):
        return []
    return [
        f"These errors cannot rule out that up to {agreement.ties.plausible:.0%} of the "
        f"{noun} have exactly the same effect; their order would be chance's with any number "
        "of models, which is where a range ends out of reach."
    ]


def growth_words(agreement: Agreement, targets: dict[str, float]) -> str:
    """One round of growing a run: each target's expected agreement, its 80% range (whose low
    end decides) and projection."""
    k = agreement.k
    parts = []
    for name, goal in targets.items():
        low, high = agreement.ranges[name]
        if name == "spearman":
            have = f"Spearman {agreement.expected[name]:.2f} ({low:.2f} to {high:.2f})"
            want = f"Spearman {goal:g}"
        else:
            shared = agreement.expected[name] * k
            have = f"{name} {shared:.1f} of {k} ({low * k:.1f} to {high * k:.1f})"
            want = f"{round(goal * k)} of {k}"
        parts.append(f"{have}, {_needed_range_words(agreement, name, want)}")
    return "an independent run of this size would agree on " + "; ".join(parts)
