"""docs/results.md is generated from the committed benchmark results, never typed by hand."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_results_page_is_generated_from_the_newest_results():
    checked = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "results_page.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
