"""The run directory: the single source of truth for a run, shared by every worker and engine.

    RUN/
      run.json              resolved config, task identity, provenance, chunk plan
      config.toml           the config as the user wrote it (when created from a file)
      targets/NAME.npz      stable target example ids, labels, class names
      jobs.npz              the listed jobs of a run with design "explicit" (pruning)
      chunks/START-STOP.npz one file per chunk of models, atomic and checksummed
      claims/START-STOP     which worker is training a chunk (see claims.py)
      corrupt/              damaged chunk files, moved aside and then redone
      foreign/              chunk files made by another run (config or data), set aside
      influence/            what ``estimate`` writes

Chunk boundaries are fixed when the run is created; raising the number of models appends
chunks and never moves an existing boundary. ``run.json`` stores the plan as ranges of equal
chunks, so it stays small at any number of models.

Every chunk carries the digest of the run that made it (its defining config and data
identity) and one digest per model (subset, seed, outputs): a chunk of another run is set
aside on every read, and a recorded model the run holds already is never added again.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..config import MAX_CHUNKS, MAX_MODELS, Config, ConfigError, defining_diff
from ..files import (
    CorruptFileError,
    _maybe_crash,
    exclusive_lock,
    open_regular,
    read_arrays,
    read_json,
    remove_abandoned,
    settle_folder,
    write_arrays,
    write_json,
)
from ..provenance import provenance
from ..subsets import Job, make_jobs, round_size
from ..trainers.protocol import JobResult, TargetInfo, TaskDescription, output_key, parse_key
from .claims import Claim, claim_state, try_claim
from .records import RecordError, model_digests, outputs_from_arrays, pack_results

__all__ = ["Chunk", "ChunkOutputs", "RunError", "RunStore", "RunWarning"]

EXPLICIT = "explicit"  # the design of runs whose jobs are listed, not drawn (pruning)
JOBS_FILE = "jobs.npz"  # their masks, seeds and labels
FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: the plan as a list of [start, stop] pairs


class RunWarning(UserWarning):
    """Something about a run the user should know, that does not stop the command."""


class RunError(Exception):
    """A run directory that cannot be used as asked; the message says why."""


@dataclass(frozen=True)
class Chunk:
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.start:07d}-{self.stop:07d}"

    @property
    def size(self) -> int:
        return self.stop - self.start


# Every path under RUN/, named here and nowhere else: other modules ask ``store.path(NAME)``.
LAYOUT = {
    "run.json": "resolved config, data identity, provenance, chunk plan",
    "config.toml": "the config as the user wrote it",
    "targets": "target example ids, labels and class names",
    "jobs.npz": "the listed jobs of a run with design 'explicit'",
    "chunks": "one file per chunk of models",
    "claims": "which worker trains which chunk",
    "corrupt": "damaged chunks, moved aside",
    "foreign": "chunks of another run, moved aside",
    "control.json": "the untrained-backbone control",
    "influence": "what estimate writes",
    "report": "what report writes",
    "examples": "what examples writes",
    "prune": "pruning: plan.json, the conditions' run (run/) and its summary",
    "slurm": "the Slurm engine's job files and logs",
}


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256("\n".join(ids.tolist()).encode()).hexdigest()[:16]


def _task_identity(task: TaskDescription) -> dict[str, Any]:
    return {
        "groups": list(task.groups),
        "modes": list(task.modes),
        "targets": [
            {
                "name": t.name,
                "examples": int(t.example_ids.size),
                "classes": list(t.class_names),
                "ids_sha256": _ids_digest(t.example_ids),
            }
            for t in task.targets
        ],
        "fingerprints": dict(task.fingerprints),
    }


def _encode_plan(chunks: list[Chunk]) -> list[list[int]]:
    """The plan as ranges ``[start, stop, size]`` of consecutive chunks of ``size`` models
    (the last of a range may be shorter): a run of any size is a few ranges."""
    ranges: list[list[int]] = []
    closed = True
    for chunk in chunks:
        if ranges and not closed and ranges[-1][1] == chunk.start and chunk.size <= ranges[-1][2]:
            ranges[-1][1] = chunk.stop
            closed = chunk.size < ranges[-1][2]
        else:
            ranges.append([chunk.start, chunk.stop, chunk.size])
            closed = False
    return ranges


def _decode_plan(ranges: Any) -> list[Chunk]:
    """Chunks from :func:`_encode_plan`'s ranges, or from format 1's ``[start, stop]`` pairs."""
    if not isinstance(ranges, list):
        raise ValueError("the chunk plan is not a list")
    chunks: list[Chunk] = []
    for item in ranges:
        if not (isinstance(item, list) and len(item) in (2, 3)):
            raise ValueError("the chunk plan holds an entry that is not a range")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise ValueError("the chunk plan holds a range that is not whole numbers")
        start, stop, size = (*item, item[1] - item[0]) if len(item) == 2 else item
        if not (0 <= start < stop <= MAX_MODELS and size >= 1):
            raise ValueError(f"the chunk plan holds an impossible range {item}")
        if chunks and chunks[-1].stop != start:
            raise ValueError("the chunk plan has a gap or an overlap")
        if len(chunks) + -(-(stop - start) // size) > MAX_CHUNKS:
            raise ValueError(f"the chunk plan has more than {MAX_CHUNKS:,} chunks")
        chunks.extend(Chunk(a, min(a + size, stop)) for a in range(start, stop, size))
    return chunks


def _plan(existing: list[Chunk], models: int, chunk_size: int) -> list[Chunk]:
    chunks = list(existing)
    start = chunks[-1].stop if chunks else 0
    while start < models:
        chunks.append(Chunk(start, min(start + chunk_size, models)))
        start = chunks[-1].stop
    return chunks


class ChunkOutputs(NamedTuple):
    """One chunk's healthy models: ``masks`` (m x K), ``values`` (m x n) of one output as
    recorded, ``excluded`` (models left out) and ``rounds`` (m, or None).

    In a run with ``seeds = "chunk"`` the chunk's models share a training seed: the chunk is
    a block of models that estimation compares within (see :mod:`..estimation.centring`).
    ``rounds`` numbers the design round of each model where the design has rounds (complementary
    pairs, balanced rounds: models whose subsets partition the groups), else it is None.
    """

    masks: np.ndarray
    values: np.ndarray
    excluded: int
    rounds: np.ndarray | None = None


class RunStore:
    """Open an existing run directory. Use :meth:`create` or :meth:`open_or_create` to make one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "run.json"
        if not meta_path.is_file():
            raise RunError(f"{self.root} is not a run directory (no run.json)")
        try:
            self.meta = read_json(meta_path)
            if not isinstance(self.meta, dict):
                raise CorruptFileError("not a JSON object")
            if self.meta.get("format") not in READABLE_FORMATS:
                raise RunError(f"{self.root} was written by an incompatible version of this tool")
            self._read_meta()
        except (CorruptFileError, KeyError, ConfigError, TypeError, ValueError) as error:
            what = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise RunError(f"{meta_path} is damaged: {what}") from None
        self.quarantined: list[Chunk] = []  # damaged chunks this store moved aside
        self.foreign: list[Chunk] = []  # chunks of another run this store set aside
        self._remove_leftovers()

    def _read_meta(self) -> None:
        self.config = Config.from_dict(self.meta["config"], import_code=False)
        self.chunks = _decode_plan(self.meta["chunks"])
        identity = self.meta["task"]
        self.groups: tuple[str, ...] = _names(identity["groups"], "source groups")
        self.modes: tuple[str, ...] = _names(identity["modes"], "modes")
        self.target_names = list(_names([t["name"] for t in identity["targets"]], "targets"))
        if not self.groups or not self.modes or not self.target_names:
            raise ValueError("a run needs at least one source group, target and mode")
        identity_text = json.dumps([self.config.defining_hash(), identity], sort_keys=True)
        # What every chunk of this run carries: a chunk made under another config or on
        # other data (same seed and subsets or not) differs here.
        self.run_digest = hashlib.sha256(identity_text.encode()).hexdigest()[:32]

    def _remove_leftovers(self) -> None:
        """What killed writers left: temporary files of dead processes, half-swapped sets."""
        with contextlib.suppress(OSError):
            for folder in (self.root, self.path("chunks"), self.path("claims"), self.path("prune")):
                remove_abandoned(folder)
            for name in ("influence", "report", "examples"):
                settle_folder(self.path(name))

    def path(self, name: str) -> Path:
        """Where the run keeps ``name`` (a key of :data:`LAYOUT`)."""
        if name not in LAYOUT:
            raise KeyError(f"{name!r} is not part of a run directory")
        return self.root / name

    def chunks_digest(self) -> str:
        """A digest of the finished chunks as they are now (their names and stored checksums):
        an estimate made from other chunks is stale."""
        digest = hashlib.sha256()
        for chunk in self.chunks:
            arrays = self._read_members(chunk, ("_sha256",))
            if arrays is not None:
                digest.update(f"{chunk.name}:{arrays['_sha256']}\n".encode())
        return digest.hexdigest()[:32]

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | Path,
        config: Config,
        task: TaskDescription,
        config_text: str | None = None,
        jobs: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
    ) -> RunStore:
        """A new run at ``root``; ``jobs`` (masks, seeds, labels) for ``design = "explicit"``."""
        if (jobs is not None) != (config.run.design == EXPLICIT):
            raise RunError('explicit jobs go with run.design = "explicit", and only with it')
        root = Path(root)
        if (root / "run.json").exists():
            raise RunError(f"{root} already holds a run")
        _check_memory(task)
        if root.exists() and any(root.iterdir()):
            raise RunError(f"{root} exists and is not empty; choose a new run directory")
        # Built beside its final place and renamed in whole, so a crash never leaves half a run;
        # a creator killed outright leaves its folder, removed by the next creation.
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_creations(root)
        building = root.parent / f".{root.name}.{uuid.uuid4().hex}.creating"
        try:
            _build(building, config, task, config_text)
            if jobs is not None:
                write_arrays(building / JOBS_FILE, _jobs_arrays(*jobs))
            _maybe_crash("rename")
            os.rename(building, root)
        except OSError as error:
            shutil.rmtree(building, ignore_errors=True)
            if root.exists() and any(root.iterdir()):
                raise RunError(f"{root} was created by someone else meanwhile") from None
            raise RunError(f"cannot create {root}: {error.strerror or error}") from None
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        (root / "claims" / _CREATOR).unlink(missing_ok=True)
        return cls(root)

    @classmethod
    def open_or_create(
        cls,
        root: str | Path,
        config: Config,
        task: TaskDescription,
        config_text: str | None = None,
        jobs: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
    ) -> RunStore:
        """Resume the run at ``root`` if its defining config and task match, else create it.
        Of two processes creating the same run at once, one creates it and the other resumes
        it."""
        if not (Path(root) / "run.json").exists():
            try:
                return cls.create(root, config, task, config_text, jobs)
            except RunError:
                if not (Path(root) / "run.json").exists():
                    raise
        store = cls(root)
        # Compared as parsed, so a field added in a later version reads as its default.
        differences = defining_diff(store.config.to_dict(), config.to_dict())
        if differences:
            raise RunError(
                f"{root} holds a run of another config ({'; '.join(differences)}); "
                "use a new run directory, or change only run.models"
            )
        store.check_task(task)
        store._follow_data(config)
        store.set_models(config.run.models)
        return store

    def _follow_data(self, config: Config) -> None:
        """Data found at new paths (the same data: the task check compared fingerprints) is
        read from there from now on, by every worker."""
        trainer = config.to_dict()["trainer"]
        if self.meta["config"]["trainer"] == trainer:
            return
        with self._plan_lock():
            self._reload()
            self.meta["config"]["trainer"] = trainer
            self._write_meta()

    def set_models(self, models: int) -> None:
        """Raise the number of models; existing chunk boundaries never move. Safe against
        other processes raising it at the same time: the plan only ever grows."""
        if models <= self.planned_models:
            return
        with self._plan_lock():
            self._reload()  # another process may have grown the plan meanwhile
            if models <= self.planned_models:
                return
            chunks = _plan(self.chunks, models, self.config.run.chunk_size)
            _check_bounds(chunks)
            self.chunks = chunks
            self.meta["config"]["run"]["models"] = models
            self._write_meta()

    def _write_meta(self) -> None:
        """run.json from ``self.chunks`` and ``self.meta`` (under the plan lock)."""
        self.meta["format"] = FORMAT
        self.meta["chunks"] = _encode_plan(self.chunks)
        write_json(self.root / "run.json", self.meta)
        self._read_meta()

    @contextlib.contextmanager
    def _plan_lock(self) -> Iterator[None]:
        """An exclusive lock on the run's plan (run.json), held while it is changed. The
        kernel releases it when its holder dies, so a killed writer never blocks the next."""
        held = contextlib.ExitStack()
        try:
            held.enter_context(exclusive_lock(self.path("claims") / ".plan.lock"))
        except OSError as error:
            raise RunError(str(error)) from None
        with held:
            yield

    def _reload(self) -> None:
        try:
            self.meta = read_json(self.root / "run.json")
            self._read_meta()
        except (CorruptFileError, KeyError, ConfigError, TypeError, ValueError) as error:
            raise RunError(f"{self.root / 'run.json'} is damaged: {error}") from None

    # -- task -------------------------------------------------------------------------------

    @property
    def planned_models(self) -> int:
        return self.chunks[-1].stop if self.chunks else 0

    def target(self, name: str) -> TargetInfo:
        if name not in self.target_names:
            raise RunError(f"unknown target {name!r}; this run has {', '.join(self.target_names)}")
        try:
            arrays = read_arrays(self.path("targets") / f"{name}.npz")
        except (CorruptFileError, FileNotFoundError) as error:
            raise RunError(f"target file damaged: {error}") from None
        return TargetInfo(
            name, arrays["example_ids"], arrays["labels"], tuple(arrays["class_names"].tolist())
        )

    @property
    def external(self) -> bool:
        """Imported with :meth:`record`: masks came from the user, not from the run's seed."""
        return self.config.trainer.type == "external"

    @property
    def keys(self) -> list[str]:
        return [output_key(t, m) for t in self.target_names for m in self.modes]

    def resolve_key(self, target: str | None = None, mode: str | None = None) -> str:
        """The (target, mode) output key; either may be left out when the run has only one."""
        target = target or self.target_names[0]
        mode = mode or self.modes[0]
        if target not in self.target_names:
            raise RunError(
                f"unknown target {target!r}; this run has {', '.join(self.target_names)}"
            )
        if mode not in self.modes:
            raise RunError(f"unknown mode {mode!r}; this run has {', '.join(self.modes)}")
        return output_key(target, mode)

    def check_task(self, task: TaskDescription) -> None:
        """Refuse a trainer whose groups, targets or data differ from the run's."""
        if self.meta["task"] != _task_identity(task):
            raise RunError(
                f"{self.root} was made on other data (source groups, target examples "
                "or dataset fingerprints differ); use a new run directory"
            )

    def jobs(self, chunk: Chunk) -> list[Job]:
        if self.external:
            raise RunError(f"{self.root} holds imported results; it has no jobs to train")
        r = self.config.run
        if r.design == EXPLICIT:
            masks, seeds, _ = self.explicit_jobs()
            if chunk.stop > seeds.size:
                raise RunError(f"{self.path(JOBS_FILE)} plans fewer jobs than {chunk.name}")
            return [Job(i, int(seeds[i]), masks[i]) for i in range(chunk.start, chunk.stop)]
        return make_jobs(
            range(chunk.start, chunk.stop),
            len(self.groups),
            r.alpha,
            r.seed,
            r.design,
            r.seeds == "run",
            chunk.start if r.seeds == "chunk" else None,
        )

    def explicit_jobs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The masks, seeds and labels of a run of explicit jobs (``design = "explicit"``)."""
        try:
            arrays = read_arrays(self.path(JOBS_FILE))
            return arrays["masks"], arrays["seeds"], arrays["labels"]
        except (CorruptFileError, FileNotFoundError, KeyError) as error:
            raise RunError(f"{self.path(JOBS_FILE)} is damaged or missing: {error}") from None

    def add_jobs(self, masks: np.ndarray, seeds: np.ndarray, labels: list[str]) -> None:
        """Append explicit jobs, named by ``labels`` (jobs already planned keep their place;
        a label planned before is left out), and plan chunks for them."""
        if self.config.run.design != EXPLICIT:
            raise RunError(f"{self.root} draws its subsets; it takes no explicit jobs")
        with self._plan_lock():
            self._reload()
            old_masks, old_seeds, old_labels = self.explicit_jobs()
            new = [i for i, label in enumerate(labels) if label not in set(old_labels.tolist())]
            if new:
                write_arrays(
                    self.path(JOBS_FILE),
                    _jobs_arrays(
                        np.concatenate([old_masks, np.asarray(masks, bool)[new]]),
                        np.concatenate([old_seeds, np.asarray(seeds, np.int64)[new]]),
                        [*old_labels.tolist(), *(labels[i] for i in new)],
                    ),
                )
        self.set_models(len(old_labels) + len(new))

    # -- chunk files ------------------------------------------------------------------------

    def chunk_path(self, chunk: Chunk) -> Path:
        return self.path("chunks") / f"{chunk.name}.npz"

    def is_done(self, chunk: Chunk) -> bool:
        """Cheap check (the file exists); :meth:`read_chunk` verifies the contents."""
        return self.chunk_path(chunk).exists()

    def missing_chunks(self, shard: tuple[int, int] | None = None) -> list[Chunk]:
        chunks = self.chunks if shard is None else self.chunks[shard[0] :: shard[1]]
        return [c for c in chunks if not self.is_done(c)]

    def claim(self, chunk: Chunk, worker: str) -> Claim | None:
        return try_claim(self.path("claims") / chunk.name, worker, self.config.run.claim_timeout_s)

    def claim_state(self, chunk: Chunk) -> str:
        return claim_state(self.path("claims") / chunk.name, self.config.run.claim_timeout_s)

    def write_chunk(self, chunk: Chunk, arrays: dict[str, np.ndarray], meta: dict) -> None:
        arrays = dict(arrays, meta=np.array(json.dumps(meta)), run_digest=np.array(self.run_digest))
        if "model_digest" not in arrays:
            arrays["model_digest"] = model_digests(arrays)
        write_arrays(self.chunk_path(chunk), arrays)

    def read_chunk(self, chunk: Chunk) -> dict[str, np.ndarray] | None:
        """The chunk's arrays, or None if missing; a damaged file is moved to corrupt/, a
        chunk made by another run (another config or data) to foreign/, with a warning."""
        path = self.chunk_path(chunk)
        try:
            arrays = read_arrays(path)
            if arrays["index"].tolist() != list(range(chunk.start, chunk.stop)):
                raise CorruptFileError(f"{path}: holds the wrong models")
            if "run_digest" in arrays and str(arrays["run_digest"]) != self.run_digest:
                self._set_aside(path, "foreign")
                self.foreign.append(chunk)
                warnings.warn(
                    f"{path.name} was made by another run (its config or data differ); "
                    f"set aside in {self.path('foreign')}, its models are not used",
                    RunWarning,
                    stacklevel=2,
                )
                return None
            # Chunks of earlier versions carry no run digest: their subsets and seeds must
            # be this run's at least.
            if not self.external and not self._holds_its_jobs(chunk, arrays):
                raise CorruptFileError(f"{path}: holds models of another run")
        except FileNotFoundError:
            return None
        except (CorruptFileError, KeyError, ValueError):
            self._set_aside(path, "corrupt")
            self.quarantined.append(chunk)
            return None
        return arrays

    def _holds_its_jobs(self, chunk: Chunk, arrays: dict[str, np.ndarray]) -> bool:
        """A chunk's models are the jobs this run plans for it (same subsets, same seeds): a
        chunk copied in from a run of another seed or design is not."""
        jobs = self.jobs(chunk)
        return np.array_equal(arrays["mask"], np.stack([j.mask for j in jobs])) and (
            arrays["seed"].tolist() == [j.seed for j in jobs]
        )

    def _set_aside(self, path: Path, folder: str) -> None:
        aside = self.path(folder)
        aside.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside / f"{path.name}.{int(time.time() * 1e6)}")

    def verify(self) -> list[Chunk]:
        """Read every finished chunk in full; damaged ones and those of another run are moved
        aside. Returns those."""
        damaged = []
        for chunk in self.chunks:
            if self.is_done(chunk) and self.read_chunk(chunk) is None:
                damaged.append(chunk)
        return damaged

    def iter_chunks(self) -> Iterator[tuple[Chunk, dict[str, np.ndarray]]]:
        for chunk in self.chunks:
            arrays = self.read_chunk(chunk)
            if arrays is not None:
                yield chunk, arrays

    def iter_outputs(self, key: str, output: str) -> Iterator[ChunkOutputs]:
        """Per finished chunk: masks and one output of its healthy models (see
        :class:`ChunkOutputs`), and how many were left out as unhealthy (NaN or diverged)."""
        labels = self.target(parse_key(key)[0]).labels
        models_per_round = round_size(self.config.run.design, self.config.run.alpha)
        for _, arrays in self.iter_chunks():
            healthy = arrays["status"] == "ok"
            values = outputs_from_arrays(arrays, key, output, labels)[healthy]
            rounds = None
            if models_per_round is not None:
                rounds = arrays["index"][healthy] // models_per_round
            excluded = int(np.count_nonzero(~healthy))
            yield ChunkOutputs(arrays["mask"][healthy], values, excluded, rounds)

    def chunk_meta(self, chunk: Chunk) -> dict[str, Any] | None:
        """A finished chunk's metadata (times, worker, device), read without verifying."""
        arrays = self._read_members(chunk, ("meta",))
        try:
            meta = json.loads(str(arrays["meta"])) if arrays is not None else None
        except (ValueError, RecursionError):
            return None
        return meta if isinstance(meta, dict) else None

    def model_metrics(self, key: str) -> dict[str, np.ndarray]:
        """Per finished model: ``index``, ``seed``, ``status``, ``source_accuracy``,
        ``target_accuracy`` (on ``key``) and ``seconds``. Read without verifying checksums."""
        names = ("index", "seed", "status", "source_accuracy", f"accuracy/{key}", "seconds")
        columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for chunk in self.chunks:
            arrays = self._read_members(chunk, names)
            if arrays is not None:
                for name in names:
                    columns[name].append(arrays[name])
        metrics = {
            name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in columns.items()
        }
        metrics["target_accuracy"] = metrics.pop(f"accuracy/{key}")
        return metrics

    # -- imported results -------------------------------------------------------------------

    @classmethod
    def create_external(
        cls,
        root: str | Path,
        task: TaskDescription,
        outputs: list[str],
        alpha: float = 0.5,
        seeds: str = "model",
    ) -> RunStore:
        """A run for results trained outside the tool; fill it with :meth:`record`. With
        ``seeds = "chunk"`` each recorded chunk's models share one training seed."""
        run = {"alpha": alpha, "design": "external", "outputs": outputs, "models": 2}
        run["seeds"] = seeds
        config = Config.from_dict({"run": run, "trainer": {"type": "external"}})
        return cls.create(root, config, task)

    def record(
        self,
        masks: np.ndarray,
        results: list[JobResult],
        seed: int = -1,
        origin: dict | None = None,
    ) -> Chunk | None:
        """Append models trained elsewhere as one new chunk; returns it, or None when the run
        holds every one of them already.

        ``results[i]`` belongs to ``masks[i]``; its index is ignored and assigned here. Outputs
        must already be in the run's example order (see :func:`align_to_target`). ``seed``
        is stored with every model of the chunk (-1: not given), ``origin`` (which import and
        which part of it) in the chunk's metadata. Models the run holds already (the same
        subset, seed and outputs, from whatever file) are left out; with a seed, a seed's
        models are recorded together or not at all.
        """
        chunks = self.record_parts([(masks, results, seed)], origin)
        return chunks[0] if chunks else None

    def record_parts(
        self,
        parts: list[tuple[np.ndarray, list[JobResult], int]],
        origin: dict | None = None,
    ) -> list[Chunk]:
        """:meth:`record` for several parts at once (each ``(masks, results, seed)`` becomes
        a chunk), under one lock: a second record into the run waits, then finds what this
        one wrote. Returns the chunks written."""
        if not self.external:
            raise RunError(f"{self.root} is trained by the tool; record into an imported run")
        targets = {name: self.target(name) for name in self.target_names}
        packed = []
        for masks, results, seed in parts:
            masks = np.asarray(masks)
            if masks.ndim != 2 or masks.shape[1] != len(self.groups) or masks.dtype != np.bool_:
                raise RecordError(f"masks must be bool of shape (models, {len(self.groups)})")
            if len(results) != masks.shape[0] or not results:
                raise RecordError(f"{masks.shape[0]} masks but {len(results)} results")
            jobs = [Job(i, seed, mask) for i, mask in enumerate(masks)]
            for job, result in zip(jobs, results, strict=True):
                result.index = job.index
            arrays = pack_results(jobs, results, targets, self.modes, self.config.run.outputs)
            packed.append((arrays, seed))
        digests = np.concatenate([arrays["model_digest"] for arrays, _ in packed])
        twice = _first_repeat(digests)
        if twice is not None:
            raise RecordError(f"model {twice[1]} is a copy of model {twice[0]} of the same results")
        written = []
        with self._plan_lock():
            self._reload()
            self._adopt_orphans()
            held, held_seeds = self._held_models()
            fresh = [~np.isin(arrays["model_digest"], list(held)) for arrays, _ in packed]
            again = sorted(
                seed
                for (_, seed), new in zip(packed, fresh, strict=True)
                if seed >= 0 and new.any() and (not new.all() or seed in held_seeds)
            )
            if again:
                raise RecordError(
                    f"seed(s) {', '.join(map(str, again[:5]))} were recorded before: a seed's "
                    "models must be recorded together"
                )
            for part, ((arrays, _), new) in enumerate(zip(packed, fresh, strict=True)):
                if not new.any():
                    continue
                if self.planned_models + int(new.sum()) > MAX_MODELS:
                    raise RecordError(f"a run holds at most {MAX_MODELS:,} models")
                start = self.planned_models
                chunk = Chunk(start, start + int(new.sum()))
                arrays = {name: value[new] for name, value in arrays.items()}
                arrays["index"] = np.arange(chunk.start, chunk.stop, dtype=np.int64)
                meta = {"worker": "record", "finished": time.time()}
                meta["record"] = dict(origin or {}, part=part, parts=len(packed))
                self.write_chunk(chunk, arrays, meta)
                self._append_recorded(chunk)
                written.append(chunk)
        return written

    def _held_models(self) -> tuple[set[str], set[int]]:
        """Digests of every model the run holds, and the seeds recorded with them."""
        digests: set[str] = set()
        seeds: set[int] = set()
        for chunk in self.chunks:
            arrays = self._read_members(chunk, ("model_digest", "seed"))
            if arrays is None:  # written before models carried digests, or damaged
                arrays = self.read_chunk(chunk)
                if arrays is None:
                    continue
                arrays = {"model_digest": model_digests(arrays), "seed": arrays["seed"]}
            digests.update(arrays["model_digest"].tolist())
            seeds.update(int(s) for s in arrays["seed"] if s >= 0)
        return digests, seeds

    def _read_members(self, chunk: Chunk, names: tuple[str, ...]) -> dict | None:
        """Some small arrays of a finished chunk, read without the rest (nor its checksum,
        which every estimate verifies); None when the chunk is missing, lacks one of them or
        was made by another run (set aside when it is next read in full)."""
        try:
            with (
                open_regular(self.chunk_path(chunk)) as handle,
                np.load(handle, allow_pickle=False) as archive,
            ):
                if not set(names) <= set(archive.files):
                    return None
                if "run_digest" in archive.files and (
                    str(archive["run_digest"]) != self.run_digest
                ):
                    return None
                return {name: archive[name] for name in names}
        except (OSError, ValueError, KeyError, EOFError, CorruptFileError, zipfile.BadZipFile):
            return None

    def _append_recorded(self, chunk: Chunk) -> None:
        """Under the plan lock: the chunk joins the plan (once)."""
        if chunk in self.chunks:
            return
        _check_bounds([*self.chunks, chunk])
        self.chunks.append(chunk)
        self.meta["config"]["run"]["models"] = max(2, chunk.stop)
        self._write_meta()

    def _adopt_orphans(self) -> None:
        """Under the plan lock: a chunk written by a record that died before updating run.json
        is kept (it is whole: its checksum and run digest are checked)."""
        while True:
            start = self.planned_models
            found = sorted(self.path("chunks").glob(f"{start:07d}-*.npz"))
            if not found:
                return
            try:
                stop = int(found[0].stem.split("-")[1])
            except ValueError:
                return
            if stop <= start or self.read_chunk(Chunk(start, stop)) is None:
                return
            self._append_recorded(Chunk(start, stop))


def _jobs_arrays(masks: np.ndarray, seeds: np.ndarray, labels: list[str]) -> dict:
    masks, seeds = np.asarray(masks, dtype=bool), np.asarray(seeds, dtype=np.int64)
    if masks.ndim != 2 or seeds.shape != (masks.shape[0],) or len(labels) != seeds.size:
        raise RunError("explicit jobs need one mask, seed and label each")
    if len(set(labels)) != len(labels):
        raise RunError("explicit jobs need distinct labels")
    return {"masks": masks, "seeds": seeds, "labels": np.array(labels, dtype=str)}


def _first_repeat(digests: np.ndarray) -> tuple[int, int] | None:
    seen: dict[str, int] = {}
    for i, digest in enumerate(digests.tolist()):
        if digest in seen:
            return seen[digest], i
        seen[digest] = i
    return None


def _check_bounds(chunks: list[Chunk]) -> None:
    if chunks and chunks[-1].stop > MAX_MODELS:
        raise RunError(f"a run holds at most {MAX_MODELS:,} models")
    if len(chunks) > MAX_CHUNKS:
        raise RunError(f"a run holds at most {MAX_CHUNKS:,} chunks; raise run.chunk_size")


# What an estimate holds per (source group, target example): sums, means, errors and the
# saved float32 tables (measured: 43 bytes at 200 groups x 20,000 examples).
ESTIMATE_BYTES_PER_CELL = 48


def _check_memory(task: TaskDescription) -> None:
    """Refuse, before anything is written, a run whose estimate cannot fit in this machine."""
    examples = max(t.example_ids.size for t in task.targets)
    need = ESTIMATE_BYTES_PER_CELL * len(task.groups) * examples
    with contextlib.suppress(ValueError, OSError, AttributeError):
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:
            raise RunError(
                f"estimating this run would need about {need / 2**30:,.0f} GiB "
                f"({len(task.groups):,} source groups x {examples:,} target examples x "
                f"{ESTIMATE_BYTES_PER_CELL} bytes), more than this machine's "
                f"{have / 2**30:,.0f} GiB; use fewer groups or target examples"
            )


def _names(values: Any, what: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"its {what} are not a list of names")
    return tuple(values)


_CREATOR = "creating"
_CREATION_TIMEOUT_S = 3600.0


def _remove_abandoned_creations(root: Path) -> None:
    """Remove half-built ``.NAME.*.creating`` folders of ``root`` whose creator died (its pid is
    gone on this host, or it has been silent for an hour); a live creator's folder stays."""
    for building in root.parent.glob(f".{glob.escape(root.name)}.*.creating"):
        creator = building / "claims" / _CREATOR
        try:
            age = time.time() - building.stat().st_mtime
        except FileNotFoundError:  # another creation finished it or cleaned it meanwhile
            continue
        if creator.exists():
            abandoned = claim_state(creator, _CREATION_TIMEOUT_S) == "stale"
        else:  # died before it wrote its name: judged by age alone
            abandoned = age > _CREATION_TIMEOUT_S
        if abandoned:
            shutil.rmtree(building, ignore_errors=True)


def _build(building: Path, config: Config, task: TaskDescription, config_text: str | None) -> None:
    (building / "claims").mkdir(parents=True)
    try_claim(building / "claims" / _CREATOR, "create", _CREATION_TIMEOUT_S)
    for sub in ("targets", "chunks"):
        (building / sub).mkdir()
    for target in task.targets:
        write_arrays(
            building / "targets" / f"{target.name}.npz",
            {
                "example_ids": target.example_ids,
                "labels": target.labels,
                "class_names": np.array(target.class_names, dtype=str),
            },
        )
    if config_text is not None:
        (building / "config.toml").write_text(config_text)
    # An imported run plans nothing: its chunks are the imports, appended by record().
    external = config.trainer.type == "external"
    chunks = [] if external else _plan([], config.run.models, config.run.chunk_size)
    write_json(
        building / "run.json",
        {
            "format": FORMAT,
            "config": config.to_dict(),
            "defining_hash": config.defining_hash(),
            "task": _task_identity(task),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "provenance": provenance(),
            "chunks": _encode_plan(chunks),
        },
    )
