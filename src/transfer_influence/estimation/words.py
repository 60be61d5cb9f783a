"""What the estimates and their diagnostics mean, in the sentences the CLI and report print."""

from __future__ import annotations

from .diagnostics import SplitHalf
from .significance import FLAG_LEVEL

__all__ = [
    "BELOW_AVERAGE",
    "RELATIVE_NOTE",
    "SHARED_SEED_CAVEAT",
    "explained_sentence",
    "flagged_sentence",
    "q_text",
    "split_half_method",
    "stability_sentences",
]

# With subsets of a fixed size, holding class k means leaving out another class: a negative
# influence says k helps less than the class it displaces on average, not that it does harm.
BELOW_AVERAGE = "least helpful (below the average class)"
RELATIVE_NOTE = (
    "Influence compares models with and without a class at a fixed subset size, so it is "
    "relative to the average class: a negative value means less helpful than average, not "
    "harmful. Whether removing a class helps is what `prune` measures."
)
SHARED_SEED_CAVEAT = (
    "All models share one seed, so this is the ranking's stability for that seed; a run with "
    "another seed may rank somewhat differently."
)


def q_text(value: float) -> str:
    """A q-value as printed: two decimals, or "<0.01"."""
    return "<0.01" if value < 0.01 else f"{value:.2f}"


def split_half_method(seed_per_chunk: bool) -> str:
    """What split-half stability estimates each half with: slopes within chunks where seeds
    are per chunk, else the difference in means."""
    return "slopes within chunks" if seed_per_chunk else "difference in means"


def stability_sentences(stability: SplitHalf) -> list[str]:
    """The agreement of two halves of the models at both ends and overall, in words."""
    return [
        f"Top: {stability.overlap_words('top')}.",
        f"Bottom: {stability.overlap_words('bottom')}.",
        f"Whole ranking: split-half Spearman {stability.spearman:.2f}; "
        f"{stability.projection(0.9)}.",
    ]


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
