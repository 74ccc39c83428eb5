"""Benchmark: the CPU training loop under each speed setting, on this CPU's instruction set and, on an AVX-512 host,
as an AVX2-only CPU would run it (scripts/avx2.env), printed side by side.

Each variant trains one epoch of the default recipe (augmentation and EMA as the train stage runs them) on 16,384
random digits after a warm-up epoch on a quarter of them (first touch of every buffer; compilation), each in a fresh
process; rounds are interleaved so that a drift of the host hits every variant alike.

- stage: as the train stage runs it (`digits.stage.keep_freed_memory()`, the recipe's channels_last, 2 threads);
- glibc: glibc's malloc with its defaults; tcmalloc: through scripts/tcmalloc.sh, as the train stage (where installed);
- compile: `train.compile` (torch.compile of the model, forward and backward, by Inductor);
- contiguous: `train.channels_last=false`; batch256: `train.batch_size=256`; 1thread: one thread instead of all.

Prints images/s (median, min–max over rounds) and each variant against `stage` on the same instruction set, with
minor page faults and system CPU time of the timed epoch. The imitated column is labelled so: it reproduces which
kernels run, not the speed of an AVX2-only machine (docs/benchmarks.md).

    python benchmarks/train_speed.py --rounds 3
    python benchmarks/train_speed.py --variants stage,tcmalloc --isa native
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from digits import device, models, params, stage, training

REPO = Path(__file__).resolve().parent.parent
TCMALLOC_SH = REPO / "scripts" / "tcmalloc.sh"  # the launcher of the train stage (dvc.yaml): where tcmalloc is found
# name: (train-param overrides, allocator, threads; None: all this process may use)
VARIANTS: dict[str, tuple[dict, str, int | None]] = {
    "stage": ({}, "keep", None),
    "glibc": ({}, "glibc", None),
    "tcmalloc": ({}, "tcmalloc", None),
    "compile": ({"compile": True}, "keep", None),
    "contiguous": ({"channels_last": False}, "keep", None),
    "batch256": ({"batch_size": 256}, "keep", None),
    "1thread": ({}, "keep", 1),
}


def epoch(overrides: dict, keep: bool, threads: int | None, n: int) -> dict:
    """One warm-up epoch on n/4 random digits, then one timed epoch on ``n`` of them."""
    if keep:
        stage.keep_freed_memory()
    p = params.load().train.model_copy(update={"epochs": 1, **overrides})
    cpu = torch.device("cpu")
    device.configure(cpu, p.seed, p.deterministic)
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    y = torch.randint(0, 10, (n,), generator=g)
    val = (x[:512], y[:512])
    model = training.prepare(models.from_params(p, 0.1307, 0.3081), p, cpu)
    training.fit(model, (x[: n // 4], y[: n // 4]), val, p)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    training.fit(model, (x, y), val, p)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_second": n / seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_seconds": after.ru_stime - before.ru_stime, "machine": device.machine_class(cpu)}  # fmt: skip


def tcmalloc_installed() -> bool:
    """Whether scripts/tcmalloc.sh finds tcmalloc to preload."""
    env = {k: v for k, v in os.environ.items() if k != "DIGITS_MALLOC"}
    out = subprocess.run(["bash", str(TCMALLOC_SH), "printenv", "LD_PRELOAD"], env=env, capture_output=True, text=True)
    return "tcmalloc" in out.stdout


def child(variant: str, isa: str, images: int) -> dict:
    """Run ``variant`` in a fresh process (through scripts/tcmalloc.sh for tcmalloc, as the train stage runs), with
    scripts/avx2.env sourced first for ``isa == "avx2"``."""
    overrides, allocator, threads = VARIANTS[variant]
    env = {k: v for k, v in os.environ.items() if k != "DIGITS_MALLOC"}
    spec = json.dumps({"overrides": overrides, "keep": allocator == "keep", "threads": threads, "images": images})
    cmd = [sys.executable, __file__, "--child", spec]
    if allocator == "tcmalloc":
        cmd = ["bash", str(TCMALLOC_SH), *cmd]
    return last_json_line(under_isa(cmd, isa), f"{variant} ({isa})", env)


def under_isa(cmd: list[str], isa: str) -> list[str]:
    """``cmd`` on this CPU's own instruction set (``native``) or with scripts/avx2.env sourced first (``avx2``)."""
    if isa == "avx2":
        return ["bash", "-c", f'set -a; source "{REPO}/scripts/avx2.env"; set +a; exec "$@"', "-", *cmd]
    return cmd


def isas_to_run(spec: str) -> list[str]:
    """The instruction sets named in ``spec`` (comma-separated ``native``, ``avx2``) that this CPU can run: ``avx2``
    is imitated, so only on an AVX-512 CPU (elsewhere it is left out, saying so). Exits on any other name."""
    isas = [i for i in spec.split(",") if i]
    if unknown := set(isas) - {"native", "avx2"}:
        sys.exit(f"unknown instruction set(s) {', '.join(sorted(unknown))}: give native and/or avx2")
    if "avx2" in isas and device.cpu_isa() != "AVX-512":
        print(f"avx2: this CPU is {device.cpu_isa()}, nothing to imitate; left out", file=sys.stderr)
        isas.remove("avx2")
    return isas


def last_json_line(cmd: list[str], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` (a benchmark's child process) and parse its last line of output as JSON; if it fails, exit naming
    ``what``, with the end of its stderr."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def spread(values: list[float], fmt: str) -> str:
    """Median (min–max), or the one value."""
    mid = fmt.format(statistics.median(values))
    return mid if len(values) == 1 else f"{mid} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=16384)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--isa", default="native,avx2", help="native and/or avx2 (imitated; only on an AVX-512 host)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(epoch(spec["overrides"], spec["keep"], spec["threads"], spec["images"])))
        return
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "tcmalloc" in variants and not tcmalloc_installed():
        print("tcmalloc: not installed (apt-get install libtcmalloc-minimal4), left out", file=sys.stderr)
        variants.remove("tcmalloc")
    isas = isas_to_run(args.isa)
    if not variants or not isas:
        sys.exit("nothing to run: give --variants from the list and --isa native and/or avx2")
    runs: dict[tuple[str, str], list[dict]] = {(v, i): [] for v in variants for i in isas}
    for _ in range(args.rounds):
        for isa in isas:
            for variant in variants:
                runs[variant, isa].append(child(variant, isa, args.images))
    machines = {isa: runs[variants[0], isa][0]["machine"] for isa in isas}
    print(f"torch {torch.__version__}, {args.images} images, {args.rounds} round(s): median (min–max)")
    print("| variant | " + " | ".join(f"{machines[i]}: images/s | × stage | page faults | system s" for i in isas)
          + " |\n|---|" + "---:|" * 4 * len(isas))  # fmt: skip
    summary = {}
    for variant in variants:
        cells = []
        for isa in isas:
            rs = runs[variant, isa]
            rate = statistics.median(r["images_per_second"] for r in rs)
            base = runs.get(("stage", isa))
            ratio = f"{rate / statistics.median(r['images_per_second'] for r in base):.2f}" if base else "–"
            cells += [spread([r["images_per_second"] for r in rs], "{:,.0f}"), ratio,
                      spread([r["minor_faults"] for r in rs], "{:,.0f}"),
                      spread([r["system_seconds"] for r in rs], "{:.2f}")]  # fmt: skip
            summary[f"{variant} | {machines[isa]}"] = round(rate)
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print(json.dumps({"images_per_second": summary, "images": args.images, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
