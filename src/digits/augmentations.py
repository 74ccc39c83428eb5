"""Per-sample training augmentations beyond the geometric ones of ``data.augment``: stroke thickness, outlines, low
resolution, blur, erasing, scribbles, uneven lighting, contrast and noise, each batched on the training device.

Each takes a batch ``x`` [N, C, H, W] in [0, 1], a strength (0: off, ``x`` itself returned and no random numbers
drawn) and the training ``generator`` (every random draw comes from it, so a seed repeats a run bit for bit), and
returns a batch of the same shape, dtype and device in [0, 1]. Each sample draws its own parameters (σ, side,
rectangle, …) up to the strength, so a batch mixes clean and strongly changed images; no sample depends on another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from digits import data


def _rand(x: torch.Tensor, *shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=x.device, dtype=x.dtype)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` [N] shaped to broadcast over ``x`` [N, C, H, W]."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per-sample linear map of the image planes: ``rows @ x @ colsᵀ`` with ``rows`` [N, H, H], ``cols`` [N, W, W]."""
    return rows.unsqueeze(1) @ x @ cols.unsqueeze(1).transpose(-1, -2)


def _max3(x: torch.Tensor) -> torch.Tensor:
    """Maximum over each pixel's 3×3 neighbourhood within the image, for ``x`` ≥ 0 (zero padding): two separable
    passes of shifted views, many times faster on a CPU than ``max_pool2d`` with stride 1."""
    p = F.pad(x, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def thickness(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Thicker or thinner strokes: grey dilation (3×3 max) or erosion (3×3 min), within the image, blended in by
    a per-sample s ~ U(−strength, strength): ``x + |s|·(dilate(x) − x)`` for s > 0, ``x + |s|·(erode(x) − x)`` for
    s < 0. At |s| = 1 a stroke gains or loses about one pixel on each side."""
    if not strength:
        return x
    s = _per_sample((_rand(x, len(x), generator=generator) * 2 - 1) * strength, x)
    flipped = (x - 0.5) * s.sign() + 0.5  # 1 − x where s < 0: erosion is 1 − the dilation of 1 − x
    return torch.addcmul(x, s, _max3(flipped) - flipped).clamp(0, 1)


def _resampling(side: int, low: int, x: torch.Tensor) -> torch.Tensor:
    """[side − low + 1, side, side]: for each smaller side m in low..side, the matrix that averages ``side`` pixels
    down to m (exact area weights, as a sensor of that resolution integrates) and upsamples them back bilinearly
    (``F.interpolate(mode="bilinear", align_corners=False)``, edges clamped)."""
    m = torch.arange(low, side + 1, device=x.device, dtype=x.dtype).view(-1, 1, 1)
    pixels = torch.arange(side, device=x.device, dtype=x.dtype)
    full, small = pixels.view(1, 1, -1), pixels.view(1, -1, 1)  # area: rows are low-resolution pixels
    scale = side / m
    area = (torch.minimum(full + 1, (small + 1) * scale) - torch.maximum(full, small * scale)).clamp(min=0) / scale
    source = ((pixels.view(1, -1, 1) + 0.5) * m / side - 0.5).clamp(min=0).minimum(m - 1)  # bilinear: rows output
    bilinear = (1 - (source - full).abs()).clamp(min=0) * (full < m)
    return bilinear @ area


def lowres(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Low resolution: each sample downscaled to a random whole side m ~ U{round(side·(1 − strength)), …, side}
    by area averaging, then upscaled back bilinearly; one per-sample matrix product per axis."""
    if not strength:
        return x
    h, w = x.shape[-2:]
    u = _rand(x, len(x), generator=generator)

    def resample(side: int) -> torch.Tensor:
        low = round(side * (1 - strength))
        return _resampling(side, low, x)[(u * (side - low + 1)).long().clamp(max=side - low)]

    rows = resample(h)
    return _separable(x, rows, rows if h == w else resample(w)).clamp(0, 1)


def blur(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-sample σ ~ U(0, strength) px and zero (background) padding, as a separable
    per-sample matrix product; the kernel spans the whole image, so it is never truncated."""
    if not strength:
        return x
    h, w = x.shape[-2:]
    sigma = (_rand(x, len(x), generator=generator) * strength).clamp(min=1e-2).view(-1, 1)  # 1e-2: a delta

    def matrix(side: int) -> torch.Tensor:
        offsets = torch.arange(1 - side, side, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum(-1, keepdim=True)  # [N, 2·side − 1], symmetric
        return kernel.unfold(1, side, 1).flip(1)  # [N, side, side]: row i weighs pixel j by kernel[side − 1 + i − j]

    rows = matrix(h)
    return _separable(x, rows, rows if h == w else matrix(w)).clamp(0, 1)


ERASED_AREA = (0.02, 0.2)  # erasing: the rectangle's share of the image
ERASED_ASPECT = 3.0  # erasing: height/width within [1/3, 3], log-uniform


def erasing(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Random erasing: with ``probability`` per sample, a rectangle covering ``ERASED_AREA`` of the image (uniform),
    aspect ratio log-uniform in [1/3, 3], at a uniform position inside the image, set to 0 (background)."""
    if not probability:
        return x
    n, h, w = len(x), *x.shape[-2:]
    hit, area, aspect, top, left = _rand(x, 5, n, generator=generator)
    area = (ERASED_AREA[0] + area * (ERASED_AREA[1] - ERASED_AREA[0])) * h * w
    aspect = ERASED_ASPECT ** (aspect * 2 - 1)
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (top * (h - eh + 1)).floor().view(-1, 1)
    left = (left * (w - ew + 1)).floor().view(-1, 1)
    r = torch.arange(h, device=x.device, dtype=x.dtype)
    c = torch.arange(w, device=x.device, dtype=x.dtype)
    in_rows = ((r >= top) & (r < top + eh.view(-1, 1)) & (hit < probability).view(-1, 1)).to(x.dtype)
    in_cols = ((c >= left) & (c < left + ew.view(-1, 1))).to(x.dtype)
    return x * (1 - in_rows.unsqueeze(2) * in_cols.unsqueeze(1)).unsqueeze(1)  # a product: faster than a masked fill


BACKGROUND_LIFT = 0.1  # contrast: the background rises by at most this × strength


def contrast(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Contrast and brightness jitter: ``clamp(c·x + b, 0, 1)`` with a per-sample gain c = e^(strength·u),
    u ~ U(−1, 1) (ink dimmer or brighter, never gone), and background b ~ U(0, ``BACKGROUND_LIFT``·strength)."""
    if not strength:
        return x
    gain, lift = _rand(x, 2, len(x), generator=generator)
    gain = _per_sample(torch.exp(strength * (gain * 2 - 1)), x)
    return (gain * x + _per_sample(lift * BACKGROUND_LIFT * strength, x)).clamp(0, 1)


def noise(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise with a per-sample σ ~ U(0, strength), clamped to [0, 1]."""
    if not strength:
        return x
    sigma = _per_sample(_rand(x, len(x), generator=generator) * strength, x)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + sigma * z).clamp(0, 1)


def outline(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Strokes as outlines: with ``probability`` per sample, the image replaced by the ring just outside its strokes
    (3×3 grey dilation minus the image, doubled and clipped), thin lines at full ink along both edges of each
    stroke, as an edge detector or a pen tracing the contour would draw them."""
    if not probability:
        return x
    hit = _per_sample(_rand(x, len(x), generator=generator) < probability, x)
    return torch.where(hit, (2 * (_max3(x) - x)).clamp(0, 1), x)


SCRIBBLE_WIDTH = (0.8, 2.5)  # scribble: stroke width in px
SCRIBBLE_PERIOD = (3.0, 8.0)  # scribble: px per dash and per zigzag tooth


def scribble(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """A stray pen stroke: with ``probability`` per sample, one line across the image (uniform angle, through a
    point within 7 px of the centre), of uniform width in ``SCRIBBLE_WIDTH`` and ink in [0.5, 1], straight or
    zigzag (teeth up to 4 px high), solid or dashed (each half of the time), anti-aliased, drawn over the digit."""
    if not probability:
        return x
    n, h, w = len(x), *x.shape[-2:]
    hit, angle, cx, cy, width, ink, teeth, zigzag, dashed, period, phase = (
        v.view(-1, 1, 1) for v in _rand(x, 11, n, generator=generator))  # fmt: skip
    cos, sin = torch.cos(angle * math.pi), torch.sin(angle * math.pi)
    dx = torch.arange(w, device=x.device, dtype=x.dtype) - ((cx * 2 - 1) * 7 + (w - 1) / 2)  # [N, 1, W]
    dy = torch.arange(h, device=x.device, dtype=x.dtype).view(-1, 1) - ((cy * 2 - 1) * 7 + (h - 1) / 2)  # [N, H, 1]
    period = SCRIBBLE_PERIOD[0] + period * (SCRIBBLE_PERIOD[1] - SCRIBBLE_PERIOD[0])
    cycle = torch.frac((dx * cos + dy * sin) / period + phase)  # position along the line within a tooth or dash
    tooth = teeth * 4 * (zigzag < 0.5) * (2 * (cycle - 0.5).abs() - 0.5)  # a triangle wave across the line
    half = (SCRIBBLE_WIDTH[0] + width * (SCRIBBLE_WIDTH[1] - SCRIBBLE_WIDTH[0])) / 2
    stroke = (half + 0.5 - (dy * cos - dx * sin - tooth).abs()).clamp(0, 1)
    stroke = stroke * ((cycle < 0.5) | (dashed >= 0.5)) * (0.5 + ink / 2) * (hit < probability)
    return torch.maximum(x, stroke.unsqueeze(1))


SHADING_GRID = 4  # shading: the random light field's control points per side


def shading(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Uneven lighting: a smooth random background f in [0, 1] (a ``SHADING_GRID``² grid of uniform values,
    upsampled bicubically) added with a per-sample weight a ~ U(0, strength), and the sum scaled back into [0, 1]:
    ``(x + a·f) / (1 + a)``. The ink then stands out from a bright, uneven background by less than it did."""
    if not strength:
        return x
    n, h, w = len(x), *x.shape[-2:]
    a = _per_sample(_rand(x, n, generator=generator) * strength, x)
    grid = _rand(x, n, 1, SHADING_GRID, SHADING_GRID, generator=generator)
    light = data.upsample_bicubic(grid, (h, w), align_corners=True).clamp(0, 1)
    return (x + a * light) / (1 + a)


TRANSFORMS = {"thickness": thickness, "outline": outline, "lowres": lowres, "blur": blur, "erasing": erasing,
              "scribble": scribble, "shading": shading, "contrast": contrast, "noise": noise}  # fmt: skip
"""The transforms in the order ``apply`` runs them: strokes, optics, occlusion and clutter, then light and the
sensor."""


def apply(x: torch.Tensor, strengths: Mapping[str, float], generator: torch.Generator, share: float = 1.0,
          ops: int = 0) -> torch.Tensor:  # fmt: skip
    """The transforms of ``TRANSFORMS`` switched on in ``strengths`` (by name), in order, for a random ``share`` of the
    samples (the others are returned unchanged; only the chosen ones are computed). ``ops`` > 0: each chosen sample
    gets only that many of them, picked at random (RandAugment's way: a few changes per image, each seen on its own,
    instead of all of them stacked); 0: all. All strengths 0: ``x`` itself, no random numbers drawn."""
    active = [name for name in TRANSFORMS if strengths[name]]
    if not active:
        return x
    chosen = None if share >= 1 else (_rand(x, len(x), generator=generator) < share).nonzero().squeeze(1)
    out = x if chosen is None else x[chosen]
    if 0 < ops < len(active):  # a random ranking of the transforms per sample; the first ``ops`` apply
        picked = _rand(out, len(out), len(active), generator=generator).argsort(1) < ops
        for column, name in enumerate(active):
            rows = picked[:, column].nonzero().squeeze(1)
            out = out.index_copy(0, rows, TRANSFORMS[name](out[rows], strengths[name], generator))
    else:
        for name in active:
            out = TRANSFORMS[name](out, strengths[name], generator)
    return out if chosen is None else x.index_copy(0, chosen, out)
