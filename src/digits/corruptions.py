"""MNIST-C corruptions: the robustness benchmark of Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for
Computer Vision" (reference code: github.com/google-research/mnist-c, corruptions.py).

MNIST-C applies 15 corruptions, each at one fixed severity, to the MNIST test images and reports the accuracy
under each. This module is the project's own torch implementation of those 15 at the severities MNIST-C's
dataset uses (the reference functions' default severities), stated per corruption below. Unlike the reference
(NumPy, skimage, OpenCV and ImageMagick, one image at a time, global NumPy random state, 8-bit images), every
corruption here works on a whole float batch on its device, draws its randomness from a generator seeded per
call (the same seed gives bit-identical images) and keeps full float precision (no 8-bit round trips, except
where glass blur quantises as the reference does). Where it is not the reference's computation:

- glass blur: the reference swaps pixels one at a time in raster order, so a value can be carried along a
  chain of swaps; here each pass swaps the same pixels with the same odds in four interleaved lattices (all
  of a lattice's swaps at once), so a value moves at most four times per pass.
- motion blur: the streak's taps beyond 12 px are left out (their weights sum to < 3e-5 of the kernel).
- fog: the reference crops the top-left 28×28 of its own 256×256 plasma fractal per image; here 81 images
  share one 256×256 map, one 28×28 tile each (far less work; nearly the same fog, except that the
  reference's crop always holds the map's corner point, which diamond-square pins to the map's mean).

Everything else follows the reference's definitions; Canny edges agree with skimage's ``feature.canny`` pixel
for pixel (checked on 1,000 MNIST test images). A seeded call draws for up to ``CHUNK`` images at once, so an
image's random corruption depends on its place in the batch (the unseeded ones treat each image on its own).
This module shares nothing with the training augmentations (``digits.data``) nor with ``digits.robustness``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

SIZE = 28  # MNIST's side; MNIST-C's parameters are in pixels of it
CHUNK = 1024  # images corrupted at once: cache-sized temporaries, 1.5–3× faster on the CPU than 10,000 at once

CORRUPTIONS: tuple[str, ...] = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)


# The corruptions that a training augmentation (train.augment.*) resembles, and which one. Training never calls this
# module, but these are close enough that their accuracy is not a measure of the unseen: ``summary`` also reports
# the mean over the others (stripe and spatter).
COUNTERPARTS: dict[str, str] = {
    "shot_noise": "noise",
    "impulse_noise": "noise",
    "glass_blur": "blur",
    "motion_blur": "blur",
    "shear": "rotation_deg, zoom and elastic_px (affine and local distortions)",
    "scale": "zoom",
    "rotate": "rotation_deg",
    "translate": "shift",
    "brightness": "contrast (its background lift), shading; undone by a model with train.stretch",
    "fog": "shading (a smooth random background), contrast",
    "dotted_line": "scribble (straight or zigzag, solid or dashed strokes)",
    "zigzag": "scribble (straight or zigzag, solid or dashed strokes)",
    "canny_edges": "outline (hollow strokes)",
}


def corrupt(x: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """``x`` [N, 1, 28, 28] in [0, 1] (ink bright on black) under the corruption ``name``, same shape, dtype
    and device, values in [0, 1]; the same seed gives bit-identical images."""
    if name not in _CORRUPT:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, SIZE, SIZE):
        raise ValueError(f"expected images [N, 1, {SIZE}, {SIZE}], got {list(x.shape)}")
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return torch.cat([_CORRUPT[name](chunk, gen).clamp(0, 1) for chunk in x.split(CHUNK)])


def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, seed: int
) -> list[dict[str, object]]:
    """Accuracy of ``predict`` (images → predicted classes) under every corruption, corruption i seeded with
    ``seed + i``: one row {"corruption", "accuracy"} each, in ``CORRUPTIONS`` order."""
    rows: list[dict[str, object]] = []
    for i, name in enumerate(CORRUPTIONS):
        predicted = predict(corrupt(x, name, seed + i)).to(y.device)
        rows.append({"corruption": name, "accuracy": (predicted == y).double().mean().item()})
    return rows


def summary(rows: list[dict[str, object]]) -> dict[str, object]:
    """``evaluate``'s rows as metrics: the accuracy per corruption, their mean, and the mean over the corruptions
    that no training augmentation resembles (not in ``COUNTERPARTS``)."""
    unseen = [r["accuracy"] for r in rows if r["corruption"] not in COUNTERPARTS]
    return {
        "corruption": {r["corruption"]: r["accuracy"] for r in rows},
        "corruption_mean": sum(r["accuracy"] for r in rows) / len(rows),
        "corruption_mean_unseen": sum(unseen) / len(unseen),
    }


def examples(image: torch.Tensor, seed: int) -> list[tuple[str, torch.Tensor]]:
    """One image [1, 28, 28] under every corruption (seeded as in ``evaluate``), [28, 28] each, for figures."""
    return [(name, corrupt(image[None], name, seed + i)[0, 0]) for i, name in enumerate(CORRUPTIONS)]


# ---- randomness and shared image operations


def _uniform(gen: torch.Generator, x: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype)


def _random_signs(gen: torch.Generator, x: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1


def _filter_matrix(taps: list[int], weights: torch.Tensor | list[float], past_edge: str) -> torch.Tensor:
    """[28, 28] float64 matrix M with (M @ column)[i] = Σ_k weights[k] · column[i + taps[k]], a 1-D filter
    along columns (``image @ M.T`` filters along rows). Taps past the edge take the edge pixel
    (``past_edge="repeat"``) or are dropped (``"drop"``)."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    rows = torch.arange(SIZE)[:, None].expand(-1, len(taps))
    cols = rows + torch.tensor(taps)
    if past_edge == "drop":
        weights = weights * ((cols >= 0) & (cols < SIZE))
    matrix = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    return matrix.index_put_((rows, cols.clamp(0, SIZE - 1)), weights.expand(SIZE, -1), accumulate=True)


def _gaussian(sigma: float, past_edge: str = "repeat") -> torch.Tensor:
    """1-D Gaussian filter matrix, truncated at 4σ as scipy/skimage do; with ``past_edge="drop"`` each row is
    rescaled to sum 1 (skimage's Canny: a zero-padded blur divided by the blur of an all-ones mask)."""
    radius = int(4 * sigma + 0.5)
    taps = list(range(-radius, radius + 1))
    matrix = _filter_matrix(taps, [math.exp(-(t**2) / (2 * sigma**2)) for t in taps], past_edge)
    return matrix / matrix.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur as two matrix products (far faster than a one-channel conv2d on the CPU)."""
    g = _gaussian(sigma).to(x.device, x.dtype)
    return g @ x @ g.T


def _warp(x: torch.Tensor, linear: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Output pixel p (x right, y down, relative to the image centre) takes input ``linear @ p + shift_px``:
    bilinear, black outside, as skimage's ``warp`` with an inverse map. ``linear`` [N, 2, 2], ``shift_px`` [N, 2].

    The grid is built by broadcasting: ``F.affine_grid`` goes through a batched matrix product and is several
    times slower on the CPU for MNIST-sized images.
    """
    centred = (torch.arange(SIZE, device=x.device, dtype=x.dtype) - (SIZE - 1) / 2) * (2 / SIZE)  # grid units
    u, v = centred[None, None, :], centred[None, :, None]
    a, t = linear[..., None, None], (shift_px * (2 / SIZE))[..., None, None]
    grid = torch.stack([a[:, 0, 0] * u + a[:, 0, 1] * v + t[:, 0], a[:, 1, 0] * u + a[:, 1, 1] * v + t[:, 1]], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrices(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """[N, 2, 2] matrices [[a, b], [c, d]] from four [N] tensors."""
    return torch.stack([a, b, c, d], -1).view(-1, 2, 2)


def _draw_segments(
    x: torch.Tensor, c0: torch.Tensor, r0: torch.Tensor, c1: torch.Tensor, r1: torch.Tensor
) -> torch.Tensor:
    """``x`` plus MNIST-C's line segments from (column, row) (c0, r0) to (c1, r1), c0 < c1, [N, segments] each:
    ink 1 + ln(1 − d / 2.3) (0 from d ≈ 1.45 px) at vertical distance d from the segment's line, over
    columns ⌊c0⌋ … ⌈c1⌉ − 1. Only the four rows nearest the line in each column can get ink, so those are
    computed and added in (one segment at a time: a segment's pixels are distinct, so sums are deterministic)."""
    n, count = c0.shape
    cols = torch.arange(SIZE, device=x.device, dtype=x.dtype)
    line_rows = r0[..., None] + ((r1 - r0) / (c1 - c0))[..., None] * (cols - c0[..., None])  # [N, segments, 28]
    spanned = (cols >= c0.floor()[..., None]) & (cols < c1.ceil()[..., None])
    rows = line_rows.floor()[..., None] + torch.arange(-1, 3, device=x.device, dtype=x.dtype)  # [..., 28, 4]
    ink = (1 + torch.log1p(-((rows - line_rows[..., None]).abs() / 2.3).clamp(max=1))).clamp(min=0)
    ink = ink * (spanned[..., None] & (rows >= 0) & (rows < SIZE))
    pixels = rows.clamp(0, SIZE - 1).long() * SIZE + torch.arange(SIZE, device=x.device)[:, None]
    canvas = x.reshape(n, -1).clone()
    for segment in range(count):
        canvas.scatter_add_(1, pixels[:, segment].reshape(n, -1), ink[:, segment].reshape(n, -1))
    return canvas.view_as(x)


# ---- the corruptions, each at MNIST-C's severity


def _shot_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Poisson photon noise, 3 photons at full ink (MNIST-C's severity 5 of 5): Poisson(3x) / 3, clipped to 1.

    Only counts 0, 1, 2 and "3 or more" survive the clipping, so they are drawn exactly by inverting the
    Poisson CDF up to 2 (several times faster than ``torch.poisson``, the same distribution)."""
    photons = 3
    rate = x * photons
    u = _uniform(gen, x, *x.shape)
    p_count = torch.exp(-rate)
    cdf = p_count.clone()
    counts = (u >= cdf).to(x.dtype)
    for k in range(1, photons):
        p_count = p_count * rate / k
        cdf = cdf + p_count
        counts += u >= cdf
    return counts / photons


def _impulse_noise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Salt and pepper (severity 4 of 5): each pixel with probability 0.17 set to 0 or 1, evenly."""
    hit = _uniform(gen, x, *x.shape) < 0.17
    salt = _uniform(gen, x, *x.shape) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


_GLASS_STEPS = (-SIZE - 1, -SIZE, -1, 0, 0, 0, 0, 0)  # flat index steps: up-left, up, left, itself; 1/2: no swap


def _glass_blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Glass blur (severity 1 of 5): Gaussian blur σ 0.7 (then 8-bit, as the reference), two passes of local
    pixel swaps (every pixel of rows and columns 2–27, with probability 1/2, swapped with its neighbour
    up, left, up-left or itself), Gaussian blur σ 0.7."""
    x = torch.floor(_blur(x, 0.7) * 255) / 255  # a new tensor: the swaps below work in place
    for _ in range(2):
        for first_row, first_col in ((3, 3), (3, 2), (2, 3), (2, 2)):
            x = _swap_lattice(x, first_row, first_col, gen)
    return _blur(x, 0.7)


def _swap_lattice(x: torch.Tensor, first_row: int, first_col: int, gen: torch.Generator) -> torch.Tensor:
    """One interleaved lattice (every other row and column from ``first_row``, ``first_col``) of glass blur's
    swaps, in place. A lattice pixel swaps within the 2×2 block up-left of it, and those blocks do not
    overlap, so all the swaps are independent."""
    n = len(x)
    lattice = torch.arange(first_row, SIZE, 2, device=x.device)[:, None] * SIZE + torch.arange(
        first_col, SIZE, 2, device=x.device
    )
    source = lattice.flatten().expand(n, -1)
    choice = torch.randint(0, len(_GLASS_STEPS), source.shape, generator=gen, device=x.device)
    target = source + torch.take(torch.tensor(_GLASS_STEPS, device=x.device), choice)
    flat = x.view(n, -1)
    at_source, at_target = flat.gather(1, source), flat.gather(1, target)
    flat.scatter_(1, source, at_target)
    flat.scatter_(1, target, at_source)
    return x


def _motion_blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ImageMagick's motion blur with radius 10, σ 3 (severity 1 of 5) at an angle uniform in ±45°: pixel p
    becomes Σ_i w_i · x[p + round(i · direction)], i = 0 … 20, w_i ∝ exp(−i² / 2σ²), edge pixels repeated."""
    n = len(x)
    taps = torch.arange(21, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * 3.0**2))
    weights = (weights / weights.sum())[:13].tolist()  # taps past 12 px: < 3e-5 of the kernel in all
    angle = (_uniform(gen, x, n) * 2 - 1) * math.radians(45)
    offsets = torch.arange(len(weights), device=x.device, dtype=x.dtype)[:, None]  # [taps, 1]
    dx = torch.ceil(offsets * torch.cos(angle) - 0.5).long()  # ImageMagick rounds half down; [taps, N]
    dy = torch.ceil(offsets * torch.sin(angle) - 0.5).long()
    images = x[:, 0]
    padded = torch.cat([images, images[:, :, -1:].expand(-1, -1, len(weights) - 1)], dim=2)
    windows = padded.unfold(2, SIZE, 1)  # [N, rows, column offset, columns]: one view, no copy
    rows, batch = torch.arange(SIZE, device=x.device), torch.arange(n, device=x.device)[:, None]
    out = torch.zeros_like(images)
    for w, tap_dx, tap_dy in zip(weights, dx, dy, strict=True):
        out.add_(windows[batch, (rows + tap_dy[:, None]).clamp(0, SIZE - 1), tap_dx[:, None]], alpha=w)
    return out[:, None]


def _shear(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shear about the centre by s = ±0.4 (severity 2 of 5, sign random), as skimage's (old) shear: output
    (u, v) takes input (u − sin(s)·v, cos(s)·v)."""
    s = 0.4 * _random_signs(gen, x, len(x))
    linear = _matrices(torch.ones_like(s), -torch.sin(s), torch.zeros_like(s), torch.cos(s))
    return _warp(x, linear, x.new_zeros(len(x), 2))


def _scale(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    """Shrink about the centre to 0.7 of the size (severity 3 of 5; the same for every image)."""
    linear = torch.eye(2, device=x.device, dtype=x.dtype).expand(len(x), -1, -1) / 0.7
    return _warp(x, linear, x.new_zeros(len(x), 2))


def _rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotate about the centre by ±0.4 rad ≈ ±22.9° (severity 2 of 5, sign random)."""
    angle = 0.4 * _random_signs(gen, x, len(x))
    cos, sin = torch.cos(angle), torch.sin(angle)
    return _warp(x, _matrices(cos, -sin, sin, cos), x.new_zeros(len(x), 2))


def _brightness(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    """HSV value + 0.5 (severity 5 of 5); for a grey image that is x + 0.5, clipped."""
    return x + 0.5


def _translate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift by 3 px horizontally and 3 px vertically (severity 3 of 5), each direction's sign random."""
    linear = torch.eye(2, device=x.device, dtype=x.dtype).expand(len(x), -1, -1)
    return _warp(x, linear, 3 * _random_signs(gen, x, len(x), 2))


def _stripe(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    """Invert the 7 leftmost and 7 rightmost columns (no severity; the same for every image)."""
    cols = torch.arange(SIZE, device=x.device)
    return torch.where((cols < 7) | (cols >= SIZE - 7), 1 - x, x)


def _fog(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fog (severity 5 of 5): x + 3 · plasma fractal (diamond-square, roughness decay 1.4, in [0, 1]),
    scaled by m / (m + 3) with m the image's maximum. Each image gets one 28×28 tile of a 256×256 map."""
    n, side = len(x), 256 // SIZE  # 9 × 9 tiles a map
    maps = _plasma_fractals(-(-n // side**2), gen, x.device)[:, : side * SIZE, : side * SIZE]
    fog = maps.reshape(-1, side, SIZE, side, SIZE).transpose(2, 3).reshape(-1, 1, SIZE, SIZE)[:n].to(x.dtype)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + 3 * fog) * peak / (peak + 3)


def _plasma_fractals(count: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """[count, 256, 256] diamond-square height maps (wrapping at the edges), each scaled to [0, 1]: every
    new point is the mean of its four neighbours of the coarser grid plus uniform noise in ±wibble², wibble
    starting at 100 and divided by 1.4 at every level (MNIST-C's fog). Each level interleaves the new points
    with the coarser grid."""
    grid = torch.zeros(count, 1, 1, device=device)
    wibble = 100.0

    def jittered(mean: torch.Tensor) -> torch.Tensor:
        return mean + (torch.rand(mean.shape, generator=gen, device=device) * 2 - 1) * wibble**2

    while grid.shape[-1] < 256:
        k = grid.shape[-1]
        wrapped = grid.repeat(1, 2, 2)[:, : k + 1, : k + 1]  # one more row and column, from the opposite edge
        centres = jittered((wrapped[:, :-1, :-1] + wrapped[:, 1:, :-1] + wrapped[:, :-1, 1:] + wrapped[:, 1:, 1:]) / 4)
        centres_above = centres.roll(1, 1)
        centres_left = centres.roll(1, 2)
        on_rows = jittered((grid + wrapped[:, :-1, 1:] + centres_above + centres) / 4)  # between corners in a row
        on_cols = jittered((grid + wrapped[:, 1:, :-1] + centres_left + centres) / 4)  # between corners in a column
        grid = torch.stack([torch.stack([grid, on_rows], -1), torch.stack([on_cols, centres], -1)], 2)
        grid = grid.reshape(count, 2 * k, 2 * k)
        wibble /= 1.4
    low = grid.amin(dim=(1, 2), keepdim=True)
    return (grid - low) / (grid.amax(dim=(1, 2), keepdim=True) - low)


def _spatter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mud spatter (severity 4 of 5): noise N(0.65, 0.3²) blurred with σ 1; where it exceeds 0.65, a mask,
    blurred with σ 1.5 and kept where ≥ 0.8, blends the image toward grey 63/255."""
    liquid = _blur(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 0.3 + 0.65, 1.0)
    mask = _blur((liquid > 0.65).to(x.dtype), 1.5)
    mud = torch.where(mask >= 0.8, mask, 0)
    return x * (1 - mud) + (63 / 255) * mud


def _dotted_line(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A line from column 0 to 27 between random rows (each 0–26), drawn only on columns 2–3, 6–7, …, 26 (no
    severity), added to the image."""
    n = len(x)
    ends = torch.randint(0, 27, (2, n, 1), generator=gen, device=x.device).to(x.dtype)
    first = torch.arange(2, SIZE, 4, device=x.device, dtype=x.dtype)  # the dashes' first columns
    last = (first + 2).clamp(max=SIZE - 1)  # MNIST-C's line stops before column 27

    def row_at(col: torch.Tensor) -> torch.Tensor:
        return ends[0] + (ends[1] - ends[0]) * col / (SIZE - 1)

    return _draw_segments(x, first.expand(n, -1), row_at(first), last.expand(n, -1), row_at(last))


def _zigzag(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A zigzag (no severity), added to the image: teeth 2 px high every 4 px along a line from column 2,
    row r0 (0–26) to column 25, row r0 + (−5 … 4), as MNIST-C's seven line segments (its last vertex,
    past the sixth tooth, included)."""
    n = len(x)
    start_row = torch.randint(0, 27, (n,), generator=gen, device=x.device).to(x.dtype)
    rise = torch.randint(-5, 5, (n,), generator=gen, device=x.device).to(x.dtype)
    angle = torch.atan(rise / 23)
    length = 23 / torch.cos(angle)  # 23 … 23.6 px: always six teeth
    along = [torch.zeros_like(length), *(torch.full_like(length, 4 * i + 2) for i in range(6)), length]
    across = [torch.zeros_like(length), *(torch.full_like(length, 2.0 - 4 * (i % 2)) for i in range(6))]
    across.append(across[-1] / (2 * (length - 20)))  # the reference's end vertex
    cols = [2 + a * torch.cos(angle) - b * torch.sin(angle) for a, b in zip(along, across, strict=True)]
    rows = [start_row + a * torch.sin(angle) + b * torch.cos(angle) for a, b in zip(along, across, strict=True)]
    cols, rows = torch.stack(cols, 1), torch.stack(rows, 1)  # [N, vertices]
    return _draw_segments(x, cols[:, :-1], rows[:, :-1], cols[:, 1:], rows[:, 1:])


def _canny_edges(x: torch.Tensor, _: torch.Generator) -> torch.Tensor:
    """skimage's Canny edges with its defaults (no severity): Gaussian σ 1, Sobel gradients, non-maximum
    suppression along the gradient (neighbours interpolated), hysteresis thresholds 0.1 and 0.2 on the
    gradient magnitude with 8-connected edges; the outermost pixels are never edges. Output 0 or 1."""
    # Sobel (edge pixels repeated, as scipy's) after the blur: a [-1, 0, 1] difference along one axis and
    # [1, 2, 1] smoothing along the other, each folded with the blur into one matrix
    gaussian = _gaussian(1.0, past_edge="drop")
    diff, smooth = (
        (_filter_matrix(taps, weights, "repeat") @ gaussian).to(x.device, x.dtype)
        for taps, weights in (([-1, 1], [-1.0, 1.0]), ([-1, 0, 1], [1.0, 2.0, 1.0]))
    )
    gx, gy = smooth @ x @ diff.T, diff @ x @ smooth.T
    magnitude = torch.hypot(gx, gy)
    edges = _thin_to_maxima(magnitude, gx, gy)
    weak = edges & (magnitude >= 0.1)
    strong = weak & (magnitude >= 0.2)
    while True:  # hysteresis: grow the strong edges through 8-connected weak ones until nothing changes
        grown = _dilate(strong) & weak
        if torch.equal(grown, strong):
            return strong.to(x.dtype)
        strong = grown


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """A boolean mask [..., rows, columns] grown by its 8 neighbours (shifts and ORs: a max-pool is far
    slower on the CPU)."""
    tall = mask.clone()
    tall[..., 1:, :] |= mask[..., :-1, :]
    tall[..., :-1, :] |= mask[..., 1:, :]
    wide = tall.clone()
    wide[..., :, 1:] |= tall[..., :, :-1]
    wide[..., :, :-1] |= tall[..., :, 1:]
    return wide


def _thin_to_maxima(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Pixels (not on the outermost ring) whose gradient magnitude is at least its values one pixel forward and
    back along the gradient, each interpolated between the axis and the diagonal neighbour on that side."""

    def inner(t: torch.Tensor, dr: int = 0, dc: int = 0) -> torch.Tensor:
        return t[..., 1 + dr : SIZE - 1 + dr, 1 + dc : SIZE - 1 + dc]

    m, ax, ay = inner(magnitude), inner(gx).abs(), inner(gy).abs()
    across = ax >= ay  # nearer horizontal: the axis neighbours are left and right
    same_signs = (inner(gx) >= 0) == (inner(gy) >= 0)  # the gradient points down-right or up-left
    w = torch.where(across, ay / ax, ax / ay).nan_to_num(0.0)  # weight of the diagonal neighbour
    keep = torch.ones_like(m, dtype=torch.bool)
    for axis, diagonal, other_diagonal in (
        (torch.where(across, inner(magnitude, 0, 1), inner(magnitude, 1, 0)), (1, 1), (-1, 1)),
        (torch.where(across, inner(magnitude, 0, -1), inner(magnitude, -1, 0)), (-1, -1), (1, -1)),
    ):
        # gx and gy of opposite signs: this side's diagonal neighbour is the other one next to its axis neighbour
        mixed = torch.where(across, inner(magnitude, *other_diagonal), inner(magnitude, *other_diagonal[::-1]))
        keep &= m >= (1 - w) * axis + w * torch.where(same_signs, inner(magnitude, *diagonal), mixed)
    return F.pad(keep, (1, 1, 1, 1))


_CORRUPT: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "shear": _shear,
    "scale": _scale,
    "rotate": _rotate,
    "brightness": _brightness,
    "translate": _translate,
    "stripe": _stripe,
    "fog": _fog,
    "spatter": _spatter,
    "dotted_line": _dotted_line,
    "zigzag": _zigzag,
    "canny_edges": _canny_edges,
}
