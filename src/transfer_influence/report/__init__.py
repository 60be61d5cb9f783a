"""The visual report: ``Report(...).build(store)`` writes RUN/report/."""

from .build import Report

__all__ = ["Report"]
