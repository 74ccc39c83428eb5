"""Save/load check: the model reloaded from its MLflow model URI and from the checkpoint predicts exactly as
the in-memory model does."""

from __future__ import annotations

import mlflow
import torch
from torch import nn

from digits.errors import UserError


class SaveLoadError(UserError, RuntimeError):
    """A reloaded model predicts differently from the in-memory one."""


def logged_model(run_id: str) -> nn.Module:
    """The model the train stage logged to MLflow run ``run_id`` (``runs:/<id>/model``), on the CPU."""
    uri = f"runs:/{run_id}/model"
    try:
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    except mlflow.exceptions.MlflowException as exc:
        raise SaveLoadError(f"cannot load the logged model {uri}: {exc}") from None


def check(
    reference: torch.Tensor, reloaded: dict[str, torch.Tensor], rtol: float = 1e-4, atol: float = 1e-4
) -> dict[str, object]:
    """Compare logits of reloaded models with ``reference`` (the in-memory model's, same inputs).

    Predicted classes must be identical and every logit within ``atol + rtol·|reference|`` (the in-memory model
    has BatchNorm folded into its convolutions, which changes float rounding); raises SaveLoadError otherwise.
    Returns ``save_load_identical`` and the largest absolute logit difference per source.
    """
    result: dict[str, object] = {"save_load_identical": True}
    problems = []
    for name, logits in reloaded.items():
        diff = (logits.float() - reference.float()).abs()
        result[f"save_load_max_abs_logit_diff_{name}"] = diff.max().item()
        changed = int((logits.argmax(1) != reference.argmax(1)).sum())
        if changed or not bool((diff <= atol + rtol * reference.float().abs()).all()):
            problems.append(f"{name}: {changed} predictions differ, max |Δlogit| {diff.max().item():.3g}")
    if problems:
        raise SaveLoadError("reloaded model predicts differently from the in-memory model: " + "; ".join(problems))
    return result


@torch.inference_mode()
def logged_model_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Batched logits of a model loaded by ``logged_model`` (an exported graph, always in eval mode: it has no
    ``eval()``) on the CPU."""
    x = x.cpu()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float()
