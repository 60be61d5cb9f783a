"""Which source classes help your transfer target, how sure you can be, and what removing them does.

The command line over the Python API. Bad input ends with one line naming the problem and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import Config, ConfigError, apply_overrides, load_config
from ..engines import work
from ..estimation import ESTIMATORS, ClassInfluence
from ..estimation.agreement import Agreement
from ..estimation.classes import LDS_SPLITS
from ..experiments.demo import DEMO_MODELS, run_demo
from ..experiments.growth import grow_until_stable, parse_stability_targets
from ..store import CorruptFileError, RecordError, RunError, RunStore
from ..store.importing import export_file, record_file
from ..store.status import duration, run_status
from ..trainers import load_trainer
from ..words import (
    BELOW_AVERAGE,
    RELATIVE_NOTE,
    SHARED_SEED_CAVEAT,
    agreement_sentences,
    ends_note,
    explained_sentence,
    flagged_sentence,
    growth_words,
    q_text,
    split_half_measured,
    split_half_method,
)
from .analysis import RUN_HELP, add_analysis_commands, add_estimation_arguments, count
from .cluster import add_cluster_command
from .engines import add_engine_arguments, engine_from_args

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="transfer-influence", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train the subset models of a config (resumes)")
    run.add_argument("config", help="a TOML config, or an existing run directory to resume")
    run.add_argument("--run-dir", help="where results go (default: runs/CONFIG_NAME)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set run.models=200",
    )
    run.add_argument("--dry-run", action="store_true", help="print the work and its cost only")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="start no new chunk after this long (run again to continue)",
    )
    run.add_argument(
        "--until-stable",
        metavar="TARGETS",
        help="keep adding models until an independent run of the same size is expected to "
        "agree as asked, e.g. top=8,bottom=8 (of the 10 classes read at each end) or "
        "spearman=0.9, or until --max-models; stops early, saying why, when the projection "
        "is out of reach or beyond the budget",
    )
    run.add_argument("--max-models", type=count, help="model budget for --until-stable")
    add_engine_arguments(run)

    worker = sub.add_parser("worker", help="train missing chunks of a run (for any scheduler)")
    worker.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    worker.add_argument("--shard", help="I/N: only chunks I, I+N, I+2N, ... (0-based)")
    worker.add_argument("--worker-id", help="name recorded with each chunk")
    for command in (run, worker):
        command.add_argument(
            "--device",
            help="cpu, cuda or cuda:N for the built-in trainer (default: a GPU when there is one)",
        )

    status = sub.add_parser("status", help="done, running and missing chunks; rate; ETA")
    status.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    status.add_argument(
        "--verify", action="store_true", help="also read every chunk and check its checksum"
    )

    estimate = sub.add_parser("estimate", help="estimate influence and write RUN/influence/")
    estimate.add_argument("run_dir", metavar="RUN", help=RUN_HELP)
    add_estimation_arguments(estimate)
    estimate.add_argument("--out", help="output folder (default: RUN/influence)")
    estimate.add_argument(
        "-n", "--top", dest="top", type=count, default=10,
        help="classes to print at each end (default: 10)",
    )  # fmt: skip

    demo = sub.add_parser("demo", help="the whole pipeline on a synthetic task with planted truth")
    demo.add_argument("--out", help="run directory (default: runs/demo or runs/demo-control)")
    demo.add_argument(
        "--models", type=count, default=DEMO_MODELS, help=f"subset models (default: {DEMO_MODELS})"
    )
    demo.add_argument(
        "--control",
        action="store_true",
        help="the same task with nothing planted: checks the intervals",
    )
    demo.add_argument(
        "--estimator", choices=ESTIMATORS, default="regression",
        help="how to estimate influence (default: regression; see docs/method.md)",
    )  # fmt: skip
    demo.add_argument("--workers", type=count, default=1, help="worker processes (default: 1)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    record = sub.add_parser("record", help="import results of models trained elsewhere")
    record.add_argument("run_dir", metavar="RUN", help="run directory (created when absent)")
    record.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE.npz",
        help="arrays masks (models x groups, bool) and logits (models x examples x classes) "
        "or outputs such as p_correct (models x examples), labels (examples), optionally "
        "example_ids, source_classes, target_classes, seeds",
    )
    record.add_argument(
        "--target", default="target", help="target name for a new run (default: target)"
    )
    record.add_argument(
        "--mode",
        default="fixed_feature",
        help="transfer mode for a new run (default: fixed_feature)",
    )
    record.add_argument(
        "--alpha", type=float, default=0.5, help="subset fraction used (default: 0.5)"
    )
    cache = sub.add_parser("cache", help="where decoded datasets are cached, and their size")
    cache.add_argument("--clear", action="store_true", help="delete every cached dataset")
    export = sub.add_parser(
        "export",
        help="write a run's models to a results file that `record` reads",
        description="The run's finished healthy models on one target and mode: masks, every "
        "stored output, the target's labels, ids and class names, the source classes (and "
        "the training seeds where models share them), as a plain .npz.",
    )
    export.add_argument("run_dir", help="run directory")
    export.add_argument("--to", required=True, help="the .npz file to write")
    export.add_argument("--target", help="target name (default: the run's only/first)")
    export.add_argument("--mode", help="transfer mode (default: the run's only/first)")
    data = sub.add_parser(
        "data",
        help="get CIFAR-10 and CIFAR-100 in the layout the tool reads",
        description="Download the authors' binary release (or take it from --from), check its "
        "MD5 and write DIR/NAME/{train,test}.tar.gz (one folder per class, PNG), classes.json "
        "and, for CIFAR-100, coarse.json (its 20 superclasses).",
    )
    data.add_argument("names", nargs="+", choices=["cifar10", "cifar100"], metavar="NAME",
                      help="cifar10 and/or cifar100")  # fmt: skip
    data.add_argument("--to", required=True, help="folder to write the datasets into")
    data.add_argument(
        "--from", dest="source", help="a folder holding cifar-10-binary.tar.gz and/or "
        "cifar-100-binary.tar.gz, downloaded before (no network needed)",
    )  # fmt: skip
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    _COMMANDS.update(add_analysis_commands(sub))
    _COMMANDS.update(add_cluster_command(sub))
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    _use_device(args.device)
    source = Path(args.config)
    if (source / "run.json").is_file():
        store = RunStore(source)
        config = Config.from_dict(apply_overrides(store.meta["config"], args.set))
        run_dir, text = source, None
    else:
        config = load_config(source, args.set)
        run_dir = Path(args.run_dir or Path("runs") / source.stem)
        text = source.read_text()
    if (run_dir / "run.json").is_file() and config.trainer.type == "builtin":
        from ..trainers.builtin import check_classes_before_decoding

        store = RunStore(run_dir)
        targets = {name: store.target(name).class_names for name in store.target_names}
        check_classes_before_decoding(config.trainer.params, store.groups, targets)
    if args.dry_run:
        return _dry_run(run_dir, config, _planned(config), args.workers or 1)
    trainer = load_trainer(config.trainer.type, config.trainer.params)
    task = trainer.describe()
    targets = (
        parse_stability_targets(args.until_stable, len(task.groups)) if args.until_stable else {}
    )
    store = RunStore.open_or_create(run_dir, config, task, text)
    engine = engine_from_args(args, trainer)
    if targets:

        def said(agreement: Agreement) -> None:
            print(f"{agreement.models:,} models: {growth_words(agreement, targets)}")

        growth = grow_until_stable(
            store, engine, targets, max_models=args.max_models,
            time_limit=args.time_limit, progress=not args.quiet, on_round=said,
        )  # fmt: skip
        if growth.reason in ("out of reach", "beyond budget"):
            print(f"stopped: the target is {growth.reason}; {growth.detail}")
        elif growth.reason == "met":
            print("target met, at the low end of each 80% range")
    else:
        engine.run(store, args.time_limit, not args.quiet)
    missing = sum(c.size for c in store.missing_chunks())
    if missing:
        print(f"stopped at the time limit with {missing} models to go; run again to continue")
    else:
        print(
            f"{store.planned_models} models done in {store.root}; "
            f"next: transfer-influence estimate {store.root}"
        )
    return 0


def _planned(config: Config) -> object:
    """The trainer, or for the built-in one its plan: the same answers about cost, found
    without decoding the datasets."""
    if config.trainer.type != "builtin":
        return load_trainer(config.trainer.type, config.trainer.params)
    from ..trainers.dry_run import BuiltinPlan

    try:
        return BuiltinPlan.of(**config.trainer.params)
    except TypeError as error:
        raise ValueError(f"trainer 'builtin': {error}") from None


def _dry_run(run_dir: Path, config: Config, trainer: object, workers: int) -> int:
    seconds, source = math.nan, ""
    if (run_dir / "run.json").is_file():
        store = RunStore(run_dir)
        store.set_models(config.run.models)
        missing = sum(c.size for c in store.missing_chunks())
        chunks = len(store.missing_chunks())
        seconds = run_status(store).seconds_per_model
        source = "measured on this run"
    else:
        missing = config.run.models
        chunks = math.ceil(missing / config.run.chunk_size)
    if math.isnan(seconds) and hasattr(trainer, "estimate_seconds_per_model"):
        seconds = float(trainer.estimate_seconds_per_model())
        source = "the trainer's estimate"
    print(f"{missing} models to train in {chunks} chunks into {run_dir}")
    if hasattr(trainer, "data_bytes"):
        size = trainer.data_bytes()
        amount = f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e6:,.1f} MB"
        placement = getattr(trainer, "source_placement", "on the device")
        where = (
            "the source streamed to the device in batches, since it does not fit there"
            if placement == "streamed"
            else "as much on the device"
        )
        print(
            f"data: {amount} of decoded images, cached on disk; {where} "
            f"({trainer.device.type}, as on this machine)"
        )
        undecoded = trainer.undecoded() if hasattr(trainer, "undecoded") else 0
        if undecoded:
            print(
                f"not decoded yet: {undecoded:,} images, which the run decodes into the cache "
                "first, with every core"
            )
    if math.isnan(seconds):
        print("cost: unknown until the first chunk finishes")
    else:
        total = seconds * missing / workers
        per_model = f"{seconds:.3g} s" if seconds < 120 else duration(seconds)
        print(
            f"cost: about {per_model} per model ({source}), "
            f"{duration(total)} with {workers} worker(s)"
            + (f"; {seconds * missing / 3600:,.1f} GPU-hours" if _on_gpu(trainer) else "")
        )
    return 0


def _on_gpu(trainer: object) -> bool:
    device = getattr(trainer, "device", None)
    return getattr(device, "type", "") == "cuda"


def _use_device(device: str | None) -> None:
    """The device is a property of the worker, not of the run: passed on by environment, so
    that worker processes inherit it."""
    if device:
        os.environ["TRANSFER_INFLUENCE_DEVICE"] = device


def _cmd_worker(args: argparse.Namespace) -> int:
    _use_device(args.device)
    store = RunStore(args.run_dir)
    shard = None
    if args.shard:
        try:
            index, count = (int(part) for part in args.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like I/N, got {args.shard!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {args.shard}: need 0 <= I < N")
        shard = (index, count)
    done = work(store, args.worker_id, shard)
    print(f"worker trained {done} chunk(s); {len(store.missing_chunks(shard))} missing in shard")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    store = RunStore(args.run_dir)
    if args.verify:
        aside = store.verify()
        print(
            f"verified: {len(aside)} chunk(s) set aside ({len(store.quarantined)} damaged, in "
            f"corrupt/; {len(store.foreign)} of another run, in foreign/); run again to redo"
        )
    print(f"run      {store.root}")
    for line in run_status(store).lines():
        print(line)
    return 0


def print_estimate(model: ClassInfluence, top: int) -> None:
    """What ``estimate`` prints of a fitted model (the demo prints the same)."""
    table = model.classes_.dropna(subset=["influence"])
    print(
        f"{model.n_models_} models ({model.n_excluded_} unhealthy excluded); "
        f"influence on {model.output} of {model.key_}, {model.unit_}, "
        f"{model.estimate_.estimator} estimator"
    )
    print(f"intervals: {ends_note(model.level, len(table))}")
    for title, rows in (
        ("most helpful", table.head(top)),
        (BELOW_AVERAGE, table.tail(top)[::-1]),
    ):
        print(f"\n{title}:")
        for row in rows.itertuples():
            print(
                f"  {row.group:<24} {row.influence:+8.3f}  "
                f"[{row.simultaneous_low:+.3f}, {row.simultaneous_high:+.3f}]  "
                f"q {q_text(row.q_value)}"
            )
    print(f"\n{flagged_sentence(*model.flagged(), len(table))}")
    print(RELATIVE_NOTE.replace("`", ""))
    if model.agreement_ is not None:
        print("\nwould an independent run of this size agree? (from the estimates and errors)")
        for sentence in agreement_sentences(model.agreement_):
            print(f"  {sentence}")
    stability = model.stability_
    if stability is not None:
        per_chunk = model.seeds_ == "chunk"
        halves = "random halves of whole chunks" if per_chunk else "random halves"
        how = f"{split_half_method(per_chunk, stability.estimator)}, {stability.splits} {halves}"
        print(f"\nsplit-half stability, measured ({how} of about {stability.models // 2}):")
        print(f"  {split_half_measured(stability)}")
    if stability is not None and model.seeds_ == "run":
        print(f"  {SHARED_SEED_CAVEAT}")
    if model.lds_ is not None:
        print(
            f"\nheld-out LDS ({model.estimate_.estimator}, a fifth of the models held out, "
            f"{LDS_SPLITS} splits): {model.lds_:.2f}"
        )
    if model.explained_ is not None:
        print(f"\n{explained_sentence(model.explained_)}")


def _cmd_estimate(args: argparse.Namespace) -> int:
    store = RunStore(args.run_dir)
    model = ClassInfluence(
        target=args.target, mode=args.mode, output=args.output, level=args.level,
        estimator=args.estimator,
    )  # fmt: skip
    model.fit(store, progress=sys.stderr.isatty())
    folder = model.save(Path(args.out) if args.out else store.path("influence"), str(store.root))
    print_estimate(model, args.top)
    print(f"\nwrote {folder}/classes.csv, per_target_class.csv, influence.npy, summary.json")
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    chunks = record_file(args.run_dir, args.source, args.target, args.mode, args.alpha)
    seeds = f" ({len(chunks)} seeds, a chunk each)" if len(chunks) > 1 else ""
    print(f"recorded models {chunks[0].start}..{chunks[-1].stop - 1}{seeds} into {args.run_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    summary = run_demo(
        args.out, args.models, args.control, args.workers, not args.quiet, args.estimator
    )
    planted = summary["planted"]
    print(
        f"demo: {summary['models']} models trained and transferred, mean target accuracy "
        f"{summary['mean_target_accuracy']:.1%}, {summary['seconds']:.0f} s\n"
    )
    print_estimate(summary["influence"], 5)
    q = f"q ≤ {planted['q_level']}"
    print("\nthe planted truth, judged as above:")
    if args.control:
        print(
            f"  nothing planted: {len(planted['flagged'])} of {len(summary['influence'].groups_)} "
            f"classes read as other than average at {q} (none expected in 19 runs of 20)"
        )
    else:
        ranks = ", ".join(f"{name} #{planted['ranks'][name]}" for name in planted["helpful"])
        print(f"  planted to help: {ranks} (all in the top quarter: "
              f"{_yes(planted['helpful_in_top_quarter'])})")  # fmt: skip
        ranks = ", ".join(f"{name} #{planted['ranks'][name]}" for name in planted["harmful"])
        print(f"  planted to cost accuracy: {ranks} (all read as least helpful, below the "
              f"average class at {q}: {_yes(planted['harmful_below_average'])})")  # fmt: skip
        wrong = ", ".join(planted["irrelevant_told_apart"]) or "none"
        print(f"  planted irrelevant and yet told apart from the average class (simultaneous "
              f"interval excludes zero): {wrong}")  # fmt: skip
        if planted["irrelevant_told_apart"]:
            print("    (simultaneous intervals tell a class apart by chance in at most 1 run in "
                  "20; a class planted as irrelevant can have a small real effect)")  # fmt: skip
        flagged = ", ".join(planted["irrelevant_flagged"]) or "none"
        print(f"  planted irrelevant and flagged at {q}: {flagged} (q-values bound the share "
              "of false flags: with all 8 planted classes flagged, one irrelevant class is "
              "flagged in about 1 run in 5 by chance)")  # fmt: skip
    print(f"recovered: {_yes(planted['recovered'])}; wrote {summary['out']}/summary.json")
    return 0


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _cmd_export(args: argparse.Namespace) -> int:
    store = RunStore(args.run_dir)
    key = store.resolve_key(args.target, args.mode)
    models = export_file(store, args.to, key)
    print(
        f"wrote {args.to}: {models} models on {key} "
        f"(`transfer-influence record NEW_RUN --from {args.to}` reads it)"
    )
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from ..datasets.cifar import fetch_cifar

    for name in dict.fromkeys(args.names):
        folder = fetch_cifar(name, args.to, args.source, progress=not args.quiet)
        print(f'{name}: {folder} (kind = "folder", path = "{folder}")')
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from ..datasets.folder import cache_entries, cache_folder

    folder = cache_folder()
    entries = cache_entries(folder)
    size = sum(p.stat().st_size for entry in entries for p in entry if p.is_file())
    print(f"{folder}: {len(entries)} cached dataset split(s), {size / 1e6:,.1f} MB")
    if args.clear:
        for description, *arrays in entries:
            description.unlink(missing_ok=True)  # first: arrays without it are never read
            for path in arrays:
                path.unlink(missing_ok=True)
        print("cleared; datasets are decoded again when next used (other files left alone)")
    return 0


_COMMANDS = {
    "run": _cmd_run,
    "worker": _cmd_worker,
    "status": _cmd_status,
    "estimate": _cmd_estimate,
    "record": _cmd_record,
    "demo": _cmd_demo,
    "cache": _cmd_cache,
    "data": _cmd_data,
    "export": _cmd_export,
}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``: a class name from a user's
    folder can never move the cursor, recolour or retitle the terminal it is printed on."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class _TerminalSafe:
    """Standard output with :func:`terminal_safe` applied to everything printed."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_safe(text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(terminal_safe(f"warning: {message}"), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.showwarning = _show_warning
    np.seterr(all="ignore")
    stdout, sys.stdout = sys.stdout, _TerminalSafe(sys.stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout


def _run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader (`| head`) has had enough: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ConfigError, RunError, RecordError, CorruptFileError, ValueError, OSError) as error:
        print(terminal_safe(f"transfer-influence: error: {error}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError as error:
        print(
            f"transfer-influence: error: out of memory ({str(error)[:200] or 'no detail'}); "
            "does a config value ask for more than this machine holds?",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; finished chunks are kept, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
