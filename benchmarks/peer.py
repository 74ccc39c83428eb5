"""Benchmark: time to 99.0 % MNIST test accuracy, PyTorch's MNIST example's recipe vs. this project's.

(a) peer: this project's own rewrite of the recipe of PyTorch's MNIST example (pytorch/examples, mnist/main.py):
    two 3×3 convolutions (32, 64 channels), max-pool, dropout 0.25, dense 128, dropout 0.5, log-softmax and NLL loss;
    Adadelta lr 1.0, StepLR γ 0.7 each epoch, batch 64 (shuffled; the example shuffles only on CUDA), over
    torchvision's MNIST with per-sample ToTensor + Normalize in a DataLoader (data_paths.py's naive path);
(b) ours: a train.zoo recipe (default digits_cnn_fast) through data_paths.py's ours path and training step.
The test set is evaluated after each epoch, off the clock; each stops at the target or after its max epochs.
Moving the data to the device counts (ours: the one copy of the training set; peer: every batch). Each runs in its
own process, with the same number of CPU threads and seed.

On the CPU the pair runs on this CPU's own instruction set and then, on an AVX-512 CPU, with scripts/avx2.env (as an
AVX2-only CPU would run it), printed side by side; the imitated column is labelled so: it reproduces which kernels
run, not the speed of an AVX2-only machine (docs/benchmarks.md).

    python benchmarks/peer.py          # needs data/raw (dvc repro download); docs/benchmarks.md, "Against PyTorch's"
    python benchmarks/peer.py --isa native
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import data_paths
import torch
import torch.nn.functional as F
from torch import nn
from train_speed import isas_to_run, under_isa

from digits import data, device, models, params, training

TARGET_RATIO = 20.0


class PeerNet(nn.Module):
    """The example's network: 28×28 image → log-probabilities of the 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten())  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


def peer_run(args: argparse.Namespace, dev: torch.device, root: Path):
    """The example's recipe; returns (epoch -> None: trains one epoch, test accuracy, max epochs)."""
    from torchvision import transforms

    per_sample = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train, test = (data_paths.torchvision_mnist(root, t, per_sample, args.raw, args.limit) for t in (True, False))
    settings = data_paths.loader_settings(dev)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, **settings)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000, **settings)
    model = PeerNet().to(dev)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)

    def train_epoch(epoch: int) -> None:
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            opt.zero_grad()
            F.nll_loss(model(xb), yb).backward()
            opt.step()
        sched.step()

    return train_epoch, lambda: data_paths.naive_hits(model, test_loader, dev) / len(test), args.max_epochs_peer


def worker(path: str, args: argparse.Namespace, p: params.TrainParams) -> dict:
    dev = device.select(p.device)
    device.configure(dev, p.seed, p.deterministic)
    torch.set_num_threads(args.threads)
    torch.zeros(1, device=dev)  # start the device's runtime (CUDA context) before any clock runs
    moved = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if path == "peer":
            train_epoch, accuracy, epochs = peer_run(args, dev, Path(tmp))
        else:
            tx, ty = data.to_device(data_paths.read_split(args.raw, "t10k", args.limit), dev)
            model = training.prepare(models.from_params(p, 0.1307, 0.3081), p, dev)
            moved, batches, n = data_paths.ours_data(p, dev, data_paths.read_split(args.raw, "train", args.limit))
            train_epoch, kept = data_paths.recipe_trainer(model, p, n, dev, batches)
            accuracy, epochs = (lambda: training.loss_and_accuracy(kept, tx, ty)[1]), p.epochs
        curve = []  # (test accuracy, seconds of training) after each epoch
        for _, acc, seconds in data_paths.timed_epochs(train_epoch, accuracy, dev, epochs, path, moved):
            curve.append((round(acc, 4), round(seconds, 3)))
            if acc >= args.target:
                break
    reached, seconds = acc >= args.target, curve[-1][1]
    return {"path": path, "seconds_to_target": seconds if reached else None, "train_seconds": seconds,
            "epochs": len(curve), "best_accuracy": max(a for a, _ in curve), "curve": curve,
            "device": device.describe(dev), "machine": device.machine_class(dev)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn_fast", help="our train.zoo recipe (default: digits_cnn_fast)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param of ours")
    ap.add_argument("--raw", type=Path, default=data_paths.RAW, help="the MNIST IDX files (the download stage's)")
    ap.add_argument("--max-epochs-peer", type=int, default=14, help="the example's default: 14")
    ap.add_argument("--limit", type=int, help="train and test on stratified subsets of this many images (smoke runs)")
    ap.add_argument("--threads", type=int, default=device.available_cpus(), help="CPU threads of each run")
    ap.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default: 0.99)")
    ap.add_argument("--isa", default="native,avx2", help="native and/or avx2 (imitated; only on an AVX-512 CPU)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    p = params.override(params.zoo_model(args.model), args.set)
    if args.worker:
        print(json.dumps(worker(args.worker, args, p)))
        return
    isas = isas_to_run(args.isa) if device.select(p.device).type == "cpu" else ["native"]
    if not isas:
        sys.exit("nothing to run: give --isa native and/or avx2")
    results = [race(args, isa) for isa in isas]
    print(f"torch {torch.__version__}, {results[0]['ours']['device']}; target {args.target:.1%} test accuracy"
          f"{f', {args.limit} images' if args.limit else ''}; ours: {args.model} {' '.join(args.set)}")
    print("| run | " + " | ".join(f"{r['machine']}: seconds to target | epochs | best test accuracy" for r in results)
          + " |\n|---|" + "---:|" * 3 * len(results))  # fmt: skip
    for path in ("peer", "ours"):
        print(f"| {path} | " + " | ".join(f"{r[path]['seconds_to_target'] or 'not reached'} | {r[path]['epochs']} | "
                                          f"{r[path]['best_accuracy']:.2%}" for r in results) + " |")  # fmt: skip
    ratios = [["–" if r["ratio"] is None else ("≥ " if r["ratio_is_lower_bound"] else "") + f"{r['ratio']:.1f}×",
               "", ""] for r in results]  # fmt: skip
    print("| peer/ours | " + " | ".join(sum(ratios, [])) + f" |\ntarget: peer/ours ≥ {TARGET_RATIO:g}×")
    print(json.dumps({"benchmark": "peer", "torch": torch.__version__, "threads": args.threads, "target_accuracy":
                      args.target, "limit": args.limit, "model": args.model, "set": args.set,
                      "target_ratio": TARGET_RATIO, "results": results}))  # fmt: skip


def race(args: argparse.Namespace, isa: str) -> dict:
    """The peer's run, then ours, each in a process of its own on instruction set ``isa``; their ratio."""
    runs = {}
    for path in ("peer", "ours"):
        cmd = under_isa([sys.executable, __file__, *sys.argv[1:], "--worker", path], isa)
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)  # progress lines go to stderr
        runs[path] = json.loads(out.stdout.strip().splitlines()[-1])
    peer, ours = runs["peer"], runs["ours"]
    # peer short of the target: its time to it is beyond all it trained, so the ratio is a lower bound
    to_target = ours["seconds_to_target"]
    ratio = None if to_target is None else round((peer["seconds_to_target"] or peer["train_seconds"]) / to_target, 2)
    return {"machine": ours["machine"], "peer": peer, "ours": ours, "ratio": ratio,
            "ratio_is_lower_bound": ratio is not None and peer["seconds_to_target"] is None}


if __name__ == "__main__":
    main()
