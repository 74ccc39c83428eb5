"""Compare training recipes over several seeds, by validation accuracy, on the pipeline's own split.

Each (recipe, seed) is one run of the train stage's code (`digits.training.fit` on data/processed/train.pt, best
epoch by val.pt; seeded like the stage, so on the same device and threads a run repeats the stage bit for bit).
The test accuracy is recorded for the record only: choose by validation, never by test. Results are appended to a
JSON-lines file as runs finish, so an interrupted comparison continues where it stopped; a summary table (mean and
standard deviation over seeds, difference to the first recipe with its standard error) is printed at the end.

With ``--robustness`` each run is also scored for robustness on what may guide a choice: the validation split under
the evaluate stage's perturbation sweep and under the MNIST-C-style corruptions (seeded apart from the test-time
ones), and the *selection* part of the font digits. The same figures on the test split and the held-out fonts are
recorded for the record. Runs saved with ``--models`` but not yet scored are scored at the end.

    python benchmarks/recipes.py --recipe default --recipe clean3 augment.off_last_epochs=3 --seeds 42,1,2
    python benchmarks/recipes.py ... --jobs 8 --set amp=false --no-tf32   # many runs at once on one GPU
    python benchmarks/recipes.py ... --also docs/recipe-runs/robustness-round3.jsonl   # an earlier round's runs first

A recipe is a name and train-param overrides on top of `--model` (a train.zoo model) and `--set` (every recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from digits import corruptions, data, device, files, fonts, models, params, robustness, training

_splits: dict[str, data.Split] = {}
_stats: dict = {}
VAL_SEED = 1000  # robustness seeds on the validation split: apart from evaluate's test-time seeds (evaluate.seed)


def _exit_with(parent: int) -> None:
    """End this worker as soon as ``parent`` (the main process) is no longer its parent, however it ended."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _start_worker(main: int, *load_args) -> None:
    """Worker start: watch ``main`` (the main process's pid, passed in as it may end while this worker starts), then
    ``_load``."""
    threading.Thread(target=_exit_with, args=(main,), daemon=True).start()
    _load(*load_args)


def _load(data_dir: str, threads: int, fonts_dir: str | None = None) -> None:
    """The processed splits (and the font digits, for robustness), once per process."""
    torch.set_num_threads(threads)
    for name in ("train", "val", "test"):
        _splits[name] = data.load_split(Path(data_dir) / f"{name}.pt")
    _stats.update(files.read_json(Path(data_dir) / "stats.json", "preprocess"))
    for part in fonts.PARTS if fonts_dir else ():
        _splits[part] = fonts.load(Path(fonts_dir) / f"{part}.pt")[0]


def robustness_scores(model: torch.nn.Module, dev: torch.device) -> dict[str, float]:
    """Validation (may guide a choice) and test/held-out (for the record) robustness figures of ``model``."""
    model.eval()

    def predict(xb: torch.Tensor) -> torch.Tensor:
        return training.predict_logits(model, xb, 256).argmax(1)

    scores = {}
    with torch.no_grad():
        for split, seed in (("val", VAL_SEED), ("test", 0)):
            x, y = data.to_device(_splits[split], dev)
            sweep = robustness.evaluate(predict, x, y, seed)[1:]
            corrupted = corruptions.evaluate(predict, x, y, seed)
            scores[f"{split}_perturbation_mean"] = statistics.fmean(r["accuracy"] for r in sweep)
            scores[f"{split}_perturbation_min"] = min(r["accuracy"] for r in sweep)
            by_corruption = corruptions.summary(corrupted)
            scores[f"{split}_corruption_mean"] = by_corruption["corruption_mean"]
            scores[f"{split}_corruption_mean_unseen"] = by_corruption["corruption_mean_unseen"]
            scores |= {f"{split}_{k}": v for k, v in by_corruption["corruption"].items()}
        for part in fonts.PARTS:
            x, y = data.to_device(_splits[part], dev)
            scores[f"{part}_font_accuracy"] = (predict(x) == y).double().mean().item()
    return scores


def rescore(row: dict, models_dir: str) -> dict:
    """``row`` with the robustness figures of its saved model."""
    model, _ = training.load_checkpoint(Path(models_dir) / f"{row['recipe']}-{row['seed']}.pt")
    return row | robustness_scores(model, torch.device("cpu"))


def run(recipe: str, p: params.TrainParams, tf32: bool, models_dir: str | None, robust: bool) -> dict:
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
    scores = robustness_scores(model, dev) if robust else {}
    return scores | {
        "recipe": recipe, "seed": p.seed, "params": p.model_dump(mode="json"), "device": device.describe(dev),
        "threads": threads, "tf32": tf32, "best_epoch": best.epoch, "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss, "test_accuracy": test_acc, "test_loss": test_loss, "fit_seconds": round(seconds, 1),
    }  # fmt: skip


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


ROBUSTNESS_COLUMNS = (  # (row key, heading): what may guide a choice, then the same on test for the record
    ("val_accuracy", "val clean"),
    ("val_perturbation_mean", "val sweep mean"),
    ("val_perturbation_min", "val sweep min"),
    ("val_corruption_mean", "val MNIST-C mean"),
    ("selection_font_accuracy", "selection fonts"),
    ("robust_score", "robust score"),
    ("test_accuracy", "test clean"),
    ("test_perturbation_mean", "test sweep mean"),
    ("test_perturbation_min", "test sweep min"),
    ("test_corruption_mean", "test MNIST-C mean"),
    ("test_corruption_mean_unseen", "test MNIST-C unseen"),
    ("heldout_font_accuracy", "held-out fonts"),
)


def robust_score(row: dict) -> float:
    """The robustness a recipe is chosen by: the mean of the validation sweep mean, the validation MNIST-C mean and
    the selection fonts' accuracy."""
    return statistics.fmean(row[k] for k in ("val_perturbation_mean", "val_corruption_mean", "selection_font_accuracy"))


def robustness_means(rows: list[dict], names: list[str]) -> list[dict]:
    """Per recipe with scored runs: its name, the number of runs and the mean over them of ROBUSTNESS_COLUMNS."""
    out = []
    for n in names:
        mine = [r for r in rows if r["recipe"] == n and "val_corruption_mean" in r]
        scored = [r | {"robust_score": robust_score(r)} for r in mine]
        if scored:
            out.append({"recipe": n, "runs": len(scored),
                        **{k: statistics.fmean(r[k] for r in scored) for k, _ in ROBUSTNESS_COLUMNS}})  # fmt: skip
    return out


def robustness_summary(means: list[dict]) -> str:
    """Markdown table of ``robustness_means``."""
    out = ["| recipe | runs | " + " | ".join(h for _, h in ROBUSTNESS_COLUMNS) + " |",
           "|---|---:|" + "---:|" * len(ROBUSTNESS_COLUMNS)]  # fmt: skip
    for m in means:
        cells = " | ".join(f"{m[k]:.2%}" for k, _ in ROBUSTNESS_COLUMNS)
        out.append(f"| {m['recipe']} | {m['runs']} | {cells} |")
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
    ap.add_argument("--robustness", action="store_true", help="score robustness too (needs data/fonts)")
    ap.add_argument("--fonts", default="data/fonts", help="the render stage's outputs")
    ap.add_argument("--robustness-csv", help="write each recipe's robustness means here (docs/robustness.csv)")
    ap.add_argument("--also", action="append", default=[], metavar="JSONL",
                    help="runs an earlier comparison recorded (its --out): summarised, and written to "
                         "--robustness-csv, ahead of this comparison's recipes")
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
    earlier = [json.loads(line) for path in args.also for line in Path(path).read_text().splitlines()]
    if clash := sorted({r["recipe"] for r in earlier} & set(recipes)):
        sys.exit(f"--also: {', '.join(map(repr, clash))} recorded there too; give this comparison's recipes new names")
    have = {(r["recipe"], r["seed"]) for r in done}
    todo = [(n, s) for s in seeds for n in recipes if (n, s) not in have]  # seed-major: recipes keep pace
    threads = max(1, device.available_cpus() // args.jobs)
    deadline = time.monotonic() + 60 * args.deadline_min if args.deadline_min else math.inf
    print(f"{len(todo)} runs to do ({len(have)} already in {out}), {args.jobs} at a time, {threads} thread(s) each",
          flush=True)  # fmt: skip
    fonts_dir = args.fonts if args.robustness else None
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    for sig in (signal.SIGINT, signal.SIGTERM):  # finished runs are on disk: stop now, and the workers follow
        signal.signal(sig, lambda num, _: (print(f"stopped by signal {num}", flush=True), os._exit(128 + num)))
    with ProcessPoolExecutor(args.jobs, ctx, initializer=_start_worker,
                             initargs=(os.getpid(), args.data, threads, fonts_dir)) as pool:
        running: set = set()
        while todo or running:
            while todo and len(running) < args.jobs and time.monotonic() < deadline:
                name, seed = todo.pop(0)
                recipe = recipes[name].model_copy(update={"seed": seed})
                running.add(pool.submit(run, name, recipe, args.tf32, args.models, args.robustness))
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
    if args.robustness and args.models:  # runs trained before robustness could be scored
        saved = Path(args.models)
        stale = [i for i, r in enumerate(done) if "val_corruption_mean" not in r
                 and (saved / f"{r['recipe']}-{r['seed']}.pt").is_file()]  # fmt: skip
        if stale:
            _load(args.data, device.available_cpus(), args.fonts)
            for i in stale:
                done[i] = rescore(done[i], args.models)
            files.write_text(out, "".join(json.dumps(r) + "\n" for r in done))
            print(f"scored {len(stale)} saved runs for robustness", flush=True)
    names = list(dict.fromkeys(r["recipe"] for r in earlier)) + list(recipes)
    print(summary(earlier + done, names))
    if means := robustness_means(earlier + done, names):
        print(robustness_summary(means))
        if args.robustness_csv:
            files.write_csv(args.robustness_csv, means)


if __name__ == "__main__":
    main()
