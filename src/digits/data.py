"""Datasets as whole tensors: IDX loading, stratified splits, batches by permuted indexing, batched augmentation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from digits import files, idx
from digits.errors import UserError


class DataError(UserError, ValueError):
    """Data on disk is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


def read_idx_pair(images_path: Path, labels_path: Path) -> Split:
    """Read an images/labels IDX pair and check they belong together."""
    try:
        images = idx.decode(images_path.read_bytes(), str(images_path))
        labels = idx.decode(labels_path.read_bytes(), str(labels_path))
    except OSError as exc:
        raise DataError(f"cannot read MNIST data: {exc}") from None
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected N×28×28 images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_path}: {labels.shape} labels for {len(images)} images")
    if labels.max(initial=0) > 9:
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..9")
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly ``size`` samples, each class keeping its share of ``labels``.

    Each class gets its share rounded down; the slots left over go to the largest remainders.
    """
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * size / len(labels)
    quota = np.floor(share).astype(int)
    quota[np.argsort(quota - share, kind="stable")[: size - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(per_class))


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, taken) with ``round(fraction * N)`` taken, stratified by class."""
    taken = stratified_sample(labels, round(len(labels) * fraction), seed)
    rest = np.setdiff1d(np.arange(len(labels)), taken, assume_unique=True)
    return rest, taken


def subset(split: Split, limit: int | None, seed: int) -> Split:
    """A stratified subset of exactly ``limit`` samples (the small-data mode for tests and smoke runs)."""
    if limit is None or limit >= len(split):
        return split
    keep = stratified_sample(split.labels.numpy(), limit, seed)
    return Split(split.images[keep], split.labels[keep])


def save_split(path: Path, split: Split) -> None:
    files.write_torch(path, {"images": split.images.contiguous(), "labels": split.labels.contiguous()})


def read_stage_output(path: str | Path, keys: Sequence[str], stage: str, what: str) -> list:
    """The entries ``keys`` of a torch file that the stage ``stage`` writes (weights_only: tensors and plain
    containers only, no code runs on load); a missing file names the stage to run, an unreadable one ``what`` it is."""
    path = Path(path)
    try:
        blob = torch.load(path, weights_only=True)
        return [blob[key] for key in keys]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the {stage} stage (dvc repro {stage})") from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise DataError(f"{path}: unreadable or corrupted {what} ({type(exc).__name__}: {exc})") from None


def load_split(path: str | Path) -> Split:
    """Load a processed split."""
    images, labels = read_stage_output(path, ("images", "labels"), "preprocess", "processed data")
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise DataError(f"{path}: expected tensors, got {type(images).__name__} / {type(labels).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 3 or labels.dtype != torch.int64 or len(images) != len(labels):
        raise DataError(f"{path}: unexpected contents {images.dtype}{tuple(images.shape)} / {labels.dtype}")
    return Split(images, labels)


def to_device(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a split to ``device`` once: images as float [N, 1, 28, 28] in [0, 1], labels int64."""
    x = split.images.to(device).unsqueeze(1).float().div_(255.0)
    return x, split.labels.to(device)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield batches by indexing whole tensors; shuffled when a generator is given."""
    n = len(y)
    order = torch.randperm(n, generator=generator, device=generator.device) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            sel = order[start : start + batch_size]
            yield x[sel], y[sel]


def augment(
    x: torch.Tensor,
    rotation_deg: float,
    zoom: float,
    shift: float,
    generator: torch.Generator,
    elastic_px: float = 0.0,
    elastic_scale: float = 4.0,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Random rotation (±deg), zoom (±fraction), shift (±fraction of the side) and elastic distortion for a
    whole batch at once: one sampling grid per sample, one ``grid_sample`` (``interpolation``: bilinear or
    nearest, as torchvision's RandomAffine uses by default) with zero (background) padding.

    Elastic distortion (after Simard et al. 2003) adds a smooth random displacement field: random values on a
    coarse grid one node per ``elastic_scale`` px, upsampled bicubically (``upsample_bicubic``;
    cheaper than Gaussian smoothing at full resolution) and scaled so the largest displacement in each image is
    ``elastic_px`` px.
    """
    if rotation_deg == 0 and zoom == 0 and shift == 0 and elastic_px == 0:
        return x
    n, _, h, w = x.shape

    def uniform(*shape: int, half_width: float = 1.0) -> torch.Tensor:
        r = torch.rand(*shape, generator=generator, device=x.device, dtype=x.dtype)
        return (r * 2 - 1) * half_width

    angle = uniform(n, half_width=math.radians(rotation_deg))
    scale = 1 + uniform(n, half_width=zoom)
    tx, ty = uniform(n, half_width=2 * shift), uniform(n, half_width=2 * shift)  # grid coordinates span [-1, 1]
    grid = affine_grid(x, angle, scale, tx, ty)
    if elastic_px:
        coarse = uniform(n, 2, max(2, round(h / elastic_scale)), max(2, round(w / elastic_scale)))
        field = upsample_bicubic(coarse, (h, w), align_corners=False)
        field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # peak displacement = alpha
        pixels_to_grid = torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)
        grid = grid + field.permute(0, 2, 3, 1) * elastic_px * pixels_to_grid
    return warp(x, grid, interpolation)


def affine_grid(
    x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
) -> torch.Tensor:
    """Sampling grid [N, H, W, 2] for per-sample rotation (radians), zoom factor and shift in grid units (the
    side spans 2) of a batch ``x`` [N, C, H, W]: ``F.affine_grid``'s grid (to float rounding), as one matrix product
    of its pixel coordinates with all the samples' matrices; ``F.affine_grid`` itself takes a batched product, about
    20× slower on a CPU for 28 px images."""
    n, _, h, w = x.shape
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [N, 2, 3]
    identity = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0)
    pixels = F.affine_grid(identity, [1, 1, h, w], align_corners=False).view(h * w, 2)
    homogeneous = torch.cat([pixels, pixels.new_ones(h * w, 1)], 1)  # [H·W, 3]
    return torch.einsum("pk,nik->npi", homogeneous, theta).view(n, h, w, 2)


def upsample_bicubic(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bicubic", align_corners=align_corners)`` of a coarse grid ``x`` [N, C, h, w]
    as two matrix products: the interpolation is linear and separable, so its matrix per axis is that of
    ``F.interpolate`` applied to the unit vectors. The same values to float rounding, about 10× faster on a CPU
    for the few-node grids of the elastic field and the shading."""

    def matrix(k: int, side: int) -> torch.Tensor:  # [side, k]
        units = torch.eye(k, device=x.device, dtype=x.dtype).view(k, 1, k, 1)
        return F.interpolate(units, size=(side, 1), mode="bicubic", align_corners=align_corners)[:, 0, :, 0].T

    return matrix(x.shape[-2], size[0]) @ x @ matrix(x.shape[-1], size[1]).T


def warp(x: torch.Tensor, grid: torch.Tensor, interpolation: str = "bilinear") -> torch.Tensor:
    """Resample ``x`` at ``grid`` with zero (background) padding."""
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
