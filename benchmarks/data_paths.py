"""Benchmark: this project's data path vs. the naive per-sample path of the tutorials, same model and recipe.

(a) ours: the whole training set as one tensor, batches by permuted indexing, augmentation on whole batches;
(b) naive: torchvision.datasets.MNIST + per-sample RandomAffine/ToTensor + DataLoader (num_workers=0, as the
    PyTorch MNIST example uses on CPU).
Both train on the 60k training images with the same model, optimizer, schedule and training step; after each
epoch the test set is evaluated to find the time to 99.0 % and 99.5 % test accuracy (evaluation time excluded).
Inference images/s after the last epoch: (a) the evaluate stage's compiled model on the test tensor, (b) the model
as it is over a test DataLoader with per-sample ToTensor; each the median of 5 passes.
Each path runs in its own process so peak RSS is its own.

    python benchmarks/data_paths.py --model digits_cnn --set epochs=12   # needs data/raw (dvc repro download)
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
import torch.nn.functional as F
import yaml

from digits import data, device, models, params, training

RAW = Path("data/raw")


def recipe(model: str, overrides: list[str]) -> params.TrainParams:
    """The train params of zoo model ``model`` with ``key=value`` overrides (values parsed as YAML), validated."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["model"] = model
    train = params.validate(raw).train.model_dump()
    for item in overrides:
        key, _, value = item.partition("=")
        train[key] = yaml.safe_load(value)
    return params.TrainParams.model_validate(train)


def ours_batches(p: params.TrainParams):
    split = data.read_idx_pair(RAW / "train-images-idx3-ubyte", RAW / "train-labels-idx1-ubyte")
    x, y = data.to_device(split, torch.device("cpu"))
    gen = torch.Generator().manual_seed(p.seed)
    a = p.augment
    return lambda: ((data.augment(xb, a.rotation_deg, a.zoom, a.shift, gen, a.elastic_px, a.elastic_scale,
                                  a.interpolation), yb)
                    for xb, yb in data.batches(x, y, p.batch_size, gen))  # fmt: skip


def naive_loaders(p: params.TrainParams, root: Path):
    from torchvision import datasets, transforms

    (root / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
    for f in RAW.iterdir():
        shutil.copy(f, root / "MNIST" / "raw" / f.name)
    a = p.augment
    augment = transforms.RandomAffine(a.rotation_deg, translate=(a.shift, a.shift), scale=(1 - a.zoom, 1 + a.zoom))
    train = datasets.MNIST(root, train=True, transform=transforms.Compose([augment, transforms.ToTensor()]))
    test = datasets.MNIST(root, train=False, transform=transforms.ToTensor())
    torch.manual_seed(p.seed)
    loader = torch.utils.data.DataLoader(train, batch_size=p.batch_size, shuffle=True, num_workers=0)
    return (lambda: iter(loader)), torch.utils.data.DataLoader(test, batch_size=1000)


@torch.inference_mode()
def naive_hits(model: torch.nn.Module, test_loader) -> int:
    model.eval()
    return sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in test_loader)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def worker(path: str, p: params.TrainParams) -> dict:
    torch.set_num_threads(device.available_cpus())
    torch.manual_seed(p.seed)
    test = data.read_idx_pair(RAW / "t10k-images-idx3-ubyte", RAW / "t10k-labels-idx1-ubyte")
    tx, ty = data.to_device(test, torch.device("cpu"))
    model = training.prepare(models.build(p.arch, 0.1307, 0.3081, init=p.init, **models.architecture_kwargs(p)),
                             p, torch.device("cpu"))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if path == "ours":
            epoch_batches, test_loader = ours_batches(p), None
        else:
            epoch_batches, test_loader = naive_loaders(p, Path(tmp))
        opt = training.make_optimizer(p, model)
        sched, per_batch = training.make_scheduler(p, opt, -(-60000 // p.batch_size))
        ema = training.EMA(model, p.ema_decay) if p.ema_decay else None
        kept = ema.module if ema else model
        trained, images, reached, curve = 0.0, 0, {}, []
        for epoch in range(1, p.epochs + 1):
            model.train()
            start = time.perf_counter()
            for xb, yb in epoch_batches():
                loss = F.cross_entropy(model(xb), yb, label_smoothing=p.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema:
                    ema.update(model)
                if per_batch:
                    sched.step()
                images += len(yb)
            if sched is not None and not per_batch:
                sched.step()
            trained += time.perf_counter() - start
            if test_loader is None:
                acc = (training.predict_logits(kept, tx).argmax(1) == ty).float().mean().item()
            else:
                acc = naive_hits(kept, test_loader) / len(test)
            curve.append(round(acc, 4))
            for target in (0.99, 0.995):
                if acc >= target and target not in reached:
                    reached[target] = round(trained, 1)
            print(f"[{path}] epoch {epoch}: test {acc:.4f}, {trained:.0f} s training", file=sys.stderr, flush=True)
        if test_loader is None:  # the evaluate stage's inference: compiled, BatchNorm folded, median of 5 passes
            infer = training.inference_rate(models.for_inference(kept, torch.device("cpu"), compile=True), tx)
        else:
            infer = statistics.median(len(test) / timed(naive_hits, kept, test_loader) for _ in range(5))
    return {"path": path, "final_accuracy": round(acc, 4), "train_seconds": round(trained, 1),
            "seconds_to_99.0": reached.get(0.99), "seconds_to_99.5": reached.get(0.995),
            "train_images_per_second": round(images / trained), "inference_images_per_second": round(infer),
            "peak_rss_mb": device.peak_rss_mb(), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn", help="model of train.zoo to benchmark (default: digits_cnn)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train param of the recipe, e.g. --set epochs=12 --set width=8")
    ap.add_argument("--paths", default="ours,naive")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    p = recipe(args.model, args.set)
    if args.worker:
        print(json.dumps(worker(args.worker, p)))
        return
    results = []
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--worker", path, "--model", args.model]
        cmd += [f"--set={item}" for item in args.set]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # progress lines go to stderr
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = ["final_accuracy", "seconds_to_99.0", "seconds_to_99.5", "train_seconds", "train_images_per_second",
            "inference_images_per_second", "peak_rss_mb"]
    a = p.augment
    print(f"machine: {platform.machine()}, {device.available_cpus()} CPUs, torch {torch.__version__}; model "
          f"{args.model} {' '.join(args.set)}: {p.epochs} epochs, batch {p.batch_size}, "
          f"augmentation rotation {a.rotation_deg}° zoom {a.zoom} shift {a.shift}")
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
