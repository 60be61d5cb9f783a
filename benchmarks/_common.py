"""Shared by the benchmarks: where results go and what each result records."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from transfer_influence.provenance import provenance

# Results are committed with the code; tests point TI_RESULTS elsewhere.
RESULTS = Path(os.environ.get("TI_RESULTS", Path(__file__).resolve().parent / "results"))


def save_result(name: str, result: dict, device: str = "cpu") -> Path:
    """Write one benchmark result as JSON with the machine and versions it was measured on."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        **provenance(device),
        **result,
    }
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
