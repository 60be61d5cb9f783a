"""Commands on the results of a run: ``report`` (the visual report), ``top`` (one query)
and ``prune`` (pretrain again without selected classes)."""

from __future__ import annotations

import argparse
import os
import sys

from ..estimation import ESTIMATORS
from ..estimation.significance import FLAG_LEVEL, chance_extreme
from ..files import csv_text, read_json
from ..outputs import with_unit
from ..store import RunStore
from ..words import (
    agreement_sentences,
    ends_note,
    q_text,
    split_half_measured,
    split_half_method,
)
from .engines import add_engine_arguments, engine_from_args

__all__ = ["RUN_HELP", "add_analysis_commands", "add_estimation_arguments", "count"]

RUN_HELP = "a run directory (made by `run` or `record`)"


def count(text: str) -> int:
    """An argument that counts something (workers, models, rows): a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_estimation_arguments(parser: argparse.ArgumentParser) -> None:
    """What to estimate: shared by estimate, report and top."""
    parser.add_argument("--target", help="target name (default: the run's first)")
    parser.add_argument("--mode", help="transfer mode (default: the run's first)")
    parser.add_argument(
        "--output", default="p_correct",
        help="model output to attribute: p_correct (default), correct, margin, neg_loss, "
        "balanced_correct, or package.module:function",
    )  # fmt: skip
    parser.add_argument(
        "--level", type=float, default=0.95, help="confidence level of intervals (default: 0.95)"
    )
    parser.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default="auto",
        help="difference in means (the paper's), joint regression (needs K + 10 models), or "
        "auto (the default): the regression only where its errors are clearly smaller",
    )


def add_analysis_commands(sub: argparse._SubParsersAction) -> dict:
    report = sub.add_parser("report", help="write the visual report RUN/report/index.html")
    report.add_argument(
        "run_dir", metavar="RUN", help="a run directory (made by `run` or `record`)"
    )
    add_estimation_arguments(report)
    report.add_argument("--top", type=count, default=10, help="classes per side (default: 10)")
    report.add_argument("--examples", type=count, default=8, help="images per class (default: 8)")
    report.add_argument(
        "--classes", default="", help="comma-separated source classes to project as well"
    )
    report.add_argument(
        "--source-data", help="source images (ImageFolder folder/tarballs or .npz) of a run "
        "not trained by the built-in trainer"
    )  # fmt: skip
    report.add_argument("--target-data", help="target images, likewise")
    report.add_argument(
        "--target-example",
        action="append",
        default=[],
        metavar="ID",
        help="example-level runs: a target image to attribute (repeatable; default: the 4 "
        "most affected)",
    )
    report.add_argument("--out", help="output folder (default: RUN/report)")
    report.add_argument("--quiet", action="store_true", help="no progress bars")

    top = sub.add_parser(
        "top", help="most (or least) helpful source classes, or the target examples they move"
    )
    top.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    add_estimation_arguments(top)
    which = top.add_mutually_exclusive_group()
    which.add_argument("--target-class", help="rank source classes on this target class")
    which.add_argument(
        "--source-class", help="list the target examples this source class influences most"
    )
    which.add_argument(
        "--most-hurt", action="store_true",
        help="list the target examples that one source class hurts most, with that class",
    )  # fmt: skip
    top.add_argument(
        "--bottom", "--harmful", dest="bottom", action="store_true",
        help="the least helpful instead (below the average class)",
    )  # fmt: skip
    top.add_argument(
        "-n", "--top", dest="n", type=count, default=10, help="rows to print (default: 10)"
    )
    top.add_argument("--csv", action="store_true", help="print CSV instead of a table")

    prune = sub.add_parser(
        "prune",
        help="pretrain again without the least helpful (or most helpful, or random) source "
        "classes: does removing them help?",
    )
    prune.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    prune.add_argument(
        "--remove", default="bottom,top,random",
        help="rules, comma-separated: bottom (least helpful first), top, random "
        "(default: all three); the full source always runs",
    )  # fmt: skip
    prune.add_argument("--k", default="10,20,40", help="classes to remove (default: 10,20,40)")
    prune.add_argument("--seeds", type=count, default=5, help="paired seeds (default: 5)")
    prune.add_argument("--keep-file", help="also pretrain on only the classes listed in this file")
    prune.add_argument("--drop-file", help="also pretrain without the classes listed in this file")
    prune.add_argument("--target", help="target name (default: the run's first)")
    prune.add_argument("--mode", help="transfer mode (default: the run's first)")
    prune.add_argument(
        "--output", default="p_correct", help="output that ranks the classes (default: p_correct)"
    )
    prune.add_argument(
        "--estimator", choices=ESTIMATORS, default="auto",
        help="how to rank (default: auto, the regression only where its errors are clearly "
        "smaller)",
    )  # fmt: skip
    prune.add_argument(
        "--time-limit", type=float, metavar="SECONDS",
        help="start no new model after this long (run again to continue)",
    )  # fmt: skip
    prune.add_argument(
        "--test-target",
        help="the target whose test split is reported (default: TARGET@test, which the built-in "
        "and simulated trainers add; your own trainer describes it)",
    )
    prune.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when there is one)")
    prune.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(prune)

    drill = sub.add_parser(
        "drill", help="an example-level run over the images of a run's most influential classes"
    )
    drill.add_argument("run_dir", help="a class-level run of the built-in trainer")
    drill.add_argument("--run-dir", dest="out", required=True, help="the new run's directory")
    drill.add_argument("--top", type=int, default=3, help="most helpful classes (default: 3)")
    drill.add_argument("--bottom", type=int, default=3, help="least helpful classes (default: 3)")
    drill.add_argument("--models", type=count, default=200, help="models (default: 200)")
    drill.add_argument(
        "--context", choices=("none", "all"), default="none",
        help="the other source images: in no model (default) or in every model",
    )  # fmt: skip
    add_engine_arguments(drill)
    drill.add_argument("--quiet", action="store_true", help="no progress bars")

    examples = sub.add_parser("examples", help="example-wise influence of an example-level run")
    examples.add_argument(
        "run_dir", metavar="RUN", help="a run directory (made by `run` or `record`)"
    )
    examples.add_argument(
        "--target-example", action="append", default=[], metavar="ID",
        help="also attribute this target example (id or index; repeatable)",
    )  # fmt: skip
    examples.add_argument(
        "--estimator", choices=("sparse", "difference"), default="sparse",
        help="sparse (lasso) regression (default) or the difference in means",
    )  # fmt: skip
    examples.add_argument(
        "--output", default="p_correct", help="model output to attribute (default: p_correct)"
    )
    examples.add_argument(
        "-n", "--top", dest="n", type=count, default=10, help="rows at each end (default: 10)"
    )
    return {
        "report": _cmd_report,
        "top": _cmd_top,
        "prune": _cmd_prune,
        "drill": _cmd_drill,
        "examples": _cmd_examples,
    }


def _integers(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} names no value")
    return values


def _cmd_prune(args: argparse.Namespace) -> int:
    from ..experiments.pruning import Pruning

    if args.device:
        os.environ["TRANSFER_INFLUENCE_DEVICE"] = args.device
    store = RunStore(args.run_dir)
    pruning = Pruning(
        remove=tuple(rule.strip() for rule in args.remove.split(",") if rule.strip()),
        k=tuple(_integers(args.k, "--k")),
        seeds=args.seeds,
        keep_file=args.keep_file,
        drop_file=args.drop_file,
        target=args.target,
        mode=args.mode,
        output=args.output,
        estimator=args.estimator,
        test_target=args.test_target,
    ).fit(store, engine_from_args(args), progress=not args.quiet, time_limit=args.time_limit)
    print(f"{len(pruning.results_)} model(s) in {pruning.folder_}/results.csv")
    if not pruning.complete_:
        print("not every planned model is trained yet: run the same command again to continue")
    print(read_json(pruning.folder_ / "summary.json")["headline"])
    if pruning.keep_list_ is not None:
        print(f"keep list: {pruning.folder_}/keep-bottom-k{pruning.chosen_k_}.txt")
    return 0


# The analysis stack (torch, matplotlib) is imported by the commands that use it, so that
# every other command starts fast.


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report import Report

    store = RunStore(args.run_dir)
    report = Report(
        target=args.target,
        mode=args.mode,
        output=args.output,
        estimator=args.estimator,
        level=args.level,
        top=args.top,
        examples=args.examples,
        classes=[name.strip() for name in args.classes.split(",") if name.strip()],
        source_data=args.source_data,
        target_data=args.target_data,
        target_examples=args.target_example,
    ).build(store, args.out, progress=not args.quiet and sys.stderr.isatty())
    print(f"wrote {report.path_} ({report.influence_.n_models_} models)")
    for what in report.left_out_:  # in the command's words: parameters become flags
        flags = what.replace("target_data", "--target-data").replace("source_data", "--source-data")
        print(f"left out: {flags}")
    if report.leakage_ is not None:
        leaks = int(report.leakage_["leak"].sum())
        alike = int(report.leakage_["look_alike"].sum())
        print(
            f"leakage: {leaks} target image(s) flagged, {alike} natural near-duplicate(s) set "
            "apart; see the report's Leakage section"
        )
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..analyses import failure_modes, most_hurt, projection, top_groups
    from ..estimation import ClassInfluence

    store = RunStore(args.run_dir)
    model = ClassInfluence(
        target=args.target, mode=args.mode, output=args.output, level=args.level,
        estimator=args.estimator, diagnostics=False,
    )  # fmt: skip
    model.fit(store, progress=sys.stderr.isatty())
    if args.most_hurt:
        table = most_hurt(model, args.n)
        columns = ["example", "example_id", "target_class", "source", "influence", "stderr"]
    elif args.source_class is not None:
        query = failure_modes if args.bottom else projection
        table = query(model, args.source_class, args.n)
        columns = ["example", "example_id", "target_class", "influence", "stderr"]
    else:
        table = top_groups(model, args.n, args.target_class, args.bottom)
        columns = ["rank", "group", "influence", "stderr", "ci_low", "ci_high"]
        columns += ["simultaneous_low", "simultaneous_high", "q_value"]
    table = table[columns]
    if args.csv:
        print(csv_text(with_unit(table, model.unit_)), end="")
        return 0
    unit = model.unit_
    # On screen the intervals that hold for the ends as picked; the CSV has both kinds.
    shown = table.drop(columns=["ci_low", "ci_high"], errors="ignore")
    shown = shown.rename(columns={"simultaneous_low": "low", "simultaneous_high": "high"})
    for column in ("influence", "stderr", "low", "high"):
        if column in shown:
            style = "{:.3f}" if column == "stderr" else "{:+.3f}"
            shown[column] = shown[column].map(style.format)
    if "q_value" in shown:
        shown["q_value"] = shown["q_value"].map(q_text)
    # Which side is which: target examples are the target's, sources the source classes.
    shown = shown.rename(columns={"target_class": "target class", "source": "source class"})
    with pd.option_context("display.width", 120, "display.max_colwidth", 40):
        print(f"{model.n_models_} models; influence on {args.output} ({unit})")
        print(shown.to_string(index=False))
    if "q_value" in table:
        groups = int(model.classes_["influence"].notna().sum())
        print(f"low, high: {ends_note(model.level, groups)}")
        print(f"q_value <= {FLAG_LEVEL}: distinguishable from the average class, allowing for "
              f"the choice among {len(model.classes_)} classes")  # fmt: skip
    else:  # target examples picked as extremes
        pairs = model.example_ids_.size * (len(model.groups_) if args.most_hurt else 1)
        print(f"picked out of {pairs:,}: with no real effects the most extreme lies about "
              f"{chance_extreme(pairs):.1f} standard errors from zero")  # fmt: skip
    return 0


def _cmd_drill(args: argparse.Namespace) -> int:
    from ..experiments.drilldown import drill_down_config
    from ..trainers import load_trainer

    source = RunStore(args.run_dir)
    config, chosen = drill_down_config(source, args.top, args.bottom, args.models, args.context)
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    store = RunStore.open_or_create(args.out, config, trainer.describe())
    print(f"pool: {len(store.groups)} images of {', '.join(chosen)}")
    engine_from_args(args, trainer).run(store, progress=not args.quiet)
    print(f"{store.planned_models} models done in {store.root}; next: "
          f"transfer-influence examples {store.root}")  # fmt: skip
    return 0


def _cmd_examples(args: argparse.Namespace) -> int:
    from ..estimation import ExampleInfluence
    from ..files import write_folder

    store = RunStore(args.run_dir)
    fitted = ExampleInfluence(
        output=args.output, examples=args.target_example, estimator=args.estimator
    ).fit(store, progress=sys.stderr.isatty())
    folder = store.path("examples")
    tables = {"overall": fitted.overall_, "per_example": fitted.per_example_}
    write_folder(
        folder,
        {f"{n}.csv": csv_text(with_unit(t, fitted.unit_)).encode() for n, t in tables.items()},
    )
    unit = fitted.unit_
    print(f"{fitted.n_models_} models, {len(store.groups)} source examples; {args.estimator} "
          f"estimate of the influence on mean {args.output} ({unit})")  # fmt: skip
    overall = fitted.overall_
    for title, rows in (("most helpful", overall.head(args.n)),
                        ("least helpful", overall.tail(args.n)[::-1])):  # fmt: skip
        print(f"\n{title}:")
        for row in rows.itertuples():
            print(f"  {row.source_example:<32} {row.influence:+9.4f}")
    ranking = "the difference-in-means ranking of the same models"
    if fitted.agreement_ is not None:
        print(f"\nwould an independent run of this size agree? ({ranking}, from its errors)")
        for sentence in agreement_sentences(fitted.agreement_, "source examples"):
            print(f"  {sentence}")
    stability = fitted.stability_
    if stability is not None:
        how = split_half_method(store.config.run.seeds == "chunk")
        print(
            f"\nsplit-half stability of {ranking}, measured ({how}, halves of about "
            f"{stability.models // 2}): {split_half_measured(stability)}"
        )
    print(f"\nwrote {folder}/overall.csv, per_example.csv")
    return 0
