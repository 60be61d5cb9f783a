"""The run directory: the single source of truth for a run, shared by every worker and engine.

    RUN/
      run.json              resolved config, task identity, provenance, chunk plan
      config.toml           the config as the user wrote it (when created from a file)
      targets/NAME.npz      stable target example ids, labels, class names
      chunks/START-STOP.npz one file per chunk of models, atomic and checksummed
      claims/START-STOP     which worker is training a chunk (see claims.py)
      corrupt/              damaged chunk files, moved aside and then redone
      influence/            what ``estimate`` writes

Chunk boundaries are fixed when the run is created; raising the number of models appends
chunks and never moves an existing boundary.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..config import Config, ConfigError, defining_diff
from ..files import CorruptFileError, read_arrays, read_json, write_arrays, write_json
from ..provenance import provenance
from ..subsets import Job, make_jobs, round_size
from ..trainers.protocol import JobResult, TargetInfo, TaskDescription, output_key
from .claims import Claim, claim_state, try_claim
from .records import RecordError, outputs_from_arrays, pack_results

__all__ = ["Chunk", "ChunkOutputs", "RunError", "RunStore", "RunWarning"]

FORMAT = 1


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
            if self.meta.get("format") != FORMAT:
                raise RunError(f"{self.root} was written by an incompatible version of this tool")
            self.config = Config.from_dict(self.meta["config"], import_code=False)
            self.chunks = [Chunk(int(a), int(b)) for a, b in self.meta["chunks"]]
            identity = self.meta["task"]
            self.groups: tuple[str, ...] = tuple(identity["groups"])
            self.modes: tuple[str, ...] = tuple(identity["modes"])
            self.target_names = [t["name"] for t in identity["targets"]]
        except (CorruptFileError, KeyError, ConfigError, TypeError, ValueError) as error:
            what = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise RunError(f"{meta_path} is damaged: {what}") from None
        self.quarantined: list[Chunk] = []  # damaged chunks this store moved aside

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls, root: str | Path, config: Config, task: TaskDescription, config_text: str | None = None
    ) -> RunStore:
        root = Path(root)
        if (root / "run.json").exists():
            raise RunError(f"{root} already holds a run")
        if root.exists() and any(root.iterdir()):
            raise RunError(f"{root} exists and is not empty; choose a new run directory")
        # Built beside its final place and renamed in whole, so a crash never leaves half a run;
        # a creator killed outright leaves its folder, removed by the next creation.
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_creations(root)
        building = root.parent / f".{root.name}.{uuid.uuid4().hex}.creating"
        try:
            _build(building, config, task, config_text)
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
        cls, root: str | Path, config: Config, task: TaskDescription, config_text: str | None = None
    ) -> RunStore:
        """Resume the run at ``root`` if its defining config and task match, else create it."""
        if not (Path(root) / "run.json").exists():
            return cls.create(root, config, task, config_text)
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
            write_json(self.root / "run.json", self.meta)
            self.config = Config.from_dict(self.meta["config"], import_code=False)

    def set_models(self, models: int, chunk_size: int | None = None) -> None:
        """Raise the number of models; existing chunk boundaries never move. Safe against
        other processes raising it at the same time: the plan only ever grows."""
        if models <= self.planned_models:
            return
        with self._plan_lock():
            self._reload()  # another process may have grown the plan meanwhile
            if models <= self.planned_models:
                return
            self.chunks = _plan(self.chunks, models, chunk_size or self.config.run.chunk_size)
            self.meta["config"]["run"]["models"] = models
            self.meta["chunks"] = [[c.start, c.stop] for c in self.chunks]
            write_json(self.root / "run.json", self.meta)
            self.config = Config.from_dict(self.meta["config"], import_code=False)

    @contextlib.contextmanager
    def _plan_lock(self) -> Iterator[None]:
        """An exclusive lock on the run's plan (run.json), held while it is changed."""
        with open(self.root / "claims" / ".plan.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _reload(self) -> None:
        try:
            self.meta = read_json(self.root / "run.json")
        except CorruptFileError as error:
            raise RunError(f"{self.root / 'run.json'} is damaged: {error}") from None
        self.config = Config.from_dict(self.meta["config"], import_code=False)
        self.chunks = [Chunk(a, b) for a, b in self.meta["chunks"]]

    # -- task -------------------------------------------------------------------------------

    @property
    def planned_models(self) -> int:
        return self.chunks[-1].stop if self.chunks else 0

    def target(self, name: str) -> TargetInfo:
        if name not in self.target_names:
            raise RunError(f"unknown target {name!r}; this run has {', '.join(self.target_names)}")
        try:
            arrays = read_arrays(self.root / "targets" / f"{name}.npz")
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
        return make_jobs(
            range(chunk.start, chunk.stop),
            len(self.groups),
            r.alpha,
            r.seed,
            r.design,
            r.seeds == "run",
            chunk.start if r.seeds == "chunk" else None,
        )

    # -- chunk files ------------------------------------------------------------------------

    def chunk_path(self, chunk: Chunk) -> Path:
        return self.root / "chunks" / f"{chunk.name}.npz"

    def is_done(self, chunk: Chunk) -> bool:
        """Cheap check (the file exists); :meth:`read_chunk` verifies the contents."""
        return self.chunk_path(chunk).exists()

    def missing_chunks(self, shard: tuple[int, int] | None = None) -> list[Chunk]:
        chunks = self.chunks if shard is None else self.chunks[shard[0] :: shard[1]]
        return [c for c in chunks if not self.is_done(c)]

    def claim(self, chunk: Chunk, worker: str) -> Claim | None:
        return try_claim(self.root / "claims" / chunk.name, worker, self.config.run.claim_timeout_s)

    def claim_state(self, chunk: Chunk) -> str:
        return claim_state(self.root / "claims" / chunk.name, self.config.run.claim_timeout_s)

    def write_chunk(self, chunk: Chunk, arrays: dict[str, np.ndarray], meta: dict) -> None:
        arrays = dict(arrays, meta=np.array(json.dumps(meta)))
        write_arrays(self.chunk_path(chunk), arrays)

    def read_chunk(self, chunk: Chunk) -> dict[str, np.ndarray] | None:
        """The chunk's arrays, or None if missing; a damaged file is moved to corrupt/."""
        path = self.chunk_path(chunk)
        try:
            arrays = read_arrays(path)
            if arrays["index"].tolist() != list(range(chunk.start, chunk.stop)):
                raise CorruptFileError(f"{path}: holds the wrong models")
            if not self.external and not self._holds_its_jobs(chunk, arrays):
                raise CorruptFileError(f"{path}: holds models of another run")
        except FileNotFoundError:
            return None
        except (CorruptFileError, KeyError):
            self._quarantine(path)
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

    def _quarantine(self, path: Path) -> None:
        corrupt = self.root / "corrupt"
        corrupt.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, corrupt / f"{path.name}.{int(time.time() * 1e6)}")

    def verify(self) -> list[Chunk]:
        """Read every finished chunk in full; damaged ones are moved aside. Returns those."""
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

    def remove_stale_temporaries(self) -> None:
        """Temporary files left by killed writers (never read; safe to delete when old)."""
        cutoff = time.time() - self.config.run.claim_timeout_s
        for folder in (self.root / "chunks", self.root / "claims"):
            for tmp in folder.glob(".*.tmp"):
                try:
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()
                except FileNotFoundError:
                    pass

    def iter_outputs(self, key: str, output: str) -> Iterator[ChunkOutputs]:
        """Per finished chunk: masks and one output of its healthy models (see
        :class:`ChunkOutputs`), and how many were left out as unhealthy (NaN or diverged)."""
        labels = self.target(key.split("/")[0]).labels
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
        try:
            with np.load(self.chunk_path(chunk), allow_pickle=False) as archive:
                return json.loads(str(archive["meta"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def model_metrics(self, key: str) -> dict[str, np.ndarray]:
        """Per finished model: ``index``, ``seed``, ``status``, ``source_accuracy``,
        ``target_accuracy`` (on ``key``) and ``seconds``. Read without verifying checksums."""
        names = ("index", "seed", "status", "source_accuracy", f"accuracy/{key}", "seconds")
        columns: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for chunk in self.chunks:
            try:
                with np.load(self.chunk_path(chunk), allow_pickle=False) as archive:
                    arrays = {name: archive[name] for name in names}
            except (OSError, ValueError, KeyError, EOFError):
                continue
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
    ) -> Chunk:
        """Append models trained elsewhere as one new chunk; returns it.

        ``results[i]`` belongs to ``masks[i]``; its index is ignored and assigned here. Outputs
        must already be in the run's example order (see :func:`align_to_target`). ``seed``
        is stored with every model of the chunk (-1: not given), ``origin`` (which import and
        which part of it) in the chunk's metadata.
        """
        if not self.external:
            raise RunError(f"{self.root} is trained by the tool; record into an imported run")
        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[1] != len(self.groups) or masks.dtype != np.bool_:
            raise RecordError(f"masks must be bool of shape (models, {len(self.groups)})")
        if len(results) != masks.shape[0] or not results:
            raise RecordError(f"{masks.shape[0]} masks but {len(results)} results")
        lock = try_claim(self.root / "claims" / "record", "record", 3600.0)
        if lock is None:
            raise RunError(f"another record into {self.root} is in progress")
        with lock:
            self._adopt_orphans()
            start = self.planned_models
            chunk = Chunk(start, start + masks.shape[0])
            jobs = [Job(start + i, seed, mask) for i, mask in enumerate(masks)]
            for job, result in zip(jobs, results, strict=True):
                result.index = job.index
            targets = {name: self.target(name) for name in self.target_names}
            arrays = pack_results(jobs, results, targets, self.modes, self.config.run.outputs)
            meta = {"worker": "record", "finished": time.time(), "record": origin or {}}
            self.write_chunk(chunk, arrays, meta)
            self._append_recorded(chunk)
        return chunk

    def _append_recorded(self, chunk: Chunk) -> None:
        with self._plan_lock():
            self._reload()
            self.chunks.append(chunk)
            self.meta["chunks"] = [[c.start, c.stop] for c in self.chunks]
            self.meta["config"]["run"]["models"] = max(2, chunk.stop)
            write_json(self.root / "run.json", self.meta)

    def _adopt_orphans(self) -> None:
        """A chunk written by a record that died before updating run.json: keep it."""
        while True:
            start = self.planned_models
            found = sorted((self.root / "chunks").glob(f"{start:07d}-*.npz"))
            if not found:
                return
            stop = int(found[0].stem.split("-")[1])
            if self.read_chunk(Chunk(start, stop)) is None:
                return
            self._append_recorded(Chunk(start, stop))


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
            "chunks": [[c.start, c.stop] for c in chunks],
        },
    )
