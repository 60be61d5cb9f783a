"""Estimator speed: influence with standard errors vs one float32 matrix product.

The bar: K=1000 groups, n=10,000 target examples, m=10,000 models, standard errors
included, in at most 2x the time of one float32 (K x m) @ (m x n) product on the same machine.

    python benchmarks/estimator_speed.py [--groups 1000 --examples 10000 --models 10000]

Reports medians over --repeats runs, each timed in the same process, and writes a JSON result
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from _common import save_result
from transfer_influence import estimate_influence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    masks = rng.random((args.models, args.groups)) < 0.5
    outputs = rng.random((args.models, args.examples), dtype=np.float32)
    left = masks.T.astype(np.float32)

    matmul, estimate = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        left @ outputs
        matmul.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = estimate_influence(masks, outputs)
        estimate.append(time.perf_counter() - start)
    assert np.isfinite(result.per_example.stderr).all()
    ratio = statistics.median(e / m for e, m in zip(estimate, matmul, strict=True))
    summary = {
        "shape": {"groups": args.groups, "examples": args.examples, "models": args.models},
        "matmul_seconds_median": statistics.median(matmul),
        "estimate_seconds_median": statistics.median(estimate),
        "ratio_median": ratio,
        "target_ratio": 2.0,
    }
    path = save_result("estimator_speed", summary)
    print(
        f"float32 matmul {summary['matmul_seconds_median']:.2f} s, "
        f"estimate with standard errors {summary['estimate_seconds_median']:.2f} s, "
        f"ratio {ratio:.2f} (target <= 2.0); wrote {path}"
    )


if __name__ == "__main__":
    main()
