"""Margins of the test suite's assertions on trained CNNs, over seeds.

A test on trained models must hold on any machine: CPU kernels and BLAS change the trained
numbers as a new seed would. For each such assertion this reruns its setup with several seeds
and records the statistic next to its bound:

- demo (tests/test_demo.py, 64 models): the planted helpful classes' worst rank against the top
  quarter (4 of 16), and the planted harmful classes' least clear t statistic against the
  interval's critical value; control (48 models): intervals excluding zero against the bound;
- built-in trainer (tests/test_builtin.py): source accuracy > 0.5, fixed-feature accuracy above
  an untrained backbone's + 0.1;
- clustering (tests/test_clustering.py): median cluster purity of trained features > 0.7 and
  above an untrained backbone's + 0.3.

    python research/trained_margins.py [--seeds 0 1 2] [--skip-demo | --only-demo | --only-control]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.special import stdtrit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
os.environ.setdefault("TI_RESULTS", str(Path(__file__).resolve().parent / "results"))
from _common import save_result  # noqa: E402
from transfer_influence import ClassInfluence, RunStore  # noqa: E402
from transfer_influence.clustering import FeatureClusters  # noqa: E402
from transfer_influence.datasets import demo_dataset, planted_classes  # noqa: E402
from transfer_influence.engines import LocalEngine  # noqa: E402
from transfer_influence.experiments.demo import demo_config, recovery  # noqa: E402
from transfer_influence.subsets import Job  # noqa: E402
from transfer_influence.trainers import load_trainer  # noqa: E402
from transfer_influence.trainers.builtin import BuiltinTrainer, pretrained_features  # noqa: E402
from transfer_influence.trainers.networks import StackedResNet, build_network
from transfer_influence.trainers.stack import Recipe, extract_features  # noqa: E402

TESTED_MODELS, TESTED_CONTROL_MODELS = 64, 48  # the sizes tests/test_demo.py runs


def demo(seed: int, control: bool, folder: Path) -> dict:
    models = TESTED_CONTROL_MODELS if control else TESTED_MODELS
    config = demo_config(models, planted=not control, seed=seed)
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    store = RunStore.create(folder / f"demo-{seed}-{control}", config, trainer.describe())
    LocalEngine(workers=1, trainer=trainer).run(store, progress=False)
    model = ClassInfluence(estimator="regression", diagnostics=False).fit(store)
    table = model.classes_.set_index("group")
    found = recovery(model.classes_, planted=not control)
    result = {"seed": seed, "control": control, "recovered": found["recovered"]}
    if control:
        result |= {"excluding_zero": found["intervals_excluding_zero"],
                   "bound": found["chance_bound"]}  # fmt: skip
        return result
    kinds = planted_classes(True)
    critical = float(stdtrit(model.estimate_.overall.dof, 0.975))
    t = table["influence"] / table["stderr"]
    return result | {
        "helpful_t": [float(t[n]) for n in kinds["helpful"]],
        "worst_helpful_rank": max(found["ranks"][n] for n in kinds["helpful"]),
        "top_quarter": len(table) // 4,
        "harmful_t": [float(t[n]) for n in kinds["harmful"]],
        "critical_t": critical,
        # How many standard errors the least clear harmful class sits beyond its bound.
        "harmful_margin_se": float(-max(t[n] for n in kinds["harmful"]) - critical),
    }


def builtin(seed: int) -> dict:
    data = {"kind": "demo", "source_per_class": 80, "target_per_class": 100}
    recipe = {"widths": [16, 32, 64], "epochs": 8, "batch_size": 64, "stack": 2}
    torch.manual_seed(seed)
    trainer = BuiltinTrainer(data, [dict(data, name="stripes")], ("fixed_feature",), recipe)
    mask = np.zeros(16, dtype=bool)
    mask[[0, 1, 2, 3, 8, 9, 10, 11]] = True
    seeds = [11 + 2 * seed, 12 + 2 * seed]
    results = trainer.train([Job(0, seeds[0], mask), Job(1, seeds[1], mask)])
    labels = trainer.targets[0].test.labels
    net = StackedResNet(2, trainer.recipe.widths, 16)
    net.reset_parameters(seeds)
    untrained = trainer.fixed_feature_logits(net, trainer.targets[0])
    return {
        "seed": seed,
        "source_accuracy": [r.source_accuracy for r in results],
        "transfer_over_untrained": [
            float(
                (r.logits["stripes/fixed_feature"].argmax(1) == labels).mean()
                - (untrained[g].argmax(1) == labels).mean()
            )
            for g, r in enumerate(results)
        ],  # fmt: skip
    }


def clustering(seed: int) -> dict:
    source = demo_dataset("source", "train", source_per_class=80)
    recipe = Recipe(widths=(16, 32, 64), epochs=8, batch_size=64)
    trained = pretrained_features(source, recipe, seed=seed, device=torch.device("cpu"))
    net = build_network([seed], recipe, len(source.class_names), 16, torch.device("cpu"))
    untrained = extract_features(net, torch.from_numpy(np.array(source.images)))[0].numpy()
    purity = {
        name: float(
            FeatureClusters(16).fit(f, source.labels, source.names).clusters_["purity"].median()
        )
        for name, f in (("trained", trained), ("untrained", untrained))
    }
    return {"seed": seed, **purity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--only-demo", action="store_true", help="the planted demo alone")
    parser.add_argument("--only-control", action="store_true", help="the demo's control alone")
    args = parser.parse_args()
    result: dict = {"builtin": [], "clustering": [], "demo": []}
    for seed in [] if args.only_demo or args.only_control else args.seeds:
        result["builtin"].append(builtin(seed))
        print(result["builtin"][-1], flush=True)
        result["clustering"].append(clustering(seed))
        print(result["clustering"][-1], flush=True)
    controls = (False,) if args.only_demo else (True,) if args.only_control else (False, True)
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as scratch:
            for seed in args.seeds:
                for control in controls:
                    result["demo"].append(demo(seed, control, Path(scratch)))
                    print(result["demo"][-1], flush=True)
    print(save_result("trained_margins", result))


if __name__ == "__main__":
    main()
