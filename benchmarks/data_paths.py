"""Benchmark: this project's data path vs. the naive per-sample path of the tutorials, same model and recipe.

(a) ours: the whole training set as one tensor on the training device, batches by permuted indexing, augmentation
    on whole batches;
(b) naive: torchvision.datasets.MNIST + per-sample RandomAffine/ToTensor + DataLoader, as PyTorch's MNIST example
    loads it (num_workers=0 on CPU; one worker and pinned memory on CUDA), each batch copied to the device.
Both train on the 60k training images with the same model, optimizer, schedule and training step (bf16 autocast on
CUDA when train.amp), on train.device (auto: CUDA, then MPS, then CPU; `--set device=cpu` forces the CPU). After each
epoch the test set is evaluated to find the time to 99.0 % and 99.5 % test accuracy; evaluation is not counted,
moving the data to the device is (ours: the one copy of the training set; naive: every batch).
Inference images/s after the last epoch: (a) the evaluate stage's compiled model on the test tensor, (b) the model
as it is over a test DataLoader with per-sample ToTensor; each the median of 5 passes.
Each path runs in its own process so peak RSS is its own.

    python benchmarks/data_paths.py --model digits_cnn_clean --set epochs=12   # needs data/raw (dvc repro download)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from digits import augmentations, data, device, models, params, training

RAW = Path("data/raw")


def read_split(raw: Path, name: str, limit: int | None = None) -> data.Split:
    """The ``train`` or ``t10k`` IDX pair in ``raw``; a stratified subset of ``limit`` images when given."""
    split = data.read_idx_pair(raw / f"{name}-images-idx3-ubyte", raw / f"{name}-labels-idx1-ubyte")
    return data.subset(split, limit, 0)


def ours_data(p: params.TrainParams, dev: torch.device, split: data.Split):
    """``split`` moved to ``dev`` as one tensor; returns (seconds to move it, epoch -> batches, images)."""
    start = time.perf_counter()
    x, y = data.to_device(split, dev)
    device.synchronize(dev)
    move_seconds = time.perf_counter() - start
    gen = torch.Generator(device=dev).manual_seed(p.seed)

    def epoch_batches(epoch: int):
        return ((training.augment_batch(xb, p, epoch, gen), yb) for xb, yb in data.batches(x, y, p.batch_size, gen))

    return move_seconds, epoch_batches, len(y)


def torchvision_mnist(root: Path, train: bool, transform, raw: Path = RAW, limit: int | None = None):
    """torchvision's MNIST over the IDX files in ``raw`` (copied under ``root`` as torchvision expects them), each
    image through ``transform`` as it is read; for ``limit``, the subset of ``read_split``."""
    from torchvision import datasets

    folder = root / "MNIST" / "raw"
    if not folder.exists():
        folder.mkdir(parents=True)
        for f in raw.iterdir():
            shutil.copy(f, folder / f.name)
    dataset = datasets.MNIST(root, train=train, transform=transform)
    if limit is None or limit >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, data.stratified_sample(dataset.targets.numpy(), limit, 0).tolist())


def loader_settings(dev: torch.device) -> dict:
    """DataLoader settings of PyTorch's MNIST example: one worker and pinned memory on CUDA, none elsewhere."""
    return {"num_workers": 1, "pin_memory": True} if dev.type == "cuda" else {"num_workers": 0}


def naive_data(p: params.TrainParams, root: Path, dev: torch.device):
    """torchvision's MNIST with per-sample transforms, as PyTorch's MNIST example loads it; returns (epoch ->
    batches on ``dev``, images, test loader)."""
    from torchvision import transforms

    a = p.augment
    augment = transforms.RandomAffine(a.rotation_deg, translate=(a.shift, a.shift), scale=(1 - a.zoom, 1 + a.zoom))
    augmented, plain = transforms.Compose([augment, transforms.ToTensor()]), transforms.ToTensor()
    train, test = torchvision_mnist(root, True, augmented), torchvision_mnist(root, False, plain)
    torch.manual_seed(p.seed)
    settings = loader_settings(dev)
    loader = torch.utils.data.DataLoader(train, batch_size=p.batch_size, shuffle=True, **settings)

    def epoch_batches(epoch: int):
        train.transform = augmented if training.augments(p, epoch) else plain
        return ((xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)) for xb, yb in loader)

    return epoch_batches, len(train), torch.utils.data.DataLoader(test, batch_size=1000, **settings)


def recipe_trainer(model: torch.nn.Module, p: params.TrainParams, n: int, dev: torch.device, epoch_batches):
    """The recipe in ``p`` (optimizer, schedule, EMA, training step) over ``n`` images per epoch; returns
    (epoch -> None: trains one epoch on ``epoch_batches(epoch)``, the model to evaluate)."""
    opt = training.make_optimizer(p, model)
    sched, per_batch = training.make_scheduler(p, opt, -(-n // p.batch_size))
    ema = training.EMA(model, p.ema_decay) if p.ema_decay else None
    autocast = training.mixed_precision(p, dev)

    def train_epoch(epoch: int) -> None:
        model.train()
        for xb, yb in epoch_batches(epoch):
            training.train_step(model, xb, yb, opt, p.label_smoothing, autocast)
            if ema:
                ema.update(model)
            if per_batch:
                sched.step()
        if sched is not None and not per_batch:
            sched.step()

    return train_epoch, ema.module if ema else model


def timed_epochs(train_epoch, accuracy, dev: torch.device, epochs: int, label: str, trained: float = 0.0):
    """Yields (epoch, test accuracy, seconds of training so far) after each of ``epochs`` epochs of ``train_epoch``
    (the clock starts at ``trained`` seconds and stops while ``accuracy()`` evaluates)."""
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_epoch(epoch)
        device.synchronize(dev)
        trained += time.perf_counter() - start
        acc = accuracy()
        print(f"[{label}] epoch {epoch}: test {acc:.4f}, {trained:.1f} s training", file=sys.stderr, flush=True)
        yield epoch, acc, trained


@torch.inference_mode()
def naive_hits(model: torch.nn.Module, test_loader, dev: torch.device) -> int:
    model.eval()
    return sum((model(xb.to(dev)).argmax(1) == yb.to(dev)).sum().item() for xb, yb in test_loader)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def worker(path: str, p: params.TrainParams, infer_batch: int) -> dict:
    dev = device.select(p.device)
    device.configure(dev, p.seed, p.deterministic)
    torch.zeros(1, device=dev)  # start the device's runtime (CUDA context) before any clock runs
    tx, ty = data.to_device(read_split(RAW, "t10k"), dev)
    model = training.prepare(models.from_params(p, 0.1307, 0.3081), p, dev)
    with tempfile.TemporaryDirectory() as tmp:
        if path == "ours":  # moving the data to the device counts as training
            moved, epoch_batches, n = ours_data(p, dev, read_split(RAW, "train"))
            test_loader = None
        else:
            moved, (epoch_batches, n, test_loader) = 0.0, naive_data(p, Path(tmp), dev)
        train_epoch, kept = recipe_trainer(model, p, n, dev, epoch_batches)

        def accuracy() -> float:
            if test_loader is None:
                return training.loss_and_accuracy(kept, tx, ty)[1]
            return naive_hits(kept, test_loader, dev) / len(ty)

        reached, curve = {}, []
        for _, acc, trained in timed_epochs(train_epoch, accuracy, dev, p.epochs, path, moved):
            curve.append(round(acc, 4))
            for target in (0.99, 0.995):
                if acc >= target and target not in reached:
                    reached[target] = round(trained, 2)
        if test_loader is None:  # the evaluate stage's inference: compiled, BatchNorm folded, median of 5 passes
            infer = training.inference_rate(models.for_inference(kept, dev, compile=True), tx, infer_batch)
        else:
            infer = statistics.median(len(ty) / timed(naive_hits, kept, test_loader, dev) for _ in range(5))
    return {"path": path, "final_accuracy": round(acc, 4), "train_seconds": round(trained, 2),
            "seconds_to_99.0": reached.get(0.99), "seconds_to_99.5": reached.get(0.995),
            "train_images_per_second": round(n * p.epochs / trained), "inference_images_per_second": round(infer),
            "peak_rss_mb": device.peak_rss_mb(), "device": device.describe(dev), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn_clean",
                    help="model of train.zoo to benchmark (default: digits_cnn_clean; the naive path has only its "
                         "rotation/zoom/shift, not the default's robustness augmentations)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train param of the recipe, e.g. --set epochs=12 --set width=8")
    ap.add_argument("--paths", default="ours,naive")
    ap.add_argument("--infer-batch", type=int, default=256, help="inference batch size (the evaluate stage: 256)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    p = params.override(params.zoo_model(args.model), args.set)
    if args.worker:
        print(json.dumps(worker(args.worker, p, args.infer_batch)))
        return
    unmatched = [k for k in ("elastic_px", *augmentations.TRANSFORMS) if getattr(p.augment, k)]
    if unmatched and "naive" in args.paths.split(","):  # checked here, not in the workers (they get no --paths)
        sys.exit(f"{args.model}: the naive path has no {', '.join(unmatched)} augmentation, so the two paths would "
                 "train different recipes; choose a model without them (e.g. digits_cnn_clean) or --paths ours")
    results = []
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--worker", path, "--model", args.model, f"--infer-batch={args.infer_batch}"]
        cmd += [f"--set={item}" for item in args.set]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # progress lines go to stderr
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ["final_accuracy", "seconds_to_99.0", "seconds_to_99.5", "train_seconds", "train_images_per_second",
            "inference_images_per_second", "peak_rss_mb"]
    a = p.augment
    print(f"machine: {platform.machine()}, {device.available_cpus()} CPUs, {results[0]['device']}, "
          f"torch {torch.__version__}; model "
          f"{args.model} {' '.join(args.set)}: {p.epochs} epochs, batch {p.batch_size}, "
          f"lr {p.lr}, augmentation rotation {a.rotation_deg}° zoom {a.zoom} shift {a.shift}, amp {p.amp}, "
          f"deterministic {p.deterministic}, inference batch {args.infer_batch}")
    print("| metric | " + " | ".join(r["path"] for r in results) + (" | naive/ours |" if len(results) == 2 else " |"))
    print("|---" * (len(results) + 1 + (len(results) == 2)) + "|")
    for k in keys:
        vals = [r[k] for r in results]
        ratio = f" | {vals[1] / vals[0]:.2f}×" if len(vals) == 2 and all(vals) else (" | –" if len(vals) == 2 else "")
        print(f"| {k} | " + " | ".join("not reached" if v is None else str(v) for v in vals) + ratio + " |")
    for r in results:
        print(f"{r['path']} test accuracy per epoch: {r['curve']}")


if __name__ == "__main__":
    main()
