"""The served model: an ``mlflow.pyfunc`` wrapper around a train-stage checkpoint, with strict input checks.

Input: a batch of 28×28 greyscale images (white digit on black, as in MNIST) shaped ``[N, 28, 28]``,
``[N, 1, 28, 28]`` or ``[N, 784]``. Integer arrays are pixel values 0–255. Float arrays: an image whose values all
lie in [0, 1] is taken as intensities in [0, 1]; an image with any value above 1 as pixel values 0–255 (so
uint8 images sent as JSON numbers work either way). Anything else — NaN/inf, values outside those ranges, other
shapes, an empty or oversize batch, non-numeric data — raises an ``MlflowException`` with
``INVALID_PARAMETER_VALUE``, which the MLflow scoring server answers with HTTP 400 and the message.

Output: a DataFrame with one row per image: ``class`` (0–9) and ``prob_0`` … ``prob_9`` (softmax probabilities).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from digits import training

MAX_BATCH = 4096  # images per request; more is refused rather than risking the server's memory
COLUMNS = ["class", *(f"prob_{d}" for d in range(10))]
SHAPES = "[N, 28, 28], [N, 1, 28, 28] or [N, 784]"


def invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def to_images(data: Any) -> np.ndarray:
    """Validate a batch and return it as float32 ``[N, 1, 28, 28]`` in [0, 1] (see the module docstring)."""
    if isinstance(data, pd.DataFrame):
        data = data.to_numpy()
    elif isinstance(data, dict):
        raise invalid(f"expected one array of images, got named inputs {sorted(map(str, data))[:5]}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise invalid(f"images must be a rectangular numeric array ({exc})") from None
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (ValueError, TypeError):
            raise invalid("images must be numeric; got non-numeric values") from None
    if arr.dtype.kind not in "iuf":
        raise invalid(f"images must be numeric (integers 0-255 or floats); got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise invalid(f"expected a batch of images shaped {SHAPES}; got a single number")
    if arr.shape[0] == 0:
        raise invalid(f"empty batch: send at least one image shaped {SHAPES}")
    if arr.shape[1:] not in ((28, 28), (1, 28, 28), (784,)):
        raise invalid(f"images must be shaped {SHAPES}; got {list(arr.shape)}")
    if len(arr) > MAX_BATCH:
        raise invalid(f"batch of {len(arr)} images exceeds the limit of {MAX_BATCH}; split it")
    arr = arr.reshape(len(arr), 1, 28, 28)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).argmax())
            raise invalid(f"image {bad} contains NaN or infinite values")
        out = arr.astype(np.float32)
        peak = out.reshape(len(out), -1).max(1)
        out[peak > 1] /= 255.0
    else:
        out = arr.astype(np.float32) / 255.0
    if out.min() < 0 or out.max() > 1:
        low = out.reshape(len(out), -1)
        bad = int(((low < 0) | (low > 1)).any(1).argmax())
        raise invalid(f"image {bad} has values outside 0-255 (integers) or [0, 1] / [0, 255] (floats)")
    return out


def probabilities_frame(logits: torch.Tensor) -> pd.DataFrame:
    probs = torch.softmax(logits.float(), 1).numpy()
    frame = pd.DataFrame(probs, columns=COLUMNS[1:])
    frame.insert(0, "class", probs.argmax(1).astype(np.int64))
    return frame


class DigitsModel(mlflow.pyfunc.PythonModel):
    """Classifies image batches with the network of the ``checkpoint`` artifact (a ``models/model.pt``)."""

    def load_context(self, context) -> None:
        self.network, _ = training.load_checkpoint(context.artifacts["checkpoint"], "cpu")

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``model_input``: see the module docstring (np.ndarray as the hint tells MLflow not to convert it)."""
        images = torch.from_numpy(to_images(model_input))
        return probabilities_frame(training.predict_logits(self.network, images))


def signature() -> ModelSignature:
    """Output schema only: the input takes three layouts and two scales, which one tensor spec cannot express,
    so it is checked by ``to_images`` (clearer messages than MLflow's schema enforcement)."""
    outputs = Schema([ColSpec("long", "class"), *(ColSpec("float", c) for c in COLUMNS[1:])])
    return ModelSignature(inputs=None, outputs=outputs)


def log_model(checkpoint: str | Path, input_example: np.ndarray, name: str = "pyfunc_model"):
    """Log the pyfunc model into the active run (the ``digits`` package shipped with it); returns ModelInfo.
    The model is logged from code (``served_model.py``), not as a pickled object."""
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("served_model.py")),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(__file__).parent)],
        signature=signature(),
        input_example=input_example,
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
