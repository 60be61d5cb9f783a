"""The recipe, and the training of G stacked models (:mod:`.networks`) as one network.

Every random choice (initialisation, data order, augmentation) comes from the
model's own seed through CPU generators, drawn before training, so there is no host
synchronisation inside the training loop and a model's randomness does not depend on which
other models share its stack.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .networks import ARCHS, DEFAULT_POOL, DEFAULT_WIDTHS, StackedNetwork

__all__ = ["POOLS", "Recipe", "extract_features", "train_stack"]

POOLS = ("max", "max+mean", "mean")
DATA_ORDERS = ("independent", "coupled")

_MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
_STD = torch.tensor([0.2470, 0.2435, 0.2616])


@dataclass(frozen=True)
class Recipe:
    """How each subset model is pretrained and transferred (every field defines a run)."""

    arch: str = "cnn"  # "cnn" (small, for 16-32 px) or "resnet18" (see .networks)
    widths: tuple[int, ...] = ()  # channels per stage; () takes the arch's own
    epochs: int = 6
    batch_size: int = 512
    lr: float = 0.2  # peak SGD learning rate per 512 images (scaled with the batch size)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup: float = 0.2  # fraction of steps for the linear warm-up of the one-cycle schedule
    crop_padding: int = 4  # random-translation augmentation, in pixels; 0 turns it off
    flip: bool = True
    # "independent": each model draws its own order of its images. "coupled": models that share
    # a seed (run.seeds = "run" or "chunk") see the images they have in common in the
    # same order, cropped and flipped alike — common random numbers for their contrasts.
    data_order: str = "independent"
    # Progressive resizing: the first low_res_epochs train on images downscaled to
    # low_res_size pixels (a (s/32)^2 share of the arithmetic); 0 turns it off.
    low_res_size: int = 0
    low_res_epochs: int = 0
    # Features: global "max", "mean" or "max+mean" pooling of the last stage; "" takes the
    # arch's own ("max" for the cnn, "mean" for the resnet18, as torchvision's).
    pool: str = ""
    stack: int = 8  # models trained at once
    probe_l2: float = 1e-3  # L2 penalty of the fixed-feature logistic-regression head
    probe_steps: int = 100  # L-BFGS iterations of that head
    finetune_epochs: int = 2
    finetune_lr: float = 0.05

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Recipe:
        """A recipe from a config's ``recipe`` table; an unknown key is a one-line error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values or {}) - set(known))
        if unknown:
            raise ValueError(f"unknown recipe key {unknown[0]!r}; known: {', '.join(known)}")
        return cls(**(values or {}))

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"recipe.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        widths = tuple(int(w) for w in self.widths) or DEFAULT_WIDTHS[self.arch]
        object.__setattr__(self, "widths", widths)
        if min(self.widths) < 1:
            raise ValueError("recipe.widths must be positive channel counts")
        if self.arch == "resnet18" and len(self.widths) != 4:
            raise ValueError("recipe.widths of a resnet18 are four channel counts")
        for name in ("epochs", "batch_size", "stack", "probe_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"recipe.{name} must be at least 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError("recipe.warmup must be in [0, 1)")
        if self.data_order not in DATA_ORDERS:
            raise ValueError(f"recipe.data_order must be one of {', '.join(DATA_ORDERS)}")
        object.__setattr__(self, "pool", self.pool or DEFAULT_POOL[self.arch])
        if self.pool not in POOLS:
            raise ValueError(f"recipe.pool must be one of {', '.join(POOLS)}")
        if self.low_res_size < 0 or not 0 <= self.low_res_epochs <= self.epochs:
            raise ValueError("recipe.low_res_epochs must be between 0 and recipe.epochs")


def _normalise(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ... x H x W x 3 -> float ... x 3 x H x W, standardised."""
    x = images.to(dtype).div_(255.0)
    x = (x - _MEAN.to(x.device, dtype)) / _STD.to(x.device, dtype)
    return x.movedim(-1, -3)


def _own_order(
    member: torch.Tensor, needed: int, gen: torch.Generator, pad: int, flip: bool
) -> tuple[torch.Tensor, ...]:
    """A model's own stream: passes over its images in random order, and for every sample a
    crop offset and a flip."""
    size = len(member)
    order = torch.cat(
        [torch.randperm(size, generator=gen) for _ in range(math.ceil(needed / size))]
    )[:needed]
    dy = torch.randint(0, 2 * pad + 1, (needed,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (needed,), generator=gen)
    flips = torch.rand((needed,), generator=gen) < (0.5 if flip else 0.0)
    return member[order], dy, dx, flips


def _coupled_order(
    member: torch.Tensor, total: int, needed: int, gen: torch.Generator, pad: int, flip: bool
) -> tuple[torch.Tensor, ...]:
    """The seed's passes over all ``total`` images — an order, and a crop and flip per image —
    of which the model takes its own images: models of one seed see the images they share in
    the same order, cropped and flipped alike. Each model's stream alone is as random as its
    own order would be."""
    held = torch.zeros(total, dtype=torch.bool)
    held[member] = True
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    for _ in range(math.ceil(needed / len(member))):
        order = torch.randperm(total, generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (total,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (total,), generator=gen)
        flips = torch.rand((total,), generator=gen) < (0.5 if flip else 0.0)
        mine = order[held[order]]
        for part, values in zip(parts, (mine, dy[mine], dx[mine], flips[mine]), strict=True):
            part.append(values)
    return tuple(torch.cat(part)[:needed] for part in parts)


def _plan_batches(
    members: list[np.ndarray],
    total: int,
    batch: int,
    steps: int,
    seeds: list[int],
    pad: int,
    flip: bool,
    coupled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step's image indices (into all ``total`` images), crop offsets and flips for every
    model, drawn up front from each model's seed: steps x G x batch each."""
    planned: list[list[torch.Tensor]] = [[], [], [], []]
    for member, seed in zip(members, seeds, strict=True):
        gen = torch.Generator().manual_seed(int(seed) + 1)
        member = torch.as_tensor(np.asarray(member), dtype=torch.long)
        stream = (
            _coupled_order(member, total, steps * batch, gen, pad, flip)
            if coupled
            else _own_order(member, steps * batch, gen, pad, flip)
        )
        for part, values in zip(planned, stream, strict=True):
            part.append(values.view(steps, batch))
    indices, dys, dxs, flips = (torch.stack(part, 1) for part in planned)
    return indices, dys, dxs, flips


def _augmented_batch(
    padded: torch.Tensor,
    index: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Random translations and flips as one gather: G x B indices -> G x B x H x W x 3 uint8."""
    height, width = size
    rows = dy[..., None] + torch.arange(height, device=padded.device)
    cols = torch.arange(width, device=padded.device)
    cols = torch.where(flip[..., None], width - 1 - cols, cols) + dx[..., None]
    return padded[index[..., None, None], rows[..., :, None], cols[..., None, :]]


class StreamedBatches:
    """Training batches gathered from images held in host memory (a memory-mapped cache too
    large for the device): each step's images are read once, in index order, into pinned
    memory and copied to the device while the step before computes."""

    def __init__(self, images: np.ndarray, indices: torch.Tensor, device: torch.device) -> None:
        self.images, self.indices, self.device = images, indices, device
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._next: Future | None = None

    def _read(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows, local = torch.unique(self.indices[step], return_inverse=True)
        batch = torch.from_numpy(np.take(self.images, rows.numpy(), axis=0))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch, local

    def get(self, step: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s distinct images on the device, padded, and the G x B indices of the
        step's samples into them; starts reading the next step's."""
        future = self._next if self._next is not None else self._pool.submit(self._read, step)
        self._next = (
            self._pool.submit(self._read, step + 1) if step + 1 < len(self.indices) else None
        )
        batch, local = future.result()
        batch = batch.to(self.device, non_blocking=True)
        padded = F.pad(batch, (0, 0, pad, pad, pad, pad)) if pad else batch
        return padded, local.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def train_stack(
    net: StackedNetwork,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    members: list[np.ndarray],
    seeds: list[int],
    recipe: Recipe,
    epochs: int,
    lr: float,
    epoch_size: int | None = None,
    low_res_epochs: int = 0,
    progress: bool = False,
) -> None:
    """Train model g of ``net`` on ``images[members[g]]`` (uint8 N x H x W x 3): a tensor on
    the device, or an array in host memory whose batches are streamed to the device
    (:class:`StreamedBatches`; the same models either way). ``labels`` is on the device.

    An epoch is ``epoch_size`` images (default: the mean member count). Pass a value that does
    not depend on which models share the stack — such as the expected subset size — so that a
    model trains the same whatever its neighbours. The first ``low_res_epochs`` train at
    ``recipe.low_res_size`` pixels (pretraining only: fine-tuning passes 0). ``progress``
    shows a bar over the steps.
    """
    device = labels.device
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    pad = recipe.crop_padding
    size = (images.shape[1], images.shape[2])
    streamed = isinstance(images, np.ndarray)
    if not streamed:
        padded = F.pad(images, (0, 0, pad, pad, pad, pad)) if pad else images
    epoch_size = epoch_size or sum(len(m) for m in members) / len(members)
    steps = max(1, math.ceil(epoch_size / recipe.batch_size)) * epochs
    plan = _plan_batches(
        members,
        images.shape[0],
        recipe.batch_size,
        steps,
        seeds,
        pad,
        recipe.flip,
        coupled=recipe.data_order == "coupled",
    )
    stream = StreamedBatches(images, plan[0], device) if streamed else None
    indices, dys, dxs, flips = (t.to(device) for t in plan)
    scaled_lr = lr * recipe.batch_size / 512
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=scaled_lr,
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    warm = max(1, int(recipe.warmup * steps))
    decay = max(1, steps - warm)  # a run of a single step is all warm-up
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / decay)
    )
    low_res_steps = steps // epochs * low_res_epochs if recipe.low_res_size else 0
    net.train()
    try:
        for step in tqdm(
            range(steps), desc="training", unit="step", disable=not progress, leave=False
        ):
            index = indices[step]  # G x B image indices
            if stream is not None:
                padded, local = stream.get(step, pad)
            else:
                local = index
            batch = _augmented_batch(padded, local, dys[step], dxs[step], flips[step], size)
            x = _normalise(batch, dtype)  # G x B x 3 x H x W
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *size)
            if step < low_res_steps:
                small = (recipe.low_res_size, recipe.low_res_size)
                x = F.interpolate(
                    x.float(), size=small, mode="bilinear", antialias=True, align_corners=False
                ).to(dtype)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = net(x)  # B x G x classes
            y = labels[index].T  # B x G
            # Sum over models of each model's mean loss: every model gets its own gradient.
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                y.reshape(-1),
                label_smoothing=recipe.label_smoothing,
            ) * len(members)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        if stream is not None:
            stream.close()


@torch.no_grad()
def extract_features(
    net: StackedNetwork,
    images: torch.Tensor | np.ndarray,
    batch: int = 1024,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Features of every image under every model: G x N x feature_dim (float32). ``images``
    in host memory (a memory-mapped cache) are copied to ``device`` a batch at a time."""
    device = images.device if isinstance(images, torch.Tensor) else device or torch.device("cpu")
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    net.eval()
    out = []
    for start in range(0, images.shape[0], batch):
        rows = images[start : start + batch]
        if isinstance(rows, np.ndarray):
            rows = torch.from_numpy(np.array(rows)).to(device)
        x = _normalise(rows, dtype).repeat(1, net.models, 1, 1)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out.append(net.features(x).float())
    return torch.cat(out).transpose(0, 1).contiguous()
