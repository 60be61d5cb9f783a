"""Execution engines: where chunks run. The run store decides what runs."""

from .local import run_local, work

__all__ = ["run_local", "work"]
