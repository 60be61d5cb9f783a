"""The built-in trainer: a small ResNet pretrained from scratch on each job's source classes,
then transferred to every target by fixed features (a logistic-regression head on frozen
features, the paper's default) and, optionally, by full fine-tuning.

The device is a property of the worker, not of the run: set ``TRANSFER_INFLUENCE_DEVICE``
(``run --device``) to ``cpu`` or ``cuda[:i]``; by default a GPU is used when there is one.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..datasets import ImageDataset, fingerprint_arrays, load_dataset
from ..datasets.folder import peek_classes
from ..subsets import Job
from .networks import StackedNetwork, build_network, forward_macs
from .probe import fit_linear_probe
from .protocol import JobResult, TargetInfo, TaskDescription, output_key
from .source_groups import example_pool, mapped_groups
from .stack import Recipe, extract_features, train_stack

__all__ = [
    "MODES",
    "BuiltinTrainer",
    "TargetData",
    "check_classes_before_decoding",
    "pretrained_features",
    "resolve_device",
]

MODES = ("fixed_feature", "finetune")


def resolve_device(requested: str | None = None) -> torch.device:
    name = requested or os.environ.get("TRANSFER_INFLUENCE_DEVICE") or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


STREAM_CHOICES = ("auto", "always", "never")


def streams_source(
    nbytes: int, side: tuple[int, int], crop_padding: int, device: torch.device
) -> bool:
    """Whether source images of ``nbytes`` (uint8, ``side`` = height, width) are streamed to
    ``device`` in batches instead of held there: ``TRANSFER_INFLUENCE_STREAM`` = always /
    never, or auto (the default): held where they and their copy padded by ``crop_padding``
    take at most half of the memory free on the device (on a CPU, of the memory available),
    so training keeps the rest. A property of the worker, like its device: the models come
    out the same either way."""
    choice = os.environ.get("TRANSFER_INFLUENCE_STREAM") or "auto"
    if choice not in STREAM_CHOICES:
        raise ValueError(
            f"TRANSFER_INFLUENCE_STREAM={choice!r}; choose from {', '.join(STREAM_CHOICES)}"
        )
    if choice != "auto":
        return choice == "always"
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    height, width = side
    padded = (height + 2 * crop_padding) * (width + 2 * crop_padding) / (height * width)
    return nbytes * (1.0 + padded) > 0.5 * free


def checked_modes(modes: Sequence[str]) -> tuple[str, ...]:
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(
            f"unknown transfer mode {bad[0] if bad else None!r}; choose from {', '.join(MODES)}"
        )
    return tuple(modes)


def seconds_per_model(
    recipe: Recipe,
    modes: Sequence[str],
    device: torch.device,
    source_images: int,
    size: int,
    targets: Sequence[tuple[int, int]],
) -> float:
    """A rough figure from the arithmetic per model (training a subset of half the source's
    ``source_images`` costs about 3 forward passes per image, transferring one per target
    image; ``targets`` are each target's training and evaluation image counts) at a rate
    measured on this project's machines; ``status`` reports the measured speed."""
    r = recipe
    epochs = r.epochs - r.low_res_epochs + r.low_res_epochs * (r.low_res_size / size) ** 2
    passes = source_images / 2 * epochs * 3
    passes += sum(train + test for train, test in targets)
    if "finetune" in modes:
        passes += sum(train * r.finetune_epochs * 3 for train, _ in targets)
    macs = passes * forward_macs(r, size)
    # ~3e10 MAC/s: 2 CPU cores, torch 2.13; ~3e13: one H100 training stacks (bf16).
    return macs / (3e13 if device.type == "cuda" else 3e10)


def pretrained_features(
    source: ImageDataset,
    recipe: Recipe,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Features (N x D, float32) of every source image under one model pretrained on all of
    them with ``recipe``: what ``transfer-influence cluster`` groups the images by."""
    device = device or resolve_device()
    classes, size = len(source.class_names), source.images.shape[1]
    net = build_network([seed], recipe, classes, size, device)
    images: torch.Tensor | np.ndarray = source.images  # streamed where it does not fit
    if not streams_source(source.images.nbytes, (size, size), recipe.crop_padding, device):
        images = _to_device(source.images, device)
    labels = torch.from_numpy(source.labels).to(device)
    everything = [np.arange(len(source))]
    train_stack(
        net, images, labels, everything, [seed], recipe, recipe.epochs, recipe.lr,
        low_res_epochs=recipe.low_res_epochs, progress=progress,
    )  # fmt: skip
    return extract_features(net, images, device=device)[0].cpu().numpy()


def check_classes_before_decoding(
    params: dict[str, Any], groups: tuple[str, ...], targets: dict[str, tuple[str, ...]]
) -> None:
    """Refuse folder datasets whose class folders differ from the run's (``groups``, and each
    target's class names), before a single image is decoded: source and target given the
    wrong way round cost minutes of decoding and gigabytes of cache before the run's own
    check saw them. Datasets that rename or group their classes are left to that check."""
    expected = {"source": groups, **{f"target {name!r}": c for name, c in targets.items()}}
    specs = {}
    source = params.get("source") or {}
    if not params.get("groups") and not params.get("pool") and not source.get("names_file"):
        specs["source"] = source
    for spec in params.get("targets") or []:
        if spec.get("name") in targets and not spec.get("names_file"):
            specs[f"target {spec['name']!r}"] = spec
    for what, spec in specs.items():
        if spec.get("kind") != "folder" or "path" not in spec:
            continue
        found = peek_classes(spec["path"], "train")
        if found is None or found == expected[what]:
            continue
        other = [name for name, classes in expected.items() if classes == found]
        hint = f"it holds the classes of the run's {other[0]}: swapped?" if other else (
            "another dataset?")  # fmt: skip
        raise ValueError(
            f"the run's {what} has {len(expected[what])} classes ({_first(expected[what])}); "
            f"{spec['path']} has {len(found)} ({_first(found)}): {hint}"
        )


def _first(names: tuple[str, ...], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _to_device(images: np.ndarray, device: torch.device, rows: int = 16384) -> torch.Tensor:
    """A (memory-mapped) image array on ``device``, copied a slice at a time: the process never
    holds a second whole copy of the dataset in host memory."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, images.shape[0], rows):
        out[start : start + rows] = torch.from_numpy(np.array(images[start : start + rows]))
    return out


class TargetData:
    """A target's training images (for the transfer) and evaluation images (for outputs).

    ``validation = f`` carves a seeded fraction f out of the training images; with
    ``evaluate = "validation"`` outputs are recorded on it instead of the test split, so that
    choices made from the influence never touch the test set.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name, spec, fraction, seed, evaluate = self.read_spec(spec)
        train = load_dataset(spec, "train", "target")
        if fraction:
            order = np.random.default_rng([seed, 7]).permutation(len(train))
            cut = round(fraction * len(train))
            held_out, kept = np.sort(order[:cut]), np.sort(order[cut:])
            self.train = train.subset(kept)
            self.test = (
                train.subset(held_out)
                if evaluate == "validation"
                else load_dataset(spec, "test", "target")
            )
        else:
            self.train = train
            self.test = load_dataset(spec, "test", "target")
        if self.train.class_names != self.test.class_names:
            raise ValueError(f"target {self.name!r}: train and test classes differ")

    @staticmethod
    def read_spec(spec: dict[str, Any]) -> tuple[str, dict[str, Any], float, int, str]:
        """The target's name, its dataset's table, and its validation fraction, seed and the
        split its outputs are recorded on, checked."""
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError("every target needs a name")
        name = str(spec["name"])
        fraction = float(spec.pop("validation", 0.0))
        seed = int(spec.pop("validation_seed", 0))
        evaluate = spec.pop("evaluate", "test")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"target {name!r}: validation must be in [0, 1)")
        if evaluate not in ("test", "validation") or (evaluate == "validation" and not fraction):
            raise ValueError(
                f"target {name!r}: evaluate must be 'test', or 'validation' "
                "with a validation fraction"
            )
        return name, spec, fraction, seed, evaluate


class BuiltinTrainer:
    """Pretrain on each job's source groups, transfer to each target in each mode.

    Parameters
    ----------
    source:
        Dataset table (``{kind = ..., ...}``); by default its classes are the groups that masks
        range over.
    targets:
        Dataset tables, each with a ``name``.
    modes:
        Transfer modes: "fixed_feature" and/or "finetune".
    recipe:
        Fields of :class:`Recipe` (network widths, epochs, batch size, ...).
    groups:
        Optional path to a JSON object mapping each source class name to a group name (e.g.
        CIFAR-100's ``coarse.json`` for its 20 superclasses, clusters, or any ids of yours):
        masks then range over groups, and a model trains on every class of its groups.
    pool:
        Example-level runs: ``{classes = [...], context = "none" | "all"}`` makes every image
        of those classes a group of its own, so masks range over single images; the other
        source images are in no model ("none", the default) or in every model ("all").
    """

    def __init__(
        self,
        source: dict[str, Any],
        targets: Sequence[dict[str, Any]],
        modes: Sequence[str] = ("fixed_feature",),
        recipe: dict[str, Any] | None = None,
        groups: str | None = None,
        pool: dict[str, Any] | None = None,
    ) -> None:
        self.recipe = Recipe.from_dict(recipe)
        self.modes = checked_modes(modes)
        self.source = load_dataset(source, "train", "source")
        self.source_test = load_dataset(source, "test", "source")
        if pool is not None and groups is not None:
            raise ValueError("give either groups (of classes) or a pool (of images), not both")
        if pool is not None:
            unknown = set(pool) - {"classes", "context"}
            if unknown or "classes" not in pool:
                raise ValueError("a pool is {classes = [...], context = 'none' or 'all'}")
            self.groups = example_pool(
                self.source, list(pool["classes"]), pool.get("context", "none")
            )
        else:
            self.groups = mapped_groups(self.source, groups)
        self.groups_file = groups
        self.targets = [TargetData(spec) for spec in targets]
        if not self.targets:
            raise ValueError("the built-in trainer needs at least one target")
        self.device = resolve_device()
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        # Seconds spent pretraining and transferring, summed over stacks (for benchmarks).
        self.phase_seconds = {"pretrain": 0.0, "transfer": 0.0}

    def describe(self) -> TaskDescription:
        targets = tuple(
            TargetInfo(t.name, t.test.example_ids, t.test.labels, t.test.names)
            for t in self.targets
        )
        fingerprints = {
            "source/train": self.source.fingerprint,
            "source/test": self.source_test.fingerprint,
        }
        for t in self.targets:
            fingerprints[f"{t.name}/train"] = t.train.fingerprint
            fingerprints[f"{t.name}/test"] = t.test.fingerprint
        if self.groups_file is not None:  # a rewritten groups file must not join the run
            fingerprints["source/groups"] = fingerprint_arrays(self.groups.group_of_image)
        return TaskDescription(self.groups.names, targets, self.modes, fingerprints)

    def estimate_seconds_per_model(self) -> float:
        counts = [(len(t.train), len(t.test)) for t in self.targets]
        return seconds_per_model(
            self.recipe, self.modes, self.device, len(self.source), self.source.images.shape[1],
            counts,
        )  # fmt: skip

    def data_bytes(self) -> int:
        """Bytes of the decoded images the models train and are evaluated on: the dataset
        cache's size on disk, and what the trainer puts on its device (uint8 pixels)."""
        datasets = [self.source, self.source_test]
        datasets += [d for t in self.targets for d in (t.train, t.test)]
        return sum(int(d.images.nbytes) for d in datasets)

    @functools.cached_property
    def source_placement(self) -> str:
        """Where the source images train from: "on the device" or "streamed" (decided once,
        before training takes any memory)."""
        images = self.source.images
        streamed = streams_source(
            images.nbytes, images.shape[1:3], self.recipe.crop_padding, self.device
        )
        return "streamed" if streamed else "on the device"

    def _source_images(self) -> tuple[torch.Tensor | np.ndarray, torch.Tensor]:
        """The source's training images on the device, or where they do not fit, the
        memory-mapped cache itself, read a batch at a time (labels always on the device)."""
        if self.source_placement == "streamed":
            labels = torch.from_numpy(self.source.labels).to(self.device)
            return self.source.images, labels
        return self._tensors("source", self.source)

    def _tensors(self, name: str, data: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._on_device:
            self._on_device[name] = (
                _to_device(data.images, self.device),
                torch.from_numpy(data.labels).to(self.device),
            )
        return self._on_device[name]

    def warm_up(self) -> None:
        """Pay the process's one-time costs before any chunk's clock starts: a throwaway stack
        of the run's shapes trains two steps (one at the low resolution, if the recipe has
        one), reads a batch of source test images and fits two steps of a head on a batch of
        each target's features. Kernel selection, memory pools and the images' first placement
        otherwise land in the first chunk, which then trains a quarter to a third slower than the
        rest, and an estimate of the time left that starts from it is as much too long."""
        seeds = list(range(self.recipe.stack))
        net = self._network(seeds, len(self.source.class_names))
        images, labels = self._source_images()
        batch = np.arange(min(len(labels), self.recipe.batch_size))
        low = int(bool(self.recipe.low_res_size and self.recipe.low_res_epochs))
        train_stack(
            net, images, labels, [batch] * len(seeds), seeds, self.recipe, 1 + low,
            self.recipe.lr, len(batch), low,
        )  # fmt: skip
        test_images, _ = self._tensors("source_test", self.source_test)
        self._head_logits(net, test_images[:1024])
        for target in self.targets:
            train_images, train_labels = self._tensors(f"{target.name}/train", target.train)
            features = extract_features(net, train_images[:1024])
            with torch.enable_grad():
                fit_linear_probe(
                    features, train_labels[:1024], features,
                    len(target.train.class_names), self.recipe.probe_l2, 2,
                )  # fmt: skip
        self._synchronized_clock()

    def train(self, jobs: Sequence[Job]) -> list[JobResult]:
        results = []
        for start in range(0, len(jobs), self.recipe.stack):
            results += self._train_stack(list(jobs[start : start + self.recipe.stack]))
        return results

    def _train_stack(self, jobs: list[Job]) -> list[JobResult]:
        started = self._synchronized_clock()
        seeds = [job.seed for job in jobs]
        classes = len(self.source.class_names)
        net = self._network(seeds, classes)
        images, labels = self._source_images()
        members = [self.groups.images(job.mask) for job in jobs]
        # An epoch is the expected subset's size: the same for every model of a run.
        epoch_size = self.groups.expected_images(max(job.mask.mean() for job in jobs))
        train_stack(
            net,
            images,
            labels,
            members,
            seeds,
            self.recipe,
            self.recipe.epochs,
            self.recipe.lr,
            epoch_size,
            self.recipe.low_res_epochs,
        )
        pretrained = self._synchronized_clock()
        self.phase_seconds["pretrain"] += pretrained - started
        results = [JobResult(index=job.index) for job in jobs]
        for result, accuracy in zip(results, self._source_accuracy(net, jobs), strict=True):
            result.source_accuracy = accuracy
        for target in self.targets:
            for mode in self.modes:
                logits = self._transfer(net, target, mode, seeds)
                for g, result in enumerate(results):
                    result.logits[output_key(target.name, mode)] = logits[g]
        finished = self._synchronized_clock()
        self.phase_seconds["transfer"] += finished - pretrained
        elapsed = finished - started
        for result in results:
            result.seconds = elapsed / len(jobs)
            if not np.isfinite(result.source_accuracy):
                result.status = "diverged"
        return results

    def _network(self, seeds: list[int], classes: int) -> StackedNetwork:
        """One model per seed, built for the source's image size."""
        return build_network(seeds, self.recipe, classes, self.source.images.shape[1], self.device)

    def _synchronized_clock(self) -> float:
        """Once per stack phase, so no synchronisation inside the training loop."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @staticmethod
    @torch.no_grad()
    def _head_logits(net: StackedNetwork, images: torch.Tensor) -> torch.Tensor:
        """Every model's own head on every image: G x N x classes (float32)."""
        features = extract_features(net, images)
        return torch.bmm(features, net.head_weight.float()) + net.head_bias[:, None, :]

    @torch.no_grad()
    def _source_accuracy(self, net: StackedNetwork, jobs: list[Job]) -> list[float]:
        """Accuracy on the source test images of each model's own classes, among those."""
        images, labels = self._tensors("source_test", self.source_test)
        logits = self._head_logits(net, images)
        accuracies = []
        for g, job in enumerate(jobs):
            keep = torch.as_tensor(self.groups.classes(job.mask), device=self.device)
            rows = keep[labels]
            scores = logits[g][rows].masked_fill(~keep, float("-inf"))
            accuracies.append(float((scores.argmax(1) == labels[rows]).float().mean()))
        return accuracies

    def _transfer(
        self, net: StackedNetwork, target: TargetData, mode: str, seeds: list[int]
    ) -> np.ndarray:
        train_images, train_labels = self._tensors(f"{target.name}/train", target.train)
        test_images, _ = self._tensors(f"{target.name}/test", target.test)
        classes = len(target.train.class_names)
        if mode == "finetune":
            tuned = self._finetune(net, train_images, train_labels, classes, seeds)
            return self._head_logits(tuned, test_images).cpu().numpy()
        return self.fixed_feature_logits(net, target)

    def untrained_control(self, models: int = 1) -> dict[str, float]:
        """Mean target accuracy of untrained backbones (seeds 0, 1, ...) with the
        fixed-feature head: what pretraining must beat."""
        classes = len(self.source.class_names)
        net = self._network(list(range(models)), classes)
        accuracy = {}
        for target in self.targets:
            logits = self.fixed_feature_logits(net, target)
            correct = logits.argmax(axis=2) == target.test.labels
            accuracy[output_key(target.name, "fixed_feature")] = float(correct.mean())
        return accuracy

    def fixed_feature_logits(self, net: StackedNetwork, target: TargetData) -> np.ndarray:
        """Test logits (G x n x C) of a logistic-regression head fitted on ``net``'s frozen
        features of the target's training images; with an untrained ``net`` this is the
        control that pretraining must beat."""
        train_images, train_labels = self._tensors(f"{target.name}/train", target.train)
        test_images, _ = self._tensors(f"{target.name}/test", target.test)
        classes = len(target.train.class_names)
        train_features = extract_features(net, train_images)
        test_features = extract_features(net, test_images)
        with torch.enable_grad():
            logits = fit_linear_probe(
                train_features,
                train_labels,
                test_features,
                classes,
                self.recipe.probe_l2,
                self.recipe.probe_steps,
            )
        return logits.float().cpu().numpy()

    def _finetune(
        self,
        net: StackedNetwork,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: int,
        seeds: list[int],
    ) -> StackedNetwork:
        """A copy of the backbone with a new head, trained end to end on the target."""
        tuned = self._network([s + 7919 for s in seeds], classes)
        backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("head_")}
        tuned.load_state_dict(backbone, strict=False)
        everything = [np.arange(images.shape[0])] * net.models
        train_stack(
            tuned,
            images,
            labels,
            everything,
            [s + 7919 for s in seeds],
            self.recipe,
            self.recipe.finetune_epochs,
            self.recipe.finetune_lr,
        )
        return tuned
