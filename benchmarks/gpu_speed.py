"""Seconds per subset model on the reference case (CIFAR-100 -> CIFAR-10), and accuracy.

For each variant, trains subset models with the built-in trainer (pretraining on a random half
of CIFAR-100, fixed-feature transfer to CIFAR-10, outputs on its 10,000 test images) and
reports seconds per model, achieved TFLOP/s and mean target accuracy; also 100-class models
and an untrained backbone with the same head (the control). The "plain" variant is the same
network, epochs and batch size trained one model at a time (stack = 1): the baseline loop.

    python benchmarks/gpu_speed.py [--datasets DIR] [--variants plain,stack16-fast-r20x4]
                                    [--models N] [--tiny] [--no-baselines]

Writes one JSON result to benchmarks/results/ (and to --out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import save_result
from transfer_influence.provenance import provenance
from transfer_influence.subsets import Job, make_jobs
from transfer_influence.trainers.builtin import BuiltinTrainer

BASE = {"widths": [64, 128, 256], "epochs": 6, "batch_size": 512}
FAST = {"pool": "max+mean", "low_res_size": 24, "low_res_epochs": 3}
# Cheapest first where it matters: a time limit keeps what was measured.
VARIANTS = {
    "plain": {"stack": 1},
    "stack16": {"stack": 16},
    "stack16-maxmean": {"stack": 16, "pool": "max+mean"},
    "stack16-fast": {"stack": 16, **FAST},
    "plain-fast": {"stack": 1, **FAST},
    "stack16-fast-r20x4": {"stack": 16, **FAST, "low_res_size": 20, "low_res_epochs": 4},
    "stack16-fast-e5": {"stack": 16, **FAST, "epochs": 5},
    "stack16-fast-e8-r16x5": {
        "stack": 16,
        **FAST,
        "epochs": 8,
        "low_res_size": 16,
        "low_res_epochs": 5,
    },
    "stack32-fast": {"stack": 32, **FAST},
    # Candidates for half the time of stack16-fast-r20x4 at its accuracy.
    "stack16-fast-e4-r16x3": {
        "stack": 16,
        **FAST,
        "epochs": 4,
        "low_res_size": 16,
        "low_res_epochs": 3,
    },
    "stack16-fast-e5-r16x4": {
        "stack": 16,
        **FAST,
        "epochs": 5,
        "low_res_size": 16,
        "low_res_epochs": 4,
    },
    "stack16-fast-e4-r16x3-p50": {
        "stack": 16,
        **FAST,
        "epochs": 4,
        "low_res_size": 16,
        "low_res_epochs": 3,
        "probe_steps": 50,
    },
    "stack16-fast-e4-r16x3-b1024": {
        "stack": 16,
        **FAST,
        "epochs": 4,
        "low_res_size": 16,
        "low_res_epochs": 3,
        "batch_size": 1024,
    },
    "stack16-fast-e6-r16x5-w48": {
        "stack": 16,
        **FAST,
        "widths": [48, 96, 192],
        "low_res_size": 16,
        "low_res_epochs": 5,
    },
}


def _macs_per_image(widths: list[int], size: int = 32) -> float:
    """Multiply-accumulates of one forward pass (convolutions only; they dominate)."""
    macs, side, c_in = 3 * widths[0] * 9 * size * size, size, widths[0]
    for i, width in enumerate(widths):
        macs += c_in * width * 9 * side * side  # conv before pooling
        side //= 2
        if i in (0, len(widths) - 1):
            macs += 2 * width * width * 9 * side * side  # residual block
        c_in = width
    return macs


def _pretraining_flops(recipe: dict, images_per_epoch: int) -> float:
    """Forward and backward (3x the forward) over every epoch at its resolution."""
    low = recipe.get("low_res_epochs", 0) if recipe.get("low_res_size") else 0
    per_image = [_macs_per_image(recipe["widths"], recipe.get("low_res_size", 32))] * low
    per_image += [_macs_per_image(recipe["widths"])] * (recipe["epochs"] - low)
    return 6 * images_per_epoch * sum(per_image)


def _time_models(trainer: BuiltinTrainer, jobs: list[Job]) -> dict:
    trainer.phase_seconds = {"pretrain": 0.0, "transfer": 0.0}
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    results = trainer.train(jobs)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    seconds = (time.perf_counter() - start) / len(jobs)
    labels = trainer.targets[0].test.labels
    accuracy = [
        float((r.logits["cifar10/fixed_feature"].argmax(1) == labels).mean()) for r in results
    ]
    return {
        "seconds_per_model": seconds,
        "pretrain_seconds_per_model": trainer.phase_seconds["pretrain"] / len(jobs),
        "transfer_seconds_per_model": trainer.phase_seconds["transfer"] / len(jobs),
        "accuracy": accuracy,
        "source_accuracy": [r.source_accuracy for r in results],
    }


def _measure(
    name: str, base: BuiltinTrainer, source: dict, target: dict, jobs: list[Job], models: int
) -> dict:
    """Time one variant on the first jobs of ``jobs`` (the same jobs for every variant)."""
    recipe = dict(BASE, **VARIANTS[name])
    groups = len(base.source.class_names)
    trainer = BuiltinTrainer(source, [target], recipe=recipe)
    trainer._on_device = base._on_device  # share the GPU-resident data
    count = 2 if recipe["stack"] == 1 else max(models, recipe["stack"])
    # Warm-up (kernels, cuDNN autotuning) on the same shapes: one epoch at each resolution.
    low = min(1, recipe.get("low_res_epochs", 0))
    warm_trainer = BuiltinTrainer(
        source, [target], recipe=dict(recipe, epochs=1 + low, low_res_epochs=low)
    )
    warm_trainer._on_device = base._on_device
    _time_models(warm_trainer, make_jobs(range(1000, 1000 + recipe["stack"]), groups, 0.5, 1))
    timing = _time_models(trainer, jobs[:count])
    seconds = timing["seconds_per_model"]
    flops = _pretraining_flops(recipe, len(base.source) // 2)
    accuracy = timing["accuracy"]
    print(
        f"{name:22s} {seconds:5.2f} s/model (pretrain {timing['pretrain_seconds_per_model']:.2f})"
        f" {flops / seconds / 1e12:6.1f} TFLOP/s  acc {statistics.mean(accuracy):.4f}"
        f" (first 2: {statistics.mean(accuracy[:2]):.4f})",
        flush=True,
    )
    return {
        "recipe": recipe,
        "models": count,
        **timing,
        "tflops": flops / seconds / 1e12,
        "pretrain_tflops": flops / timing["pretrain_seconds_per_model"] / 1e12,
        "mean_accuracy_50_classes": statistics.mean(accuracy),
        "std_accuracy_50_classes": statistics.pstdev(accuracy),
        "mean_accuracy_first_2_models": statistics.mean(accuracy[:2]),
    }


def _write(report: dict, out: str | None) -> None:
    """Partial results survive a time limit: rewritten after every measurement."""
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=os.environ.get("TI_DATASETS", "../shared/datasets"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--models", type=int, default=16, help="models per variant (plain: 2)")
    parser.add_argument("--out", help="also write the JSON result here")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a toy recipe (widths 8-16-32, 2 epochs, stacks of 2) to check the script on CPU",
    )
    parser.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the 100-class and untrained-control accuracy baselines (variants only)",
    )
    args = parser.parse_args()
    source = {"kind": "folder", "path": f"{args.datasets}/cifar100"}
    target = {"name": "cifar10", "kind": "folder", "path": f"{args.datasets}/cifar10"}
    if args.tiny:
        BASE.update(widths=[8, 16, 32], epochs=2, batch_size=32)
        FAST.update(low_res_size=16, low_res_epochs=1)
        for variant in VARIANTS.values():
            variant.update(epochs=2, stack=min(variant["stack"], 2))
            if "low_res_epochs" in variant:
                variant.update(low_res_size=16, low_res_epochs=1)
    start = time.perf_counter()
    base = BuiltinTrainer(source, [target], recipe=BASE)
    groups = len(base.source.class_names)
    print(f"datasets loaded in {time.perf_counter() - start:.1f} s on {base.device}", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Partial results (a time limit) still name the machine and versions they measured.
    report: dict = {
        "benchmark": "gpu_speed",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **provenance(device),
        "variants": {},
        "reference_plain_loop_s_per_model": 2.4,
    }
    # The accuracy baselines first: a time limit then costs only the last variants.
    full = np.ones(groups, dtype=bool)
    recipes = {"base": dict(BASE, stack=8), "fast": dict(BASE, stack=8, **FAST)}
    for name, recipe in {} if args.no_baselines else recipes.items():
        trainer = BuiltinTrainer(source, [target], recipe=recipe)
        trainer._on_device = base._on_device
        timing = _time_models(trainer, [Job(i, 500 + i, full) for i in range(8)])
        control = trainer.untrained_control(models=8)["cifar10/fixed_feature"]
        report[f"mean_accuracy_100_classes_{name}"] = statistics.mean(timing["accuracy"])
        report[f"mean_accuracy_untrained_control_{name}"] = control
        _write(report, args.out)
        print(
            f"recipe {name}: 100-class models acc {statistics.mean(timing['accuracy']):.4f}, "
            f"untrained control acc {control:.4f}",
            flush=True,
        )
    jobs = make_jobs(range(max(args.models, 32)), groups, 0.5, 0)
    for name in args.variants.split(","):
        try:
            report["variants"][name] = _measure(name, base, source, target, jobs, args.models)
        except Exception as error:  # one failing variant must not cost the others
            report["variants"][name] = {"error": repr(error)}
            print(f"{name}: failed: {error!r}", flush=True)
        _write(report, args.out)
    path = save_result("gpu_speed", report, device)
    if args.out:
        Path(args.out).write_text(json.dumps(json.loads(path.read_text()), indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
