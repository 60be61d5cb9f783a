"""Analyses of a fitted :class:`~transfer_influence.ClassInfluence`, each returning a DataFrame."""

from .examples import failure_modes, group_index, most_hurt, projection
from .leakage import duplicate_search, extremeness, find_leakage, image_signatures
from .rankings import class_matrix, top_groups

__all__ = [
    "class_matrix",
    "duplicate_search",
    "extremeness",
    "failure_modes",
    "find_leakage",
    "group_index",
    "image_signatures",
    "most_hurt",
    "projection",
    "top_groups",
]
