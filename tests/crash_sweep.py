"""Kill a command at every crash point it has, resume it, and describe what is on disk.

Run as ``python tests/crash_sweep.py SCENARIO FOLDER``; prints one JSON object. Commands run in
forked children of this process (SIGKILLed by ``TRANSFER_INFLUENCE_CRASH_AT``), so a sweep of
a hundred kills costs seconds, not a hundred interpreter starts. The test that calls this
(test_crash_points.py) asserts the invariants on what it reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats  # noqa: F401  (imported once, here, rather than in every child: 0.5 s each)
import torch  # noqa: F401  (imported once, here, rather than in every child: 1-2 s each)

from transfer_influence import files
from transfer_influence.cli import main
from transfer_influence.report import Report  # noqa: F401  (imported once, for every child)
from transfer_influence.store import RunStore

# What a killed command leaves running (its worker processes) is handed to this process, which
# reaps it and counts what is still alive (prctl PR_SET_CHILD_SUBREAPER).
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)

POINTS = ("write", "fsync", "rename")

SIMULATED = """
[run]
seed = 3
models = 12
chunk_size = 4
[trainer]
type = "simulated"
[trainer.params]
groups = 8
examples = 60
classes = 3
modes = ["fixed_feature"]
effect_scale = 0.3
"""


def forked(*argv: object, crash: str | None = None, count: Path | None = None) -> int:
    """Run the CLI in a child (or ``argv[0](*argv[1:])``, a function of this file's); its
    exit code, or -9 when it was killed at ``crash``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 99
        try:
            os.environ.pop("TRANSFER_INFLUENCE_CRASH_AT", None)
            os.environ.pop("TRANSFER_INFLUENCE_CRASH_COUNT", None)
            if crash:
                os.environ["TRANSFER_INFLUENCE_CRASH_AT"] = crash
            if count:
                os.environ["TRANSFER_INFLUENCE_CRASH_COUNT"] = str(count)
            files._crash_counts.clear()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            run = argv[0] if callable(argv[0]) else lambda *a: main([str(x) for x in a])
            code = run(*(argv[1:] if callable(argv[0]) else argv)) or 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def orphans_left(timeout: float = 5.0) -> int:
    """How many processes a killed command left behind are still alive after ``timeout``
    seconds (then killed, so that the sweep goes on)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return 0
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    mine = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if stat.read_text().rsplit(")", 1)[-1].split()[1] == str(os.getpid())
    ]
    for pid in mine:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return len(mine)


def points_reached(folder: Path, *argv: object) -> Counter:
    """How often an uninterrupted ``argv`` reaches each crash point."""
    log = folder / "points.log"
    log.unlink(missing_ok=True)
    assert forked(*argv, count=log) == 0, argv
    return Counter(log.read_text().split())


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders under (and beside) ``root`` that nobody is writing."""
    found = [
        p
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".ready", ".old")) and ".lock" not in p.name
    ]
    found += list(root.parent.glob(f".{root.name}.*.creating"))
    return sorted(str(p.relative_to(root.parent)) for p in found)


def models(root: Path) -> dict:
    """Every model the run holds: index and digest, and the digest of all its chunk arrays."""
    store = RunStore(root)
    indices, digests, content = [], [], hashlib.sha256()
    for chunk, arrays in store.iter_chunks():
        indices += arrays["index"].tolist()
        digests += arrays["model_digest"].tolist()
        content.update(chunk.name.encode())
        for name in sorted(arrays):
            if name not in ("meta", "seconds", "_sha256"):
                content.update(np.ascontiguousarray(arrays[name]).tobytes())
    return {
        "planned": store.planned_models,
        "indices": indices,
        "digests": digests,
        "content": content.hexdigest(),
        "missing": len(store.missing_chunks()),
    }


def folder_set(folder: Path, volatile: tuple[str, ...] = ()) -> str | None:
    """A digest of a written set (every file, keys in ``volatile`` dropped from JSON files and
    lines holding them dropped from HTML), read as the tool reads it: after settling."""
    files.settle_folder(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json":
            loaded = json.loads(data)
            for key in volatile:
                loaded.pop(key, None)
            data = json.dumps(loaded, sort_keys=True).encode()
        elif path.suffix in (".html", ".png"):
            data = b""  # a timestamp and fonts: their presence is what is compared
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + data)
    return digest.hexdigest()


def sweep(folder: Path, command: list, resume: list, prepare, observe) -> dict:
    """For every crash point of ``command`` (counted on an uninterrupted run): start from
    ``prepare(dir)``, kill ``command`` there, ``observe``, run ``resume``, ``observe`` again."""
    reference = folder / "reference"
    prepare(reference)
    reached = points_reached(folder, *command(reference))
    uninterrupted = observe(reference)
    kills = []
    for point in POINTS:
        for nth in range(1, reached[point] + 1):
            work = folder / f"{point}-{nth}"
            prepare(work)
            code = forked(*command(work), crash=f"{point}:{nth}")
            orphans = orphans_left()
            after_kill = observe(work)
            resumed = forked(*resume(work))
            kills.append(
                {
                    "point": f"{point}:{nth}",
                    "killed": code == -signal.SIGKILL,
                    "orphans": orphans,
                    "after_kill": after_kill,
                    "resume_code": resumed,
                    "after_resume": observe(work),
                    "leftovers": leftovers(work),
                }
            )
    return {"reached": dict(reached), "reference": uninterrupted, "kills": kills}


def _config(folder: Path) -> Path:
    path = folder / "sim.toml"
    if not path.exists():
        path.write_text(SIMULATED)
    return path


def _trained(root: Path) -> None:
    with contextlib.suppress(FileExistsError):
        root.parent.mkdir(parents=True, exist_ok=True)
    if not (root / "run.json").exists():
        assert forked("run", _config(root.parent), "--run-dir", root, "--quiet") == 0


def scenario_run(folder: Path) -> dict:
    config = _config(folder)
    command = ["run", config, "--run-dir", None, "--quiet"]
    return sweep(
        folder,
        lambda d: [d if a is None else a for a in command],
        lambda d: [d if a is None else a for a in command],
        lambda d: None,
        lambda d: models(d) if (d / "run.json").exists() else None,
    )


def scenario_worker(folder: Path) -> dict:
    config = _config(folder)

    def prepare(root: Path) -> None:  # a planned run with nothing trained
        assert forked("run", config, "--run-dir", root, "--time-limit", "0", "--quiet") == 0

    return sweep(
        folder,
        lambda d: ["worker", d, "--worker-id", "swept"],
        lambda d: ["worker", d, "--worker-id", "resumed"],
        prepare,
        models,
    )


def scenario_record(folder: Path) -> dict:
    rng = np.random.default_rng(5)
    results = folder / "results.npz"
    np.savez(
        results,
        masks=rng.random((12, 6)) < 0.5,
        logits=rng.normal(size=(12, 30, 3)).astype(np.float32),
        labels=np.arange(30) % 3,
        seeds=np.repeat([4, 8, 2], 4),
    )
    command = lambda d: ["record", d, "--from", results]  # noqa: E731
    return sweep(
        folder,
        command,
        command,
        lambda d: None,
        lambda d: models(d) if (d / "run.json").exists() else None,
    )


def _estimate_scenario(folder: Path, name: str, volatile: tuple[str, ...]) -> dict:
    shared = folder / "trained"
    _trained(shared)
    written = "influence" if name == "estimate" else "report"

    def prepare(root: Path) -> None:  # a copy of the trained run with a margin set written
        if not root.exists():
            shutil.copytree(shared, root, symlinks=True)
            assert forked(name, root, "--output", "margin", *_quiet(name)) == 0

    command = lambda d: [name, d, "--output", "p_correct", *_quiet(name)]  # noqa: E731
    result = sweep(
        folder,
        command,
        command,
        prepare,
        lambda d: folder_set(d / written, volatile),
    )
    old = folder / "old-set"
    prepare(old)
    result["old_set"] = folder_set(old / written, volatile)
    return result


def _quiet(name: str) -> list[str]:
    return ["--quiet"] if name == "report" else []


def scenario_estimate(folder: Path) -> dict:
    return _estimate_scenario(folder, "estimate", ("created", "run"))


def scenario_report(folder: Path) -> dict:
    return _estimate_scenario(folder, "report", ())


def scenario_prune(folder: Path) -> dict:
    shared = folder / "trained"
    _trained(shared)

    def prepare(root: Path) -> None:
        if not root.exists():
            shutil.copytree(shared, root, symlinks=True)

    command = lambda d: [  # noqa: E731
        "prune", d, "--remove", "bottom,random", "--k", "2", "--seeds", "2", "--quiet",
    ]  # fmt: skip

    def observe(root: Path) -> dict | None:
        conditions = root / "prune" / "run"
        summary = root / "prune" / "results.csv"
        results = None
        if summary.exists():  # the seconds a model took differ from run to run
            results = pd.read_csv(summary).drop(columns="seconds").to_csv(index=False)
        return {
            "models": models(conditions) if (conditions / "run.json").exists() else None,
            "results": results,
        }

    return sweep(folder, command, command, prepare, observe)


CACHED = """
[run]
seed = 3
models = 4
chunk_size = 4
[trainer]
type = "builtin"
[trainer.params]
source = {{ kind = "folder", path = "{data}/source", cache = "{cache}" }}
targets = [{{ name = "tgt", kind = "folder", path = "{data}/target", cache = "{cache}" }}]
[trainer.params.recipe]
widths = [8, 8, 8]
epochs = 1
batch_size = 16
"""


def _cache_files(cache: Path) -> dict | None:
    """Every file of a cache folder (a builder's lock left out) and its digest."""
    if not cache.is_dir():
        return None
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(cache.iterdir())
        if not path.name.endswith(".lock")
    }


def scenario_cache(folder: Path) -> dict:
    """``run`` up to its first model (``--time-limit 0``): a source folder and a target's two
    archives decoded into the cache, eight images a batch."""
    from conftest import make_image_folder
    from transfer_influence.datasets import cache

    cache.BATCH = 8  # inherited by the forked children and their decoding workers
    data = folder / "data"
    make_image_folder(data / "source", list("abcd"), 4, ("train", "test"), as_tar=False)
    make_image_folder(data / "target", ["x", "y"], 6, ("train", "test"))

    def command(work: Path) -> list:
        config = work.parent / f"{work.name}.toml"
        config.write_text(CACHED.format(data=data, cache=work / "cache"))
        return ["run", config, "--run-dir", work / "run", "--time-limit", "0", "--quiet"]

    def observe(work: Path) -> dict:
        run = work / "run"
        planned = RunStore(run).planned_models if (run / "run.json").exists() else None
        return {"cache": _cache_files(work / "cache"), "planned": planned}

    return sweep(folder, command, command, lambda d: None, observe)


class Numbered:
    """A torchvision-like dataset of 20 images (image i all of value 10 i), read by index."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.new("RGB", (12, 9), (10 * index, 0, 0)), index % 3


def _build_indexed(work: Path) -> None:
    from transfer_influence.datasets import indexed

    ids = [f"all/{i}" for i in range(20)]
    indexed.build_indexed_cache(work / "cache" / "numbered", "numbered", Numbered(), Numbered,
                                np.arange(20), ids, None, 4, workers=1)  # fmt: skip


def scenario_indexed(folder: Path) -> dict:
    """A torchvision dataset's images decoded into the cache by index, six a batch."""
    from transfer_influence.datasets import indexed

    indexed.BATCH = 6
    command = lambda d: [_build_indexed, d]  # noqa: E731
    return sweep(folder, command, command, lambda d: None, lambda d: _cache_files(d / "cache"))


if __name__ == "__main__":
    scenario, where = sys.argv[1], Path(sys.argv[2])
    where.mkdir(parents=True, exist_ok=True)
    print(json.dumps(globals()[f"scenario_{scenario}"](where)))
