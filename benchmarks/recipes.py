"""Compare training recipes over several seeds, by validation accuracy, on the pipeline's own split.

Each (recipe, seed) is one run of the train stage's code (`digits.training.fit` on data/processed/train.pt, best
epoch by val.pt; seeded like the stage, so on the same device and threads a run repeats the stage bit for bit).
The test accuracy is recorded for the record only: choose by validation, never by test. Results are appended to a
JSON-lines file as runs finish, so an interrupted comparison continues where it stopped; a summary table (mean and
standard deviation over seeds, difference to the first recipe with its standard error) is printed at the end.

    python benchmarks/recipes.py --recipe default --recipe clean3 augment.off_last_epochs=3 --seeds 42,1,2
    python benchmarks/recipes.py ... --jobs 8 --set amp=false --no-tf32   # many runs at once on one GPU

A recipe is a name and train-param overrides on top of `--model` (a train.zoo model) and `--set` (every recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from digits import data, device, files, models, params, training

_splits: dict[str, data.Split] = {}
_stats: dict = {}


def _load(data_dir: str, threads: int) -> None:
    """Worker start: the processed splits, once per process."""
    torch.set_num_threads(threads)
    for name in ("train", "val", "test"):
        _splits[name] = data.load_split(Path(data_dir) / f"{name}.pt")
    _stats.update(files.read_json(Path(data_dir) / "stats.json", "preprocess"))


def run(recipe: str, p: params.TrainParams, tf32: bool, models_dir: str | None) -> dict:
    """One training run as the train stage does it; returns its figures. With ``models_dir`` the kept weights are
    saved there as ``<recipe>-<seed>.pt`` (a checkpoint like the train stage's), to be scored again later."""
    dev = device.select(p.device)
    threads = torch.get_num_threads()
    device.configure(dev, p.seed, p.deterministic)
    torch.set_num_threads(threads)  # configure() sizes the pool to the whole machine; jobs share it
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    model = models.from_params(p, _stats["mean"], _stats["std"])
    model = training.prepare(model, p, dev)
    train, val = data.to_device(_splits["train"], dev), data.to_device(_splits["val"], dev)
    start = time.perf_counter()
    result = training.fit(model, train, val, p)
    seconds = time.perf_counter() - start
    test_loss, test_acc = training.loss_and_accuracy(model, *data.to_device(_splits["test"], dev))
    best = result.best
    if models_dir:
        meta = {"arch": p.arch, "model_kwargs": models.architecture_kwargs(p), "params": p.model_dump()}
        training.save_checkpoint(Path(models_dir) / f"{recipe}-{p.seed}.pt", model, meta)
    return {"recipe": recipe, "seed": p.seed, "params": p.model_dump(mode="json"), "device": device.describe(dev),
            "threads": threads, "tf32": tf32, "best_epoch": best.epoch, "val_accuracy": best.val_accuracy,
            "val_loss": best.val_loss, "test_accuracy": test_acc, "test_loss": test_loss,
            "fit_seconds": round(seconds, 1)}  # fmt: skip


def summary(rows: list[dict], names: list[str]) -> str:
    """Markdown table: per recipe, runs and mean ± sd of validation (and test, for the record)."""
    by = {n: [r for r in rows if r["recipe"] == n] for n in names}
    base = [r["val_accuracy"] for r in by[names[0]]]
    out = ["| recipe | runs | mean val | sd val | val − first (± se) | mean val loss | mean test | mean fit s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n in names:
        val = [r["val_accuracy"] for r in by[n]]
        if not val:
            out.append(f"| {n} | 0 | | | | | | |")
            continue
        sd = statistics.stdev(val) if len(val) > 1 else math.nan
        diff = "–"
        if n != names[0] and len(val) > 1 and len(base) > 1:
            se = math.sqrt(statistics.variance(val) / len(val) + statistics.variance(base) / len(base))
            diff = f"{(statistics.mean(val) - statistics.mean(base)) * 100:+.3f} % (± {se * 100:.3f})"
        mean = {k: statistics.mean(r[k] for r in by[n]) for k in ("val_loss", "test_accuracy", "fit_seconds")}
        out.append(f"| {n} | {len(val)} | {statistics.mean(val):.4%} | {sd:.4%} | {diff} | {mean['val_loss']:.4f} | "
                   f"{mean['test_accuracy']:.4%} | {mean['fit_seconds']:.1f} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                    help="a recipe: a name, then train-param overrides (e.g. augment.off_last_epochs=3)")
    ap.add_argument("--model", default="digits_cnn", help="train.zoo model the recipes start from")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    ap.add_argument("--seeds", default="42,1,2", help="comma-separated train.seed values")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (CPU threads are split between them)")
    ap.add_argument("--no-tf32", dest="tf32", action="store_false", help="CUDA: full float32 convolutions/matmuls")
    ap.add_argument("--deadline-min", type=float, help="start no run after this many minutes")
    ap.add_argument("--data", default="data/processed", help="the preprocess stage's outputs")
    ap.add_argument("--out", required=True, help="JSON lines, one per run (appended; read to resume)")
    ap.add_argument("--models", help="save each run's kept weights in this directory")
    args = ap.parse_args()  # fmt: skip

    base = params.override(params.zoo_model(args.model), args.set)
    recipes = {spec[0]: params.override(base, spec[1:]) for spec in args.recipe}
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    for r in done:
        if r["recipe"] in recipes and r["params"] != recipes[r["recipe"]].model_copy(
            update={"seed": r["seed"]}).model_dump(mode="json"):  # fmt: skip
            sys.exit(f"{out}: recipe {r['recipe']!r} was run with other params; use another --out or name")
    have = {(r["recipe"], r["seed"]) for r in done}
    todo = [(n, s) for s in seeds for n in recipes if (n, s) not in have]  # seed-major: recipes keep pace
    threads = max(1, device.available_cpus() // args.jobs)
    deadline = time.monotonic() + 60 * args.deadline_min if args.deadline_min else math.inf
    print(f"{len(todo)} runs to do ({len(have)} already in {out}), {args.jobs} at a time, {threads} thread(s) each",
          flush=True)  # fmt: skip
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    with ProcessPoolExecutor(args.jobs, ctx, initializer=_load, initargs=(args.data, threads)) as pool:
        running: set = set()
        while todo or running:
            while todo and len(running) < args.jobs and time.monotonic() < deadline:
                name, seed = todo.pop(0)
                recipe = recipes[name].model_copy(update={"seed": seed})
                running.add(pool.submit(run, name, recipe, args.tf32, args.models))
            if not running:
                print(f"deadline reached; {len(todo)} runs not started", flush=True)
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                row = f.result()
                done.append(row)
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{row['recipe']} seed {row['seed']}: best epoch {row['best_epoch']}, val "
                      f"{row['val_accuracy']:.4%}, test {row['test_accuracy']:.4%}, {row['fit_seconds']} s",
                      flush=True)  # fmt: skip
    print(summary(done, list(recipes)))


if __name__ == "__main__":
    main()
