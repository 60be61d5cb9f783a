"""What the default `estimate` costs next to the plain difference in means, diagnostics included.

Two cases, each timed with the CLI in this process (median of --repeats, both variants in the
same run so that the ratio is fair on a shared machine):

- the shared fixture (149 real models, K = 100, n = 10,000), recorded into a scratch run;
- the shipped simulated config scaled up (default K = 1,000 groups, n = 10,000 examples,
  m = 2,000 models), trained into a scratch run first (not timed).

For each: `estimate --estimator difference`, the default `estimate` (auto, with every
diagnostic) and `top` (no diagnostics).

    python benchmarks/estimate_cost.py [--groups 1000 --examples 10000 --models 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

from _common import save_result
from transfer_influence import RunStore, SimulatedTrainer, record_file
from transfer_influence.cli import main as cli
from transfer_influence.config import Config
from transfer_influence.engines import LocalEngine

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/cifar100-to-cifar10-149-models.npz"
VARIANTS = {
    "difference": ["estimate", "{run}", "--estimator", "difference", "--out", "{out}/d"],
    "default": ["estimate", "{run}", "--out", "{out}/a"],
    "top": ["top", "{run}"],
}


def timed(run: Path, out: Path, repeats: int) -> dict:
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    chosen = ""
    for _ in range(repeats):
        for name, args in VARIANTS.items():
            words = [a.format(run=run, out=out) for a in args]
            printed = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                code = cli(words)
            seconds[name].append(time.perf_counter() - start)
            if code != 0:
                raise SystemExit(f"{' '.join(words)} failed")
            if name == "default":
                chosen = next(
                    (line for line in printed.getvalue().splitlines() if "held-out LDS" in line),
                    "",
                )
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "seconds": seconds,
        "median_s": medians,
        "default_over_difference": medians["default"] / medians["difference"],
        "lds_line": chosen,
    }
    print(result)
    return result


def simulated_run(folder: Path, groups: int, examples: int, models: int) -> Path:
    params = {"groups": groups, "examples": examples, "classes": 10, "effect_scale": 0.05}
    config = Config.from_dict(
        {
            "run": {"models": models, "chunk_size": 100, "keep_logits": False,
                    "outputs": ["p_correct"]},
            "trainer": {"type": "simulated", "params": params},
        }
    )  # fmt: skip
    trainer = SimulatedTrainer(**params)
    store = RunStore.create(folder / "sim", config, trainer.describe())
    LocalEngine(workers=1, trainer=trainer).run(store, progress=True)
    return store.root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result: dict = {"repeats": args.repeats}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if FIXTURE.exists():
            record_file(folder / "fixture", FIXTURE, "cifar10")
            result["fixture"] = timed(folder / "fixture", folder, args.repeats)
        else:
            result["fixture"] = {"skipped": f"{FIXTURE} not found"}
        run = simulated_run(folder, args.groups, args.examples, args.models)
        result["scaled"] = {"groups": args.groups, "examples": args.examples,
                            "models": args.models} | timed(run, folder, args.repeats)  # fmt: skip
    print(save_result("estimate_cost", result))


if __name__ == "__main__":
    main()
