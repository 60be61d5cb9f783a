"""transfer-influence: which source classes help or hurt a transfer target, and how sure we are.

Implements the data-based view of transfer learning of Jain et al. (CVPR 2023): train models
on random subsets of the source classes, transfer each, and compare their target outputs.
"""

from .config import Config, ConfigError, load_config
from .estimation import (
    ClassInfluence,
    Influence,
    InfluenceAccumulator,
    InfluenceEstimate,
    InfluenceWarning,
    estimate_influence,
)
from .outputs import register_output
from .provenance import package_version
from .store import RunError, RunStore
from .store.importing import export_arrays, export_file, record_arrays, record_file
from .subsets import Job, make_job, make_jobs
from .trainers import JobResult, SimulatedTrainer, TargetInfo, TaskDescription, Trainer

__version__ = package_version()

__all__ = [
    "ClassInfluence",
    "Config",
    "ConfigError",
    "Influence",
    "InfluenceAccumulator",
    "InfluenceEstimate",
    "InfluenceWarning",
    "Job",
    "JobResult",
    "RunError",
    "RunStore",
    "SimulatedTrainer",
    "TargetInfo",
    "TaskDescription",
    "Trainer",
    "estimate_influence",
    "load_config",
    "make_job",
    "make_jobs",
    "export_arrays",
    "export_file",
    "record_arrays",
    "record_file",
    "register_output",
]
