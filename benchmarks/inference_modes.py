"""Benchmark: the evaluate stage's inference four ways, each in a fresh process, rounds interleaved.

- eager: `models.for_inference(compile=False)` (BatchNorm folded, channels_last for CNNs);
- frozen: `models.for_inference(compile=True)`, the stage's way (Inductor with weight freezing: oneDNN-prepacked
  weights and fused ReLU; Inductor's FX graph cache refuses such graphs, so every process compiles again);
- plain: `torch.compile` of the eager model without freezing (the weights stay graph inputs; the cache keeps the
  graph for the next process);
- int8: post-training static int8 quantization of the eager model (`torch.ao` FX graph mode, oneDNN engine, per-tensor
  activations calibrated on the first 2,048 images, per-channel weights), run eagerly. It is not what the stage runs:
  it shows what int8 would buy on this CPU (the logit difference is its quantization error, not a bug).

Each process builds the default model of params.yaml with random weights (the speed does not depend on them), makes
one pass over ``--images`` random digits in batches of evaluate.batch_size (compilation or quantization included:
"first pass"; its logits are compared with the unchanged model's, the largest difference absolute and relative to the
largest logit), then ``training.inference_rate``: one more pass, then
``--passes`` timed one by one. Prints per way the first pass in seconds and images/s (median, min–max over rounds of
each process's median), and the seconds a stage that infers ``--stage-images`` would spend on compilation plus
inference. The machine class is printed with the figures; compare figures of one class only.

    python benchmarks/inference_modes.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from train_speed import last_json_line, spread

from digits import device, models, params, training

MODES = ("eager", "frozen", "plain", "int8")


def measure(mode: str, images: int, passes: int) -> dict:
    """First pass (compilation included) and the median images/s of ``passes`` timed ones, in this process."""
    torch.set_grad_enabled(False)
    p = params.load()
    cpu = torch.device("cpu")
    device.configure(cpu, seed=0, deterministic=True)
    model = models.from_params(p.train, 0.1307, 0.3081).eval()
    x = torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    fast = models.for_inference(model, cpu, compile=mode == "frozen")
    if mode == "plain":
        fast = torch.compile(fast, dynamic=False)
    if mode == "int8":
        fast = quantized(fast, x[:2048], p.evaluate.batch_size)
    logits = training.predict_logits(fast, x, p.evaluate.batch_size)
    first = time.perf_counter() - start
    reference = training.predict_logits(model, x, p.evaluate.batch_size)
    drift = (logits - reference).abs().max().item()
    rate = training.inference_rate(fast, x, p.evaluate.batch_size, repeats=passes)
    return {"first_seconds": first, "images_per_second": rate, "max_abs_logit_diff": drift,
            "max_rel_logit_diff": drift / reference.abs().max().item(), "machine": device.machine_class(cpu)}


def quantized(model: torch.nn.Module, calibration: torch.Tensor, batch_size: int) -> torch.nn.Module:
    """``model`` quantized to int8 after training (FX graph mode, oneDNN), observers calibrated on ``calibration``."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "onednn"
    prepared = prepare_fx(model, get_default_qconfig_mapping("onednn"), (calibration[:batch_size],))
    training.predict_logits(prepared, calibration, batch_size)
    return convert_fx(prepared).to(memory_format=torch.channels_last)


def child(mode: str, images: int, passes: int) -> dict:
    return last_json_line([sys.executable, __file__, "--child", mode, f"--images={images}", f"--passes={passes}"], mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=10_000, help="images a pass (the test set: 10,000)")
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--stage-images", type=int, default=330_000, help="what the evaluate stage infers (33 test sets)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.images, args.passes)))
        return
    if min(args.rounds, args.images, args.passes) < 1:
        sys.exit("--rounds, --images and --passes must be at least 1")
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            runs[mode].append(child(mode, args.images, args.passes))
    print(f"{runs['eager'][0]['machine']}, torch {torch.__version__}, {args.rounds} round(s), {args.images} images "
          f"a pass, {args.passes} timed passes: median (min–max) over rounds")  # fmt: skip
    print(f"| way | first pass, s | images/s | stage: compilation + {args.stage_images:,} images, s |")
    print("|---|---:|---:|---:|")
    summary = {}
    for mode, rs in runs.items():
        first = [r["first_seconds"] for r in rs]
        rate = [r["images_per_second"] for r in rs]
        stage = [f + args.stage_images / r for f, r in zip(first, rate, strict=True)]
        print(f"| {mode} | {spread(first, '{:.2f}')} | {spread(rate, '{:,.0f}')} | {spread(stage, '{:.1f}')} |")
        summary[mode] = {"first_seconds": statistics.median(first), "images_per_second": round(statistics.median(rate)),
                         "stage_seconds": round(statistics.median(stage), 1),
                         "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rs),
                         "max_rel_logit_diff": max(r["max_rel_logit_diff"] for r in rs)}  # fmt: skip
    print(json.dumps({"machine": runs["eager"][0]["machine"], "modes": summary, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
