"""Time to 99.0 % and 99.5 % test accuracy on MNIST from the moment the data starts moving to the device, next to
its floor (FLOPs and fewest bytes per step over the H200's measured ceilings), with the start-up cost reported apart.

The project's model, optimizer, schedule, EMA and augmentation in a loop of its own: batches gathered by index on the
device, and on CUDA the gather, augmentation, forward and backward replayed as one CUDA graph per step (optimizer and
EMA eagerly after it). Accuracy is scored after the run on weight snapshots taken at CUDA events inside the timed
run, so checking never stops the clock. Method and figures: docs/benchmarks.md, "GPU: every check in one call".

    python benchmarks/time_to_accuracy.py --model digits_cnn_gpu --set epochs=4     # needs data/raw
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from digits import data, device, models, params, training

TARGETS = (0.99, 0.995)


def floor_per_step(model: torch.nn.Module, p: params.TrainParams) -> dict[str, float]:
    """FLOPs and fewest device-memory bytes of one training step at ``p.batch_size`` (counted on a CPU copy)."""
    probe, n = copy.deepcopy(model).cpu().train(), 4
    outputs: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel()))
             for m in probe.modules() if not list(m.children())]  # fmt: skip
    with FlopCounterMode(display=False) as counter:
        probe(torch.rand(n, 1, 28, 28)).sum().backward()
    for h in hooks:
        h.remove()
    act_bytes = 2 if p.amp else 4  # bf16 activations under autocast
    per_image = 4 * act_bytes * sum(outputs) / n + 28 * 28 * 4  # activations 2× each way; the image read once
    state = 4 * 12 * models.count_parameters(probe)  # fp32: forward, grad, AdamW (7 accesses), EMA (3)
    return {"flops": counter.get_total_flops() / n * p.batch_size, "bytes": per_image * p.batch_size + state}


def train_loss(model, x, y, idx, p, epoch, gen, autocast) -> torch.Tensor:
    """Gather, augment, forward, backward (gradients zeroed in place, so a graph replays into the same tensors)."""
    model.zero_grad(set_to_none=False)
    with autocast:
        loss = F.cross_entropy(model(training.augment_batch(x[idx], p, epoch, gen)), y[idx],
                               label_smoothing=p.label_smoothing)  # fmt: skip
    loss.backward()
    return loss


def capture(step, epochs: dict[bool, int]) -> dict[bool, torch.cuda.CUDAGraph]:
    """One CUDA graph of ``step(epoch)`` per augmentation setting, after warm-up steps on a side stream (cuDNN
    autotuning, gradient tensors)."""
    graphs, side = {}, torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for epoch in epochs.values():
                step(epoch)
    torch.cuda.current_stream().wait_stream(side)
    for aug, epoch in epochs.items():
        graphs[aug] = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graphs[aug]):
            step(epoch)
    return graphs


def run(p: params.TrainParams, raw: Path, limit: int | None, checks: int, graphs_wanted: bool,
        rates: dict[str, float]) -> dict:  # fmt: skip
    dev = device.select(p.device)
    started = time.perf_counter()
    device.configure(dev, p.seed, p.deterministic)
    torch.zeros(1, device=dev)
    context_s = time.perf_counter() - started
    split = data.subset(data.read_idx_pair(raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"), limit, 0)
    tx, ty = data.to_device(data.read_idx_pair(raw / "t10k-images-idx3-ubyte", raw / "t10k-labels-idx1-ubyte"), dev)
    cuda, graphed = dev.type == "cuda", graphs_wanted and dev.type == "cuda"
    host = [t.pin_memory() if cuda else t for t in (split.images, split.labels)]
    n, bs, steps = len(split), p.batch_size, len(split) // p.batch_size
    x, y = torch.rand(n, 1, 28, 28, device=dev), torch.randint(0, 10, (n,), device=dev)  # stand-ins until the clock
    staging, idx = torch.empty(n, 28, 28, dtype=torch.uint8, device=dev), torch.arange(bs, device=dev)
    model = training.prepare(models.from_params(p, 0.1307, 0.3081), p, dev).train()
    floor = floor_per_step(model, p)
    aug_gen = torch.cuda.default_generators[dev.index or 0] if cuda else torch.Generator().manual_seed(p.seed)
    autocast = training.mixed_precision(p, dev, cache=False)

    def step(epoch: int) -> torch.Tensor:
        return train_loss(model, x, y, idx, p, epoch, aug_gen, autocast)

    def recipe():
        opt = training.make_optimizer(p, model)
        ema = training.EMA(model, p.ema_decay) if p.ema_decay else None
        return opt, *training.make_scheduler(p, opt, steps), ema

    def train_step(epoch: int) -> None:
        if graphed:
            graphs[training.augments(p, epoch)].replay()
        else:
            step(epoch)
        opt.step()
        if ema:
            ema.update(model)
        if per_batch:
            sched.step()

    prep_started = time.perf_counter()
    initial = copy.deepcopy(model.state_dict())
    graphs = capture(step, {training.augments(p, e): e for e in range(p.epochs, 0, -1)}) if graphed else {}
    opt, sched, per_batch, ema = recipe()
    train_step(1)  # one whole step on stand-in data: lazy imports and set-up of optimizer, EMA, kernels ...
    model.load_state_dict(initial)  # ... then the initial weights again, in place (the graphs keep their tensors)
    opt, sched, per_batch, ema = recipe()
    kept_model = ema.module if ema else model
    kept = list(kept_model.state_dict().values())
    check_at = {max(0, -(-steps * (k + 1) // checks) - 1) for k in range(checks)}  # last step of each part
    snapshots = [[torch.empty_like(t) for t in kept] for _ in range(p.epochs * len(check_at))]
    perm_gen = torch.Generator(device=dev).manual_seed(p.seed)
    device.synchronize(dev)
    prepare_s = time.perf_counter() - prep_started

    clock = device.Clock(dev)
    clock.start()
    staging.copy_(host[0], non_blocking=True)
    y.copy_(host[1], non_blocking=True)
    x.copy_(staging.unsqueeze(1)).div_(255.0)
    marks, where = [], []
    for epoch in range(1, p.epochs + 1):
        order = torch.randperm(n, generator=perm_gen, device=dev)
        for s in range(steps):
            idx.copy_(order[s * bs : (s + 1) * bs], non_blocking=True)
            train_step(epoch)
            if s in check_at:
                torch._foreach_copy_(snapshots[len(marks)], kept)
                marks.append(clock.mark())
                where.append((epoch, s + 1))
        if sched is not None and not per_batch:
            sched.step()
    seconds = [clock.seconds(m) for m in marks]
    scored = []
    for snap in snapshots:
        torch._foreach_copy_(kept, snap)
        scored.append(training.loss_and_accuracy(kept_model, tx, ty)[1])
    eval_started = time.perf_counter()
    training.loss_and_accuracy(kept_model, tx, ty)  # .item(): waits for the device
    eval_s = time.perf_counter() - eval_started
    step_floor = max(floor["flops"] / rates["flops"], floor["bytes"] / rates["bandwidth"])
    transfer_floor = (n * 28 * 28 + n * 8) / rates["link"]
    result = {"device": device.describe(dev), "graphs": graphed, "startup_context_s": round(context_s, 3),
              "startup_prepare_s": round(prepare_s, 3), "flops_per_step": floor["flops"],
              "bytes_per_step": floor["bytes"], "floor_ms_per_step": step_floor * 1e3,
              "floor_transfer_ms": transfer_floor * 1e3, "steps_per_epoch": steps, "test_pass_s": round(eval_s, 4),
              "checkpoints": [{"epoch": e, "step": s, "seconds": round(t, 4), "test_accuracy": a}
                              for (e, s), t, a in zip(where, seconds, scored, strict=True)]}  # fmt: skip
    for target in TARGETS:
        hit = next((c for c in result["checkpoints"] if c["test_accuracy"] >= target), None)
        done = hit and ((hit["epoch"] - 1) * steps + hit["step"])
        result[f"seconds_to_{target:.1%}"] = hit and hit["seconds"]
        result[f"floor_to_{target:.1%}"] = done and round(transfer_floor + done * step_floor, 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn_gpu", help="train.zoo recipe (default: digits_cnn_gpu)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a train param")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"), help="the MNIST IDX files (the download stage's)")
    ap.add_argument("--limit", type=int, help="train on a stratified subset of this many images (smoke runs)")
    ap.add_argument("--checks", type=int, default=4, help="accuracy checkpoints per epoch")
    ap.add_argument("--no-graphs", dest="graphs", action="store_false", help="CUDA: eager steps, no CUDA graph")
    ap.add_argument("--tflops", type=float, default=790.0, help="matrix rate ceiling (bf16; measured on an H200)")
    ap.add_argument("--tbps", type=float, default=4.3, help="device memory bandwidth ceiling, TB/s")
    ap.add_argument("--link-gbps", type=float, default=50.0, help="host-to-device bandwidth, GB/s")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()
    p = params.override(params.zoo_model(args.model), args.set)
    rates = {"flops": args.tflops * 1e12, "bandwidth": args.tbps * 1e12, "link": args.link_gbps * 1e9}
    r = run(p, args.raw, args.limit, args.checks, args.graphs, rates)
    print(f"{r['device']}, torch {torch.__version__}, CUDA graphs {r['graphs']}; {args.model} {' '.join(args.set)}: "
          f"{p.epochs} epochs × {r['steps_per_epoch']} steps of {p.batch_size}, amp {p.amp}")  # fmt: skip
    print(f"start-up (not in the times below): CUDA context {r['startup_context_s']} s, autotuning, graph capture "
          f"and set-up {r['startup_prepare_s']} s; a test pass (not counted) {r['test_pass_s']} s")  # fmt: skip
    print(f"floor: {r['flops_per_step'] / 1e9:.2f} GFLOP and {r['bytes_per_step'] / 1e6:.1f} MB per step → "
          f"{r['floor_ms_per_step']:.3f} ms/step at {args.tflops:g} TFLOP/s and {args.tbps:g} TB/s; moving the data "
          f"{r['floor_transfer_ms']:.2f} ms at {args.link_gbps:g} GB/s")  # fmt: skip
    print("| epoch | step | seconds | test accuracy |\n|---:|---:|---:|---:|")
    for c in r["checkpoints"]:
        print(f"| {c['epoch']} | {c['step']} | {c['seconds']:.3f} | {c['test_accuracy']:.2%} |")
    for target in TARGETS:
        t, fl = r[f"seconds_to_{target:.1%}"], r[f"floor_to_{target:.1%}"]
        print(f"seconds to {target:.1%}: " + ("not reached" if t is None else f"{t:.3f} (floor {fl:.4f})"))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
