"""What the train stage logs to MLflow through ``digits.tracking``: flattened params and the PyTorch model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from helpers import store_uri

from digits import models, tracking


def test_flat_params_uses_dotted_keys() -> None:
    nested = {"lr": 0.01, "augment": {"zoom": 0.1, "shift": {"x": 1}}, "zoo": {}}
    assert tracking.flat_params(nested) == {"lr": 0.01, "augment.zoom": 0.1, "augment.shift.x": 1}


def test_log_model_round_trips_with_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(store_uri(tmp_path))
    try:
        torch.manual_seed(0)
        model = models.build("cnn", 0.1, 0.3, width=8, dropout=0.0).eval()
        example = torch.rand(4, 1, 28, 28)
        with mlflow.start_run() as run:
            tracking.log_model(model, example)
        loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        with torch.inference_mode():
            torch.testing.assert_close(loaded(example), model(example))
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
        assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 28, 28)
        assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 10)
    finally:
        mlflow.set_tracking_uri(None)
