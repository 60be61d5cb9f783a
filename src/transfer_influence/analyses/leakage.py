"""Leakage: target images that a source group affects like no other AND that it holds a copy of.

Two independent signals must agree. The influence says which (source group, target image)
pairs are extreme: the image's influence from that group, in robust standard deviations of
its influences from all groups. The pixels say whether the group holds a near-duplicate:
images are compared as small, per-channel standardised thumbnails (so a re-encoded or
colour-shifted copy still matches), the target at a few crops (so a slightly cropped copy
still matches). The pixel search runs only for the extreme pairs, so it stays cheap for any
source size; a plain duplicate search (:func:`duplicate_search`) compares everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

# torch is imported where pixels are compared, not with the module: a report without images,
# and any command that reads the analyses, starts 1.7 s sooner.

__all__ = ["duplicate_search", "extremeness", "find_leakage", "image_signatures"]

_SIDE = 16  # thumbnails are compared at 16 x 16 pixels
_CROPS = (1.0, 0.95, 0.9, 0.85)  # target crops tried, as fractions of the side
_SIGMA, _RADIUS = 2.0, 4  # the band-pass's Gaussian, in thumbnail pixels


def extremeness(values: np.ndarray) -> np.ndarray:
    """Per column (target example), each row's value in robust standard deviations
    (median and 1.4826 x median absolute deviation over the rows)."""
    median = np.nanmedian(values, axis=0, keepdims=True)
    spread = 1.4826 * np.nanmedian(np.abs(values - median), axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (values - median) / np.where(spread > 0, spread, np.nan)


def _band_pass(pixels: torch.Tensor) -> torch.Tensor:
    """Detail without the smooth layout: the image minus its Gaussian blur (sigma 2 pixels).

    Layout alone (sky above ground) makes unrelated photos correlate; the detail that a copy
    keeps through re-encoding and small crops is what tells it from a look-alike.
    """
    import torch
    import torch.nn.functional as F

    taps = torch.arange(-_RADIUS, _RADIUS + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * _SIGMA**2))
    kernel = kernel / kernel.sum()
    channels = pixels.shape[1]
    blurred = F.pad(pixels, (_RADIUS, _RADIUS, _RADIUS, _RADIUS), mode="replicate")
    blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return pixels - blurred


def _standardise(pixels: torch.Tensor) -> torch.Tensor:
    """N x 3 x s x s -> N x 3s^2: band-passed, each channel centred and scaled (so a colour
    shift does not matter), then unit length."""
    import torch.nn.functional as F

    flat = _band_pass(pixels).flatten(2)
    flat = (flat - flat.mean(dim=2, keepdim=True)) / (flat.std(dim=2, keepdim=True) + 1e-3)
    return F.normalize(flat.flatten(1), dim=1)


def _as_float(images: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)


def image_signatures(images: np.ndarray, crops: bool = False) -> torch.Tensor:
    """Unit-length signatures of N x H x W x 3 uint8 images: N x D, or with ``crops`` V x N x D
    for V crops of each image (full, and smaller crops at the centre and the four corners)."""
    import torch
    import torch.nn.functional as F

    pixels = _as_float(images)
    height, width = pixels.shape[2:]
    views = []
    for fraction in _CROPS if crops else (1.0,):
        h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
        corners = (
            {(0, 0)}
            if fraction == 1.0
            else {
                ((height - h) // 2, (width - w) // 2),
                (0, 0),
                (0, width - w),
                (height - h, 0),
                (height - h, width - w),
            }
        )
        for top, left in sorted(corners):
            view = pixels[:, :, top : top + h, left : left + w]
            view = F.interpolate(view, size=(_SIDE, _SIDE), mode="bilinear", antialias=True)
            views.append(_standardise(view))
    stacked = torch.stack(views)
    return stacked if crops else stacked[0]


def _best_match(target: torch.Tensor, source: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each target (V x n x D crops), the most similar source signature: (index, cosine)."""
    import torch

    best_value = torch.full((target.shape[1],), -2.0)
    best_index = torch.zeros(target.shape[1], dtype=torch.long)
    for start in range(0, source.shape[0], 4096):
        block = source[start : start + 4096]
        scores = torch.einsum("vnd,sd->nsv", target, block).amax(dim=2)
        value, index = scores.max(dim=1)
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    return best_index.numpy(), best_value.numpy()


def duplicate_search(
    target_images: np.ndarray, source_images: np.ndarray, similarity_min: float = 0.75
) -> pd.DataFrame:
    """Every target image whose most similar source image reaches ``similarity_min``
    (the pixel signal alone, over all pairs): columns example, source_image, similarity."""
    if not len(target_images) or not len(source_images):
        return pd.DataFrame({"example": [], "source_image": [], "similarity": []})
    source = image_signatures(source_images)
    indices, values = [], []
    for start in range(0, len(target_images), 1024):
        index, value = _best_match(
            image_signatures(target_images[start : start + 1024], crops=True), source
        )
        indices.append(index)
        values.append(value)
    index, value = np.concatenate(indices), np.concatenate(values)
    hits = np.flatnonzero(value >= similarity_min)
    return pd.DataFrame(
        {"example": hits, "source_image": index[hits], "similarity": value[hits].astype(float)}
    ).sort_values("similarity", ascending=False, kind="stable", ignore_index=True)


def find_leakage(
    influence: np.ndarray,
    target_images: np.ndarray,
    source_images: np.ndarray,
    source_groups: np.ndarray,
    z_min: float = 4.0,
    similarity_min: float = 0.75,
    max_candidates: int = 2000,
) -> pd.DataFrame:
    """Leakage candidates and verdicts.

    Parameters
    ----------
    influence:
        K x n per-example influence.
    target_images, source_images:
        n and N images (N x H x W x 3 uint8); ``source_groups`` gives each source image's group.
    z_min:
        How extreme (robust standard deviations above the example's other groups) an influence
        must be to make a candidate.
    similarity_min:
        Cosine similarity of signatures above which a source image counts as a near-duplicate.

    Returns one row per candidate pair, most extreme first: ``group``, ``example``, ``z``,
    ``influence``, ``source_image`` (the group's most similar image), ``similarity``,
    ``look_alike`` (similar, but the source image is also the best match of other flagged
    target images: a common scene, such as a horizon over water, rather than a copy) and
    ``leak`` (both signals agree, and the match is not a look-alike).
    """
    z = extremeness(influence)
    z = np.where(np.isfinite(z), z, -np.inf)
    groups, examples = np.nonzero(z >= z_min)
    order = np.argsort(-z[groups, examples], kind="stable")[:max_candidates]
    groups, examples = groups[order], examples[order]
    source_image = np.full(groups.size, -1)
    similarity = np.full(groups.size, np.nan)
    for k in np.unique(groups):
        pairs = np.flatnonzero(groups == k)
        members = np.flatnonzero(source_groups == k)
        if not members.size:
            continue
        target = image_signatures(target_images[examples[pairs]], crops=True)
        index, value = _best_match(target, image_signatures(source_images[members]))
        source_image[pairs] = members[index]
        similarity[pairs] = value
    similar = similarity >= similarity_min
    # A copy is the copy of one image; one source image matching several target images is a
    # generic scene that each of them resembles.
    matched = pd.Series(examples[similar]).groupby(source_image[similar]).nunique()
    look_alike = similar & (matched.reindex(source_image).fillna(0).to_numpy() >= 2)
    return pd.DataFrame(
        {
            "group": groups,
            "example": examples,
            "z": z[groups, examples],
            "influence": influence[groups, examples],
            "source_image": source_image,
            "similarity": similarity,
            "look_alike": look_alike,
            "leak": similar & ~look_alike,
        }
    )
