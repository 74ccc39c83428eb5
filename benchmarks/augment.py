"""Benchmark: the training augmentations of digits.augmentations against kornia.augmentation, and what they cost.

For each transform, this project's code and kornia's nearest per-sample counterpart run on the same batches
(1×28×28 float, batch 128 and 1024, on the CPU); the timings alternate between the two (which goes first alternates
too) and the table reports medians, since a shared machine is noisy (±25 %). A second table gives each transform's
cost per batch of 128 against the geometric augmentation (``data.augment``: rotation/zoom/shift) and one training
step of the default model (digits_cnn, channels_last, as the train stage runs it).

Decision: kornia is not used; every transform is this project's own code, for three reasons.
(1) kornia.augmentation draws its parameters from torch's global RNG and takes no generator, so training would no
    longer repeat per seed from the training generator alone. (2) It does not match the definitions:
    RandomGaussianNoise has one σ for the whole batch (ours: per sample) and nothing in it resamples to a lower
    resolution. (3) It is slower at the training batch: on "CPU AVX-512, 2 cores" (1 thread, batch 128, medians of
    31 interleaved rounds) kornia took 1.27× our time for noise, 1.6–2.0× for blur (1.59× even as the bare
    ``kornia.filters.gaussian_blur2d`` with our per-sample σ), 3.8× for contrast (ColorJiggle), 4.4× for erasing
    and 6.9× for thickness (``kornia.morphology``). Only at batch 1024, on 1 thread, did gaussian_blur2d come within
    10 % (0.91×; 1.8× our time on 2 threads) — not enough for a dependency, and (1) still holds.
The kornia column needs ``pip install kornia``; without it the column shows "–".

    python benchmarks/augment.py                 # data/processed/train.pt if present, else synthetic strokes
    python benchmarks/augment.py --repeats 41 --batches 128,1024
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from digits import augmentations, data, device, models, params, training

STRENGTHS = {"thickness": 0.5, "outline": 0.3, "lowres": 0.5, "blur": 1.5, "erasing": 0.5, "scribble": 0.3,
             "shading": 3.0, "contrast": 0.5, "noise": 0.2}  # fmt: skip


def images(path: Path, n: int) -> torch.Tensor:
    """``n`` training images as the train stage feeds them, or synthetic strokes when ``path`` does not exist."""
    if path.exists():
        return data.to_device(data.load_split(path), torch.device("cpu"))[0][:n].contiguous()
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 28, 28)
    rows, cols = torch.randint(6, 22, (2, n, 3), generator=g)
    for i in range(n):
        for r, c in zip(rows[i].tolist(), cols[i].tolist(), strict=True):
            x[i, 0, r - 4 : r + 4, c - 1 : c + 1] = 1.0
    return F.avg_pool2d(x, 3, stride=1, padding=1)


def kornia_transforms() -> dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """For each transform, kornia's nearest per-sample counterparts by label (none for lowres); empty when kornia is
    not installed."""
    try:
        import kornia
        import kornia.augmentation as K
    except ImportError:
        return {}
    s = STRENGTHS
    g = torch.Generator().manual_seed(0)
    kernel, blur_size = torch.ones(3, 3), 2 * math.ceil(3 * s["blur"]) + 1

    def thickness(x: torch.Tensor) -> torch.Tensor:  # kornia's morphology, blended per sample as ours
        t = (torch.rand(len(x), 1, 1, 1, generator=g) * 2 - 1) * s["thickness"]
        dilated, eroded = kornia.morphology.dilation(x, kernel), kornia.morphology.erosion(x, kernel)
        return x + t.clamp(min=0) * (dilated - x) + (-t).clamp(min=0) * (eroded - x)

    def blur_filter(x: torch.Tensor) -> torch.Tensor:  # the filter alone, σ per sample from our generator
        sigma = (torch.rand(len(x), 1, generator=g) * s["blur"]).clamp(min=1e-2).expand(-1, 2)
        return kornia.filters.gaussian_blur2d(x, blur_size, sigma, border_type="constant")

    blur = K.RandomGaussianBlur(blur_size, (1e-2, s["blur"]), border_type="constant", p=1.0)
    erasing = K.RandomErasing(scale=(0.02, 0.2), ratio=(1 / 3, 3), p=s["erasing"])
    contrast = K.ColorJiggle(brightness=(1, 1 + 0.1 * s["contrast"]),
                             contrast=(math.exp(-s["contrast"]), math.exp(s["contrast"])), p=1.0)  # fmt: skip
    noise = K.RandomGaussianNoise(std=s["noise"], p=1.0)  # one σ for the batch: kornia has no per-sample σ
    return {
        "thickness": {"morphology.dilation/erosion": thickness},
        "blur": {"RandomGaussianBlur": blur, "filters.gaussian_blur2d": blur_filter},
        "erasing": {"RandomErasing": erasing},
        "contrast": {"ColorJiggle": contrast},
        "noise": {"RandomGaussianNoise": lambda x: noise(x).clamp(0, 1)},
    }


def median_us(fns: dict[str, Callable[[], object]], repeats: int, min_seconds: float = 0.02) -> dict[str, float]:
    """Median µs per call of each function, the calls of the functions interleaved (their order alternating)."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            fn()
            n += 1
        calls[name] = max(1, n)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        for name in order if r % 2 == 0 else reversed(order):
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - start) / calls[name] * 1e6)
    return {name: statistics.median(v) for name, v in samples.items()}


def own(name: str, x: torch.Tensor, g: torch.Generator) -> Callable[[], torch.Tensor]:
    return lambda: augmentations.TRANSFORMS[name](x, STRENGTHS[name], g)


def compare(x: torch.Tensor, batches: list[int], repeats: int) -> None:
    theirs = kornia_transforms()
    print("| transform | kornia | batch | own µs/batch | kornia µs/batch | kornia/own |")
    print("|---|---|---|---|---|---|")
    for b in batches:
        xb = x[:b].contiguous()
        for name in augmentations.TRANSFORMS:
            fns = {"own": own(name, xb, torch.Generator().manual_seed(0))}
            fns |= {label: lambda xb=xb, f=f: f(xb) for label, f in theirs.get(name, {}).items()}
            t = median_us(fns, repeats)
            for label in list(t)[1:] or ["–"]:
                k = f"{t[label]:.0f} | {t[label] / t['own']:.2f}×" if label in t else "– | –"
                print(f"| {name} | {label} | {b} | {t['own']:.0f} | {k} |")


def cost(x: torch.Tensor, repeats: int) -> None:
    """ms per batch of 128: each transform, all of them, the geometric augmentation and a training step."""
    xb, g = x[:128].contiguous(), torch.Generator().manual_seed(0)
    p = params.zoo_model("digits_cnn", Path(__file__).resolve().parents[1] / "params.yaml")
    model = training.prepare(models.from_params(p, 0.13, 0.31), p, torch.device("cpu"))
    opt = training.make_optimizer(p, model)
    autocast = training.mixed_precision(p, torch.device("cpu"))
    yb = torch.randint(0, 10, (128,), generator=g)
    a = p.augment
    fns = {name: own(name, xb, g) for name in augmentations.TRANSFORMS}
    fns["all of them"] = lambda: augmentations.apply(xb, STRENGTHS, g)
    fns["rotation/zoom/shift"] = lambda: data.augment(xb, a.rotation_deg, a.zoom, a.shift, g)
    fns["train step"] = lambda: training.train_step(model, xb, yb, opt, p.label_smoothing, autocast)
    model.train()
    t = median_us(fns, repeats)
    step = t["rotation/zoom/shift"] + t["train step"]
    print(f"\ncost per batch of 128 (digits_cnn step: {p.model} width {p.width}, channels_last {p.channels_last})")
    print("| | ms/batch | vs. rotation/zoom/shift | share of an augmented training step |")
    print("|---|---|---|---|")
    for name, us in t.items():
        print(f"| {name} | {us / 1000:.3f} | {us / t['rotation/zoom/shift']:.2f}× | {us / step:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/processed/train.pt"))
    ap.add_argument("--batches", default="128,1024")
    ap.add_argument("--repeats", type=int, default=21, help="timed rounds per transform (the median is reported)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, as the train stage runs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    x = images(args.data, max(*batches, 128))  # the cost table uses batches of 128
    source = args.data if args.data.exists() else "synthetic strokes"
    print(f"machine: {device.machine_class(torch.device('cpu'))}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; images: {source}; strengths: {STRENGTHS}")  # fmt: skip
    compare(x, batches, args.repeats)
    cost(x, args.repeats)


if __name__ == "__main__":
    main()
