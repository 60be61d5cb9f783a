"""Looking up a source group or target class by name, or by index when no name matches."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["lookup"]


def lookup(names: Sequence[str], value: str | int, what: str) -> int:
    """The index of ``value`` in ``names``; a number that is not a name is an index."""
    names = [str(name) for name in names]
    if str(value) in names:
        return names.index(str(value))
    if isinstance(value, int) or str(value).isdigit():
        index = int(value)
        if 0 <= index < len(names):
            return index
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    raise ValueError(f"unknown {what} {value!r}; known: {shown}")
