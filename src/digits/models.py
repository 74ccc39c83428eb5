"""Model architectures. Every model takes float images in [0, 1], shape [N, 1, 28, 28], and returns logits.

Standardisation is the model's first layer (buffers in the state_dict), so a checkpoint or a logged MLflow
model is self-contained: callers never need to know the training statistics.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


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


def cnn(width: int, dropout: float, depth: int = 1, head: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU blocks with w, 2w and 4w channels at 28, 14 and 7 px, each stage ending in 2×2 max-pooling.

    ``depth`` conv layers in each of the 14 px and 7 px stages (the 28 px stage, on one input channel, has one);
    ``head`` > 0 adds a hidden dense layer of that size before the classifier.
    """
    w = width
    layers: list[nn.Module] = [*_conv_bn(1, w), nn.MaxPool2d(2)]
    for c_in, c_out in ((w, 2 * w), (2 * w, 4 * w)):
        layers += _conv_bn(c_in, c_out)
        for _ in range(depth - 1):
            layers += _conv_bn(c_out, c_out)
        layers.append(nn.MaxPool2d(2))
    features = 4 * w * 3 * 3
    if head:
        layers += [nn.Flatten(), nn.Linear(features, head), nn.ReLU(inplace=True)]
        features = head
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(features, 10))


def build(name: str, mean: float, std: float, **kwargs: Any) -> nn.Sequential:
    """Build a model by name. ``kwargs`` are that architecture's own settings."""
    if name == "mlp":
        body = mlp(kwargs["hidden"], kwargs["dropout"])
    elif name == "cnn":
        body = cnn(kwargs["width"], kwargs["dropout"], kwargs.get("depth", 1), kwargs.get("head", 0))
    else:
        raise ValueError(f"unknown model '{name}'; choose one of: mlp, cnn")
    return nn.Sequential(Standardize(mean, std), body)


def architecture_kwargs(name: str, train_params: Any) -> dict[str, Any]:
    """The subset of train params that defines the architecture (stored in checkpoints to rebuild it)."""
    if name == "mlp":
        return {"hidden": list(train_params.hidden), "dropout": train_params.dropout}
    p = train_params
    return {"width": p.width, "dropout": p.dropout, "depth": p.depth, "head": p.head}


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
