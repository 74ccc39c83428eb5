"""Model architectures. Every model takes float images in [0, 1], shape [N, 1, 28, 28], and returns logits.

Standardisation is the model's first layer (buffers in the state_dict), so a checkpoint or a logged MLflow
model is self-contained: callers never need to know the training statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Standardize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp(hidden: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def cnn(width: int, dropout: float) -> nn.Sequential:
    """Three conv-BN-ReLU blocks (w, 2w, 4w channels at 28, 14 and 7 px), each followed by 2×2 max-pooling."""
    w = width
    return nn.Sequential(
        *_conv_bn(1, w), nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w), nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 3 * 3, 10),
    )  # fmt: skip


def build(name: str, mean: float, std: float, **kwargs: Any) -> nn.Sequential:
    """Build a model by name. ``kwargs`` are that architecture's own settings."""
    if name == "mlp":
        body = mlp(kwargs["hidden"], kwargs["dropout"])
    elif name == "cnn":
        body = cnn(kwargs["width"], kwargs["dropout"])
    else:
        raise ValueError(f"unknown model '{name}'; choose one of: mlp, cnn")
    return nn.Sequential(Standardize(mean, std), body)


def architecture_kwargs(name: str, train_params: Any) -> dict[str, Any]:
    """The subset of train params that defines the architecture (stored in checkpoints to rebuild it)."""
    if name == "mlp":
        return {"hidden": list(train_params.hidden), "dropout": train_params.dropout}
    return {"width": train_params.width, "dropout": train_params.dropout}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
