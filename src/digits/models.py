"""Model architectures. Every model takes float images in [0, 1], shape [N, 1, 28, 28], and returns logits.

Standardisation is the model's first layer (buffers in the state_dict), so a checkpoint or a logged MLflow
model is self-contained: callers never need to know the training statistics.
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from digits.errors import UserError
from digits.params import ARCHITECTURE_KEYS


class Standardize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Stretch(nn.Module):
    """Each image's pixel range stretched to [0, 1]: ``(x − min) / (max − min)``, per image (a blank image → 0).
    A clean MNIST digit (background 0, ink peaking at or near 1) passes almost unchanged; a lifted background, a
    dimmed or a brightened image come out as if they were clean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, high = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
        return (x - low) / (high - low).clamp(min=1e-3)


def mlp(hidden: list[int], dropout: float, batchnorm: bool = False) -> nn.Sequential:
    """Dense layers of the ``hidden`` sizes, each Linear → (BatchNorm) → ReLU → (Dropout)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h, bias=not batchnorm), *([nn.BatchNorm1d(h)] if batchnorm else [])]
        layers.append(nn.ReLU(inplace=True))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that trains a narrow layer (at most ``NARROW`` channels) on a channels-first copy of a
    channels_last CPU input and hands back channels_last. ATen's channels_last CPU kernel is slow for so few channels:
    forward 3.5× and forward + backward 3.5× the channels-first time for 128 × 8 × 28 × 28 on an AVX2 host, which
    made the first BatchNorm 40 % of a `digits_cnn_fast` training step (docs/benchmarks.md). Wider layers, other
    devices and eval mode run the stock kernel; parameters and state_dict are the stock ones."""

    NARROW = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.device.type == "cpu" and self.num_features <= self.NARROW
                and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):  # fmt: skip
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False), BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def cnn(
    width: int,
    dropout: float,
    depth: int = 1,
    head: int = 0,
    stages: int = 3,
    block_dropout: float = 0.0,
    last_width: int | None = None,
    last_pool: str = "floor",
    first_stride: int = 1,
) -> nn.Sequential:
    """``stages`` conv stages of w, 2w, 4w channels at 28, 14, 7 px, each Conv-BN-ReLU block(s) → 2×2 max-pool
    (→ Dropout ``block_dropout``).

    ``depth`` conv layers in each stage after the first (the first, on one input channel, has one); ``last_width``
    replaces the last stage's channel count; ``last_pool`` is that stage's pooling: ``floor`` (7 → 3 px, dropping the
    odd row and column), ``ceil`` (7 → 4 px) or ``none``. ``first_stride`` 2: the first convolution strides by 2
    (28 → 14 px) in place of the first stage's max-pool, so nothing runs at 28 px but that convolution, on a quarter
    of the pixels. ``head`` > 0 adds a hidden dense layer of that size; ``dropout`` comes before the classifier.
    """
    if last_pool not in ("floor", "ceil", "none"):
        raise ValueError(f"unknown last_pool '{last_pool}'; choose one of: floor, ceil, none")
    if first_stride not in (1, 2) or (first_stride == 2 and stages < 2):
        raise ValueError(f"first_stride {first_stride} is not possible with {stages} stage(s): 1, or 2 with ≥ 2 stages")
    layers: list[nn.Module] = []
    c_in, side = 1, 28
    for stage in range(stages):
        last = stage == stages - 1
        c_out = last_width if last and last_width else width * 2**stage
        for i in range(1 if stage == 0 else depth):
            layers += _conv_bn(c_in if i == 0 else c_out, c_out, first_stride if stage == 0 else 1)
        if stage == 0 and first_stride == 2:
            side //= 2
        elif not (last and last_pool == "none"):
            ceil = last and last_pool == "ceil"
            layers.append(nn.MaxPool2d(2, ceil_mode=ceil))
            side = -(-side // 2) if ceil else side // 2
        if block_dropout:
            layers.append(nn.Dropout(block_dropout))
        c_in = c_out
    features = c_in * side * side
    layers.append(nn.Flatten())
    if head:
        layers += [nn.Linear(features, head), nn.ReLU(inplace=True)]
        features = head
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(features, 10))


ARCHITECTURES = {"mlp": mlp, "cnn": cnn}


def build(arch: str, mean: float, std: float, init: str = "default", stretch: bool = False, **kwargs: Any
          ) -> nn.Sequential:  # fmt: skip
    """Build an architecture by name (``mlp`` | ``cnn``); ``kwargs`` are its own settings (``architecture_kwargs``).

    ``stretch``: a ``Stretch`` before the standardisation.
    ``init="xavier"``: Xavier/Glorot-uniform weights and zero biases for every Linear and Conv2d layer.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; choose one of: {', '.join(ARCHITECTURES)}")
    body = ARCHITECTURES[arch](**kwargs)
    if init == "xavier":
        for m in body.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return nn.Sequential(*([Stretch()] if stretch else []), Standardize(mean, std), body)


def architecture_kwargs(train_params: Any) -> dict[str, Any]:
    """The train params that define the architecture ``train_params.arch`` (stored in checkpoints to rebuild it)."""
    return {k: copy.copy(getattr(train_params, k)) for k in ARCHITECTURE_KEYS[train_params.arch]}


def from_params(train_params: Any, mean: float, std: float) -> nn.Sequential:
    """The architecture that the train params ``train_params`` describe (``arch``, its settings and ``init``)."""
    return build(train_params.arch, mean, std, init=train_params.init, **architecture_kwargs(train_params))


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy for inference with every Conv2d → BatchNorm2d pair folded into one Conv2d (same outputs in eval)."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        fused: list[nn.Module] = []
        for layer in layers:
            if isinstance(layer, nn.BatchNorm2d) and fused and isinstance(fused[-1], nn.Conv2d):
                fused[-1] = fuse_conv_bn_eval(fused[-1], layer)
            else:
                fused.append(layer)
        if len(fused) < len(layers):
            for name in list(seq._modules):
                del seq._modules[name]
            for i, layer in enumerate(fused):
                seq.add_module(str(i), layer)
    return model


def for_inference(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    """A fast inference copy of ``model`` on ``device``, in eval mode, for use under ``torch.inference_mode``.

    BatchNorm is folded into the convolutions and CNNs use channels_last. ``compile``: ``torch.compile`` with
    Inductor's weight freezing (oneDNN-prepacked weights, fused Conv+ReLU); on 2 CPU cores that measured ~1.45×
    the images/s of the eager model for the default CNN, for a one-off compilation of 5–25 s (docs/benchmarks.md).
    """
    compilers = (os.environ.get("CXX"), "g++", "clang++")
    if compile and device.type == "cpu" and not any(shutil.which(c) for c in compilers if c):
        raise UserError("evaluate.compile=true needs a C++ compiler on CPU (g++ or clang++, or one named by CXX): "
                        "install one, or set evaluate.compile=false")
    model = fuse_for_inference(model).to(device)
    if device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    if not compile:
        return model
    # Inductor freezes only through its global setting: torch.compile(options={"freezing": True}) leaves the weights
    # graph inputs (no prepacked oneDNN convolutions; torch 2.15). Freezing applies only to graphs compiled without
    # autograd, so a training step compiled in the same process is unaffected.
    from torch._inductor import config as inductor_config

    inductor_config.freezing = True
    return torch.compile(model, dynamic=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
