"""How long the report takes for a large run: 1,000 source classes and 10,000 target images.

An imported run of ``--models`` simulated models (additive class effects plus noise, so the
default estimator is the regression once m >= K + 10), with random 32 x 32 images for the
source (``--per-class`` per class) and the target, timed from ``Report(...).build`` to the
written index.html. The goal: under a minute on the 2-core machine.

    python benchmarks/report_speed.py [--classes 1000] [--examples 10000] [--models 1100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save_result  # noqa: E402
from transfer_influence import RunStore, record_arrays  # noqa: E402
from transfer_influence.report import Report  # noqa: E402


def make_run(folder: Path, classes: int, examples: int, models: int, per_class: int) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(examples) % 10
    masks = np.zeros((models, classes), bool)
    for i in range(models):
        masks[i, rng.choice(classes, classes // 2, replace=False)] = True
    effects = rng.normal(0, 0.002, (classes, examples)).astype(np.float32)
    outputs = 0.6 + masks.astype(np.float32) @ effects
    outputs += rng.normal(0, 0.05, outputs.shape).astype(np.float32)
    record_arrays(
        folder / "run",
        {
            "masks": masks,
            "p_correct": np.clip(outputs, 0, 1),
            "labels": labels,
            "source_classes": np.array([f"source{k:04d}" for k in range(classes)]),
            "target_classes": np.array([f"target{c}" for c in range(10)]),
        },
    )
    np.savez(
        folder / "source.npz",
        train_images=rng.integers(0, 256, (classes * per_class, 32, 32, 3), dtype=np.uint8),
        train_labels=np.repeat(np.arange(classes), per_class),
        class_names=np.array([f"source{k:04d}" for k in range(classes)]),
    )
    np.savez(
        folder / "target.npz",
        test_images=rng.integers(0, 256, (examples, 32, 32, 3), dtype=np.uint8),
        test_labels=labels,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--models", type=int, default=1100)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_run(folder, args.classes, args.examples, args.models, args.per_class)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = Report(
                source_data=str(folder / "source.npz"), target_data=str(folder / "target.npz")
            ).build(RunStore(folder / "run"))
            seconds.append(time.perf_counter() - start)
            print(f"report in {seconds[-1]:.1f} s ({report.influence_.estimate_.estimator})")
        size = report.path_.stat().st_size
    result = {
        "classes": args.classes,
        "examples": args.examples,
        "models": args.models,
        "estimator": report.influence_.estimate_.estimator,
        "seconds": seconds,
        "median_seconds": float(np.median(seconds)),
        "html_bytes": size,
    }
    print(f"median {result['median_seconds']:.1f} s; index.html {size / 1e6:.1f} MB")
    print(f"wrote {save_result('report_speed', result)}")


if __name__ == "__main__":
    main()
