"""``transfer-influence cluster``: group a config's source images by a trained model's features
and write the groups file that makes a run's masks range over those clusters."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import ConfigError, load_config
from .analysis import count

__all__ = ["add_cluster_command"]


def add_cluster_command(sub: argparse._SubParsersAction) -> dict:
    cluster = sub.add_parser(
        "cluster", help="group the source images by a trained model's features (a groups file)"
    )
    cluster.add_argument("config", help="a built-in trainer config: its source and recipe")
    cluster.add_argument("--clusters", type=count, default=50, help="groups to make (default: 50)")
    cluster.add_argument(
        "--out", default="clusters.json",
        help="groups file to write (default: clusters.json; a .csv describing it goes beside)",
    )  # fmt: skip
    cluster.add_argument(
        "--features", metavar="FILE.npz",
        help="your own model's features (arrays example_ids and features); default: pretrain "
        "one model on every source image with the config's recipe",
    )  # fmt: skip
    cluster.add_argument("--seed", type=int, default=0, help="model and k-means seed")
    cluster.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.params.recipe.epochs=10",
    )  # fmt: skip
    cluster.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when there is one)")
    cluster.add_argument("--quiet", action="store_true", help="no progress bar")
    return {"cluster": _cmd_cluster}


def _cmd_cluster(args: argparse.Namespace) -> int:
    from ..clustering import FeatureClusters
    from ..datasets import load_dataset
    from ..datasets.arrays import load_features
    from ..files import atomic_write_bytes, csv_text, write_json
    from ..trainers.builtin import pretrained_features, resolve_device
    from ..trainers.stack import Recipe

    out = Path(args.out)
    if out.suffix == ".csv":
        raise ValueError(f"--out {out}: the groups file is JSON; its description goes to .csv")
    config = load_config(args.config, args.set)
    params = config.trainer.params
    if config.trainer.type != "builtin" or "source" not in params:
        raise ConfigError("cluster needs a built-in trainer config (it reads its source images)")
    source = load_dataset(params["source"], "train", "source")
    started = time.perf_counter()
    if args.features:
        features = load_features(args.features, source.example_ids)
    else:
        recipe = Recipe.from_dict(params.get("recipe"))
        device = resolve_device(args.device)
        print(
            f"pretraining one model on all {len(source):,} source images "
            f"({recipe.epochs} epochs, {device}) for its features ...",
            file=sys.stderr,
        )
        features = pretrained_features(source, recipe, args.seed, device, not args.quiet)
    clusters = FeatureClusters(args.clusters, seed=args.seed)
    clusters.fit(features, source.labels, source.names)
    table = clusters.clusters_
    write_json(out, clusters.mapping(source.example_ids))
    described = out.with_suffix(".csv")
    atomic_write_bytes(described, csv_text(table).encode())
    print(
        f"{args.clusters} clusters of {len(source):,} images ({features.shape[1]} features) in "
        f"{time.perf_counter() - started:.0f} s; median purity {table['purity'].median():.0%} "
        "(share of a cluster's most common class)"
    )
    for row in table.head(10).itertuples():
        print(f"  {row.group:<32} {row.images:>6,}  {row.classes}")
    if len(table) > 10:
        print(f"  ... {len(table) - 10} more in {described}")
    print(f"wrote {out}; use it with: --set trainer.params.groups={out}")
    return 0
