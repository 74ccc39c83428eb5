"""Optimizers, LR schedules, the training loop, batched inference and checkpoints."""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from digits import augmentations, data, distributed, files, models
from digits.params import TrainParams


@dataclass
class Epoch:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float


@dataclass
class FitResult:
    history: list[Epoch]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    stopped_early: bool

    @property
    def best(self) -> Epoch:
        return self.history[self.best_epoch - 1]


class EMA:
    """Exponential moving average of a model's weights and buffers, with warm-up.

    The decay used at update n is ``min(decay, (1 + n) / (10 + n))``: early updates follow the model closely, so a
    short run (few steps) still ends with useful averaged weights instead of near-initial ones.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        self._source: nn.Module | None = None
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._counters: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # BatchNorm's num_batches_tracked

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._source is not model:  # pair the tensors once: state_dict() every step costs more than the update
            self._source = model
            self._floats, self._counters = ([], []), ([], [])
            for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
                kind = self._floats if avg.dtype.is_floating_point else self._counters
                kind[0].append(avg)
                kind[1].append(cur)
        torch._foreach_lerp_(*self._floats, 1 - d)  # one fused kernel on CUDA instead of one per tensor
        if self._counters[0]:
            torch._foreach_copy_(*self._counters)


def make_optimizer(p: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    if p.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=p.lr, momentum=p.momentum, nesterov=p.momentum > 0, weight_decay=p.weight_decay
        )
    cls = torch.optim.AdamW if p.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)


def make_scheduler(p: TrainParams, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, whether it steps per batch)."""
    total = p.epochs * steps_per_epoch
    if p.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=total), True
    if p.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total), True
    if p.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=p.step_size, gamma=p.gamma), False
    if p.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=p.gamma, patience=p.plateau_patience), False
    return None, False


def augments(p: TrainParams, epoch: int) -> bool:
    """Whether epoch ``epoch`` (from 1) trains on augmented images: all but the last ``augment.off_last_epochs``."""
    return epoch <= p.epochs - p.augment.off_last_epochs


def augment_batch(xb: torch.Tensor, p: TrainParams, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """``xb`` augmented as ``p.augment`` says, in an epoch that ``augments``; else ``xb`` itself. The geometric
    transforms (``data.augment``) come first, then ``augmentations.apply``, which draws nothing when all its keys
    are 0."""
    if not augments(p, epoch):
        return xb
    a = p.augment
    xb = data.augment(xb, a.rotation_deg, a.zoom, a.shift, generator, a.elastic_px, a.elastic_scale,
                      a.interpolation)  # fmt: skip
    return augmentations.apply(xb, a.model_dump(), generator, a.robust_share, a.robust_ops)


def mixed_precision(p: TrainParams, device: torch.device, cache: bool = True) -> torch.autocast:
    """bf16 autocast on CUDA when ``p.amp``; a disabled context elsewhere (CPU and MPS train in float32).
    ``cache=False`` for code captured into a CUDA graph (autocast's weight-cast cache must not outlive a capture)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=p.amp and device.type == "cuda",
                          cache_enabled=cache)  # fmt: skip


def train_step(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, opt: torch.optim.Optimizer, label_smoothing: float,
    autocast: torch.autocast,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch: forward and loss under ``autocast``, backward, optimizer step.

    Returns (logits, loss), still on the device: reading them is the caller's choice (it would synchronise).
    """
    with autocast:
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logits, loss


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` in eval mode over ``x`` in batches of ``batch_size``. A last, partial batch after full ones
    is taken as the last ``batch_size`` rows (overlapping the batch before), so every batch has one shape and a model
    compiled for that shape is not compiled again."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        start = min(i, max(len(x) - batch_size, 0))
        out.append(model(x[start : start + batch_size])[i - start :])
    return torch.cat(out)


def inference_rate(model: nn.Module, x: torch.Tensor, batch_size: int = 256, repeats: int = 5) -> float:
    """Images/s of batched inference over ``x``: the median of ``repeats`` timed passes after one warm-up pass."""
    predict_logits(model, x, batch_size)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_logits(model, x, batch_size)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(x) / (time.perf_counter() - start))
    return statistics.median(rates)


def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256):
    logits = predict_logits(model, x, batch_size)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def prepare(model: nn.Module, p: TrainParams, device: torch.device) -> nn.Module:
    """Move to ``device``; channels_last memory format where it pays (CPU and CUDA convolutions)."""
    model = model.to(device)
    if p.channels_last and device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    return model


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    p: TrainParams,
    on_epoch: Callable[[Epoch], None] = lambda e: None,
    resume: dict[str, Any] | None = None,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train with the recipe in ``p``; keep the weights of the best epoch by validation accuracy.

    With ``p.ema_decay`` the weights evaluated, kept and returned are the exponential moving average.
    After every epoch ``on_checkpoint`` gets the whole training state (see ``_state``); passing such a state as
    ``resume`` continues after its epoch exactly as if the run had never stopped (same RNG streams, same result).
    """
    x, y = train
    gen = torch.Generator(device=x.device).manual_seed(p.seed)
    # distributed: the shared generator draws only the permutations; augmentation gets a generator per rank
    aug_gen = gen
    if distributed.world_size() > 1:
        aug_gen = torch.Generator(device=x.device).manual_seed(p.seed + 1 + distributed.rank())
    steps = -(-len(y) // p.batch_size)
    opt = make_optimizer(p, model)
    sched, per_batch = make_scheduler(p, opt, steps)
    ema = EMA(model, p.ema_decay) if p.ema_decay else None
    kept = ema.module if ema is not None else model  # the weights that are evaluated and checkpointed
    step_model = distributed.wrap(model)  # distributed: DDP all-reduces the gradients
    step_model = torch.compile(step_model) if p.compile else step_model
    autocast = mixed_precision(p, x.device)
    history: list[Epoch] = []
    best_epoch, best_key, best_state, stopped_early = 0, (-1.0, 0.0), {}, False
    if resume is not None:
        history, best_epoch, best_key, best_state, stopped_early = _restore(resume, model, opt, sched, ema, gen)
    for epoch in range(len(history) + 1, p.epochs + 1):
        if stopped_early:
            break
        model.train()
        start, loss_sum, correct, seen = time.perf_counter(), torch.zeros((), device=x.device), 0, 0
        lr = opt.param_groups[0]["lr"]
        bar = tqdm(distributed.batches(x, y, p.batch_size, gen), total=steps, desc=f"epoch {epoch}/{p.epochs}",
                   leave=False, disable=not (sys.stderr.isatty() and distributed.is_main()))  # fmt: skip
        for xb, yb in bar:
            logits, loss = train_step(step_model, augment_batch(xb, p, epoch, aug_gen), yb, opt, p.label_smoothing,
                                      autocast)  # fmt: skip
            if ema is not None:
                ema.update(model)
            if per_batch:
                sched.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        loss_sum, correct, seen = distributed.sum_over_ranks(loss_sum, correct, seen, device=x.device)
        vx, vy = distributed.shard(*val)  # distributed: each rank evaluates its part; the means are all-reduced
        val_loss, val_acc = distributed.mean_over_ranks([*loss_and_accuracy(kept, vx, vy)], len(vy), x.device)
        if sched is not None and not per_batch:
            sched.step(val_loss) if p.scheduler == "plateau" else sched.step()
        seconds = time.perf_counter() - start
        e = Epoch(epoch, loss_sum / seen, correct / seen, val_loss, val_acc, lr, seconds)
        history.append(e)
        on_epoch(e)
        if (val_acc, -val_loss) > best_key:
            best_epoch, best_key, best_state = epoch, (val_acc, -val_loss), copy.deepcopy(kept.state_dict())
        elif p.early_stopping_patience and epoch - best_epoch >= p.early_stopping_patience:
            stopped_early = True
        if on_checkpoint is not None:
            on_checkpoint(_state(history, best_epoch, best_key, best_state, stopped_early, model, opt, sched, ema, gen))
    model.load_state_dict(best_state)
    return FitResult(history, best_epoch, best_state, stopped_early)


def _state(history, best_epoch, best_key, best_state, stopped_early, model, opt, sched, ema, gen) -> dict[str, Any]:
    """Everything ``fit`` needs to continue after the last epoch of ``history`` (tensors and plain values only,
    so it loads with ``weights_only=True``)."""
    return {
        "epoch": len(history),
        "history": epoch_rows(history),
        "best_epoch": best_epoch,
        "best_key": list(best_key),
        "best_state": best_state,
        "stopped_early": stopped_early,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": ema.updates if ema is not None else 0,
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def _restore(state: dict[str, Any], model, opt, sched, ema, gen):
    """Load a ``_state`` into the live objects; return (history, best_epoch, best_key, best_state, stopped_early)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
        ema.updates = state["ema_updates"]
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    history = [Epoch(**row) for row in state["history"]]
    return history, state["best_epoch"], tuple(state["best_key"]), state["best_state"], state["stopped_early"]


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """state_dict + everything needed to rebuild the model (``arch``, ``model_kwargs``) + provenance."""
    files.write_torch(path, {"state_dict": model.state_dict(), **meta})


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint written by ``save_checkpoint`` (weights_only: no code runs on load)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        state = ckpt.pop("state_dict")
        model = models.build(ckpt["arch"], mean=0.0, std=1.0, **ckpt["model_kwargs"])
        model.load_state_dict(state)
    except FileNotFoundError:
        raise data.DataError(f"{path}: no checkpoint; run the train stage first") from None
    except Exception as exc:
        raise data.DataError(f"{path}: not a usable checkpoint ({type(exc).__name__}: {exc})") from None
    return model.to(device).eval(), ckpt


def epoch_rows(history: list[Epoch]) -> list[dict[str, Any]]:
    return [asdict(e) for e in history]
