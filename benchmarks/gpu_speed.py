"""Seconds per subset model on the reference case (CIFAR-100 -> CIFAR-10), and accuracy.

For each variant, trains subset models with the built-in trainer (pretraining on a random half
of CIFAR-100, fixed-feature transfer to CIFAR-10, outputs on its 10,000 test images) and
reports seconds per model, achieved TFLOP/s and mean target accuracy; also 100-class models
and an untrained backbone with the same head (the control). The "plain" variant is the same
network, epochs and batch size trained one model at a time (stack = 1): the baseline loop.

    python benchmarks/gpu_speed.py [--datasets DIR] [--variants plain,stack8,...] [--models N]

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
from transfer_influence.subsets import Job, make_jobs
from transfer_influence.trainers.builtin import BuiltinTrainer
from transfer_influence.trainers.stack import StackedResNet

BASE = {"widths": [64, 128, 256], "epochs": 6, "batch_size": 512}
VARIANTS = {
    "plain": {"stack": 1},
    "stack8": {"stack": 8},
    "stack16": {"stack": 16},
    "stack16-e4": {"stack": 16, "epochs": 4},
    "stack16-w48-e5": {"stack": 16, "widths": [48, 96, 192], "epochs": 5},
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


def _time_models(trainer: BuiltinTrainer, jobs: list[Job]) -> tuple[float, list[float]]:
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    results = trainer.train(jobs)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    seconds = (time.perf_counter() - start) / len(jobs)
    labels = trainer.targets[0].test.labels
    accuracy = [
        float((r.logits["cifar10/fixed_feature"].argmax(1) == labels).mean()) for r in results
    ]
    return seconds, accuracy


def _untrained_accuracy(trainer: BuiltinTrainer, models: int, groups: int) -> list[float]:
    net = StackedResNet(models, trainer.recipe.widths, groups)
    net.reset_parameters(list(range(models)))
    logits = trainer.fixed_feature_logits(net.to(trainer.device), trainer.targets[0])
    labels = trainer.targets[0].test.labels
    return [float((lg.argmax(1) == labels).mean()) for lg in logits]


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
        help="a toy recipe (widths 8-16-32, 1 epoch) to check the script on CPU",
    )
    args = parser.parse_args()
    source = {"kind": "folder", "path": f"{args.datasets}/cifar100"}
    target = {"name": "cifar10", "kind": "folder", "path": f"{args.datasets}/cifar10"}
    if args.tiny:
        BASE.update(widths=[8, 16, 32], epochs=1, batch_size=32)
        for variant in VARIANTS.values():
            variant.pop("widths", None)
            variant["epochs"] = 1
    start = time.perf_counter()
    base = BuiltinTrainer(source, [target], recipe=BASE)
    groups = len(base.source.class_names)
    print(f"datasets loaded in {time.perf_counter() - start:.1f} s on {base.device}", flush=True)
    report: dict = {"variants": {}, "reference_plain_loop_s_per_model": 2.4}
    for name in args.variants.split(","):
        recipe = dict(BASE, **VARIANTS[name])
        trainer = BuiltinTrainer(source, [target], recipe=recipe)
        trainer._on_device = base._on_device  # share the GPU-resident data
        count = 2 if recipe["stack"] == 1 else args.models
        warm = make_jobs(range(1000, 1000 + recipe["stack"]), groups, 0.5, base_seed=1)
        _time_models(trainer, warm)  # warm-up: kernels, cuDNN autotuning
        seconds, accuracy = _time_models(trainer, make_jobs(range(count), groups, 0.5, 0))
        images = len(base.source) // 2 * recipe["epochs"]
        flops = 6 * _macs_per_image(recipe["widths"]) * images
        report["variants"][name] = {
            "recipe": recipe,
            "models": count,
            "seconds_per_model": seconds,
            "tflops": flops / seconds / 1e12,
            "mean_accuracy_50_classes": statistics.mean(accuracy),
            "std_accuracy_50_classes": statistics.pstdev(accuracy),
        }
        _write(report, args.out)
        print(
            f"{name:16s} {seconds:6.2f} s/model  {flops / seconds / 1e12:6.1f} TFLOP/s  "
            f"acc {statistics.mean(accuracy):.3f}",
            flush=True,
        )
    full = np.ones(groups, dtype=bool)
    trainer = BuiltinTrainer(source, [target], recipe=dict(BASE, stack=8))
    trainer._on_device = base._on_device
    _, accuracy_100 = _time_models(trainer, [Job(i, 500 + i, full) for i in range(8)])
    report["mean_accuracy_100_classes"] = statistics.mean(accuracy_100)
    _write(report, args.out)
    report["mean_accuracy_untrained_control"] = statistics.mean(
        _untrained_accuracy(trainer, 8, groups)
    )
    print(
        f"100-class models acc {report['mean_accuracy_100_classes']:.3f}, untrained control "
        f"acc {report['mean_accuracy_untrained_control']:.3f}",
        flush=True,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = save_result("gpu_speed", report, device)
    if args.out:
        Path(args.out).write_text(json.dumps(json.loads(path.read_text()), indent=2))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
