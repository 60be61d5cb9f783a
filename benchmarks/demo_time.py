"""How long `transfer-influence demo` takes, as a user runs it: the command itself in a fresh
process, default models and threads, N times in a row on a quiet machine; the median is the
figure the README quotes.

    python benchmarks/demo_time.py [--runs 3]

Writes benchmarks/results/demo_time-*.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import save_result

COMMAND = [sys.executable, "-m", "transfer_influence", "demo", "--quiet"]


def one_run(out: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([*COMMAND, "--out", str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the demo failed: {done.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "models": summary["models"],
        "recovered": summary["planted"]["recovered"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.runs):
            out = Path(scratch) / "demo"
            runs.append(one_run(out))
            shutil.rmtree(out)
            print(f"run {i + 1}: {runs[-1]['seconds']:.0f} s", flush=True)
    seconds = [r["seconds"] for r in runs]
    result = {
        "command": "transfer-influence demo",
        "runs": runs,
        "median_seconds": statistics.median(seconds),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
    }
    print(save_result("demo_time", result))


if __name__ == "__main__":
    main()
