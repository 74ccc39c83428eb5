"""Robustness of a classifier to fixed, seeded perturbations of the test images (computed on the fly).

Every condition is deterministic for a seed: rotations by fixed angles (positive: counter-clockwise), shifts
by a fixed distance in a seeded random direction per image, additive Gaussian noise, Gaussian blur and elastic
distortion (``data.augment``'s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from digits import data


@dataclass(frozen=True)
class Condition:
    name: str  # e.g. "rotation -30°"
    family: str  # rotation | shift | noise | blur | elastic
    strength: float  # degrees, px, noise σ, blur σ (px), peak elastic displacement (px)

    @property
    def key(self) -> str:
        """ASCII name for metric keys, e.g. ``rotation_-30``, ``noise_0.1``."""
        return f"{self.family}_{self.strength:g}"


CONDITIONS = (
    *(Condition(f"rotation {d:+d}°", "rotation", d) for d in (-30, -15, 15, 30)),
    *(Condition(f"shift {d} px", "shift", d) for d in (2, 4)),
    *(Condition(f"noise σ={s}", "noise", s) for s in (0.1, 0.2, 0.3)),
    *(Condition(f"blur σ={s} px", "blur", s) for s in (0.5, 1.0, 1.5)),
    *(Condition(f"elastic {a} px", "elastic", a) for a in (2, 4)),
)
ELASTIC_SCALE = 7.0  # px over which the elastic displacement varies (the train default)


def _rotate(x: torch.Tensor, degrees: float, _: torch.Generator) -> torch.Tensor:
    n = len(x)
    angle = torch.full((n,), math.radians(degrees), device=x.device, dtype=x.dtype)
    ones, zeros = torch.ones_like(angle), torch.zeros_like(angle)
    return data.warp(x, data.affine_grid(x, angle, ones, zeros, zeros))


def _shift(x: torch.Tensor, pixels: float, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    direction = torch.rand(n, generator=gen, device=x.device, dtype=x.dtype) * 2 * math.pi
    zeros, ones = torch.zeros_like(direction), torch.ones_like(direction)
    tx, ty = torch.cos(direction) * pixels * 2 / w, torch.sin(direction) * pixels * 2 / h
    return data.warp(x, data.affine_grid(x, zeros, ones, tx, ty))


def _noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0, 1)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ⌈3σ⌉."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def blur_matrix(sigma: float, size: int) -> torch.Tensor:
    """[size, size] matrix M with M @ v = v convolved with ``gaussian_kernel(sigma)``, zero padding."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    offset = torch.arange(size)[None, :] - torch.arange(size)[:, None] + r  # kernel index for (output, input)
    return torch.where((offset >= 0) & (offset < len(k)), k[offset.clamp(0, len(k) - 1)], 0.0)


def _blur(x: torch.Tensor, sigma: float, _: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur as two small matrix products (much faster than a 1-channel conv2d on the CPU)."""
    h, w = x.shape[-2:]
    rows, cols = (blur_matrix(sigma, n).to(x.device, x.dtype) for n in (h, w))
    return rows @ x @ cols.T


def _elastic(x: torch.Tensor, pixels: float, gen: torch.Generator) -> torch.Tensor:
    return data.augment(x, 0, 0, 0, gen, elastic_px=pixels, elastic_scale=ELASTIC_SCALE)


TRANSFORMS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "rotation": _rotate,
    "shift": _shift,
    "noise": _noise,
    "blur": _blur,
    "elastic": _elastic,
}


def perturb(x: torch.Tensor, condition: Condition, seed: int) -> torch.Tensor:
    """``x`` [N, 1, 28, 28] in [0, 1] under ``condition``; the same seed gives the same images."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return TRANSFORMS[condition.family](x, condition.strength, gen)


def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, seed: int
) -> list[dict[str, object]]:
    """Accuracy of ``predict`` (images → predicted classes) on the clean images and under every condition."""
    rows: list[dict[str, object]] = [
        {"condition": "clean", "key": "clean", "family": "clean", "strength": 0.0, "accuracy": _accuracy(predict(x), y)}
    ]
    for i, c in enumerate(CONDITIONS):
        pred = predict(perturb(x, c, seed + i))
        rows.append({"condition": c.name, "key": c.key, "family": c.family, "strength": float(c.strength),
                     "accuracy": _accuracy(pred, y)})  # fmt: skip
    return rows


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred == y).double().mean().item()


def examples(image: torch.Tensor, seed: int) -> list[tuple[str, torch.Tensor]]:
    """One image [1, 28, 28] clean and under every condition (seeded as in ``evaluate``), for figures."""
    x = image[None]
    return [("clean", image[0])] + [(c.name, perturb(x, c, seed + i)[0, 0]) for i, c in enumerate(CONDITIONS)]
