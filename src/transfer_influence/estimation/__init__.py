"""Influence estimates with their uncertainty, from masks and outputs (no I/O below the facades).

- :mod:`.accumulator`: the streaming estimator (difference in means or joint regression),
  with standard errors across models, design rounds and seed chunks;
- :mod:`.regression`, :mod:`.rounds`, :mod:`.centring`: its parts;
- :mod:`.significance`: p- and q-values of the estimates (selection over groups);
- :mod:`.diagnostics`: how far to trust a ranking (split-half stability, LDS, explained share);
- :mod:`.agreement`: would an independent run of a size agree (empirical Bayes, calibrated);
- :mod:`.classes` and :mod:`.source_examples`: the facades that stream a run's chunks through
  it, for class-level and example-level runs.
"""

from .accumulator import (
    ESTIMATORS,
    Influence,
    InfluenceAccumulator,
    InfluenceEstimate,
    InfluenceWarning,
    estimate_influence,
)
from .classes import ClassInfluence, run_agreement
from .source_examples import ExampleInfluence

__all__ = [
    "ESTIMATORS",
    "ClassInfluence",
    "ExampleInfluence",
    "Influence",
    "InfluenceAccumulator",
    "InfluenceEstimate",
    "InfluenceWarning",
    "estimate_influence",
    "run_agreement",
]
