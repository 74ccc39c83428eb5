"""Data-parallel training with PyTorch's own runtime: torchrun launches the processes, DDP syncs the gradients.

A single process is the world of size 1: every helper here is then a no-op, so the training loop is the same code.
Under ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) the process group uses
NCCL on CUDA and gloo on CPU. ``train.batch_size`` stays the global batch: every rank takes its interleaved part of
each batch of the one permutation all ranks draw from the shared seed, so the shards are disjoint, cover the data
and give the same number of steps per epoch (and so the same LR schedule) as a single process.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from digits import data
from digits.device import DeviceError, available_cpus


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the same variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs to MLflow and writes outputs."""
    return rank() == 0


def relaunch(nproc: int) -> None:
    """Replace this process with ``torchrun --standalone --nproc-per-node=nproc`` running the same command."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *sys.argv]
    print(f"train.nproc={nproc}: relaunching under {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this rank's device.

    CUDA: one GPU per local rank, NCCL. CPU: gloo, the CPU threads split between the local ranks.
    """
    if not launched():
        return device
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        if local_world > torch.cuda.device_count():
            raise DeviceError(f"{local_world} processes per node but only {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, available_cpus() // local_world))
    else:
        raise DeviceError(f"distributed training supports cuda and cpu, not {device.type}; set train.device=cpu")
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    atexit.register(dist.destroy_process_group)
    return device


def wrap(model: nn.Module) -> nn.Module:
    """The model DDP-wrapped for the training step (gradients all-reduced), or unchanged in a single process."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard_indices(order: torch.Tensor, batch_size: int, rank: int, world: int) -> Iterator[torch.Tensor]:
    """This rank's indices of each global batch of ``order``: ``batch[rank::world]``.

    A last batch with fewer samples than ranks is skipped (every rank must take part in every step).
    """
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        if len(part) >= world:
            yield part[rank::world]


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``data.batches`` in one process; under DDP this rank's share of the epoch's shared permutation."""
    if world_size() == 1:
        yield from data.batches(x, y, batch_size, generator)
        return
    order = torch.randperm(len(y), generator=generator, device=generator.device)
    for sel in shard_indices(order, batch_size, rank(), world_size()):
        yield x[sel], y[sel]


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's interleaved share of a whole split (validation is evaluated in parts and all-reduced)."""
    return x[rank() :: world_size()], y[rank() :: world_size()]


def mean_over_ranks(values: list[float], count: int, device: torch.device) -> list[float]:
    """Means over all ranks of per-rank means, each weighted by its rank's ``count``."""
    if world_size() == 1:
        return values
    *sums, total = sum_over_ranks(*(v * count for v in values), count, device=device)
    return [s / total for s in sums]


def sum_over_ranks(*values: float | torch.Tensor, device: torch.device) -> list[float]:
    """Sums of each value over all ranks (the values themselves in a single process)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()
