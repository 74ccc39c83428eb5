"""Benchmark: the memory allocator under the training loop. One epoch of the default recipe (augmentation, EMA,
as the train stage runs it) on 16,384 images, each in a fresh process, rounds interleaved so a drift of the host
hits every variant alike:

- glibc: glibc's malloc with its defaults;
- keep: glibc with `digits.stage.keep_freed_memory()` (what every stage calls);
- tcmalloc: `LD_PRELOAD` of Debian's libtcmalloc-minimal4, where installed.

Prints images/s, minor page faults and system CPU time of the epoch (after one warm-up epoch), median over rounds.

    python benchmarks/allocator.py --rounds 3
    (set -a; source scripts/avx2.env; set +a; python benchmarks/allocator.py)   # as on a CPU without AVX-512
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from digits import device, models, params, stage, training

TCMALLOC = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4*"))


def epoch(keep: bool, n: int) -> dict:
    """One warm-up epoch, then one timed epoch of the default recipe on ``n`` random digits."""
    if keep:
        stage.keep_freed_memory()
    p = params.load().train.model_copy(update={"epochs": 1})
    cpu = torch.device("cpu")
    device.configure(cpu, p.seed, p.deterministic)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g).float() / 255
    y = torch.randint(0, 10, (n,), generator=g)
    val = (x[:512], y[:512])
    model = training.prepare(models.from_params(p, 0.1307, 0.3081), p, cpu)
    training.fit(model, (x[: n // 4], y[: n // 4]), val, p)  # warm-up: first-touch of every buffer
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    training.fit(model, (x, y), val, p)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_second": n / seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
            "system_seconds": after.ru_stime - before.ru_stime}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=16384)
    ap.add_argument("--child", choices=["glibc", "keep"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(epoch(args.child == "keep", args.images)))
        return
    variants = {"glibc": ("glibc", {}), "keep": ("keep", {})}
    if TCMALLOC:
        variants["tcmalloc"] = ("glibc", {"LD_PRELOAD": TCMALLOC[0]})
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (child, env) in variants.items():
            cmd = [sys.executable, __file__, "--child", child, "--images", str(args.images)]
            out = subprocess.run(cmd, env=os.environ | env, capture_output=True, text=True, check=True).stdout
            rows[name].append(json.loads(out.splitlines()[-1]))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {device.available_cpus()} CPUs, {args.images} images, "
          f"{args.rounds} rounds (median; min–max)")  # fmt: skip
    print("| allocator | images/s | minor page faults | system CPU s |\n|---|---:|---:|---:|")
    for name, runs in rows.items():
        cells = []
        for key, fmt in (("images_per_second", "{:,.0f}"), ("minor_faults", "{:,.0f}"), ("system_seconds", "{:.2f}")):
            low, mid, high = (fmt.format(f(r[key] for r in runs)) for f in (min, statistics.median, max))
            cells.append(f"{mid} ({low}–{high})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if not TCMALLOC:
        print("(tcmalloc: not installed; apt-get install libtcmalloc-minimal4 to compare it)")


if __name__ == "__main__":
    main()
