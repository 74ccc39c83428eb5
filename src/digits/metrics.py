"""Classification metrics from labels and logits (scikit-learn for the per-class report)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix


def classification(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Headline numbers (loss, accuracy, macro/weighted P/R/F1) and, under ``per_class``, P/R/F1/support by digit."""
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    report = classification_report(y, pred, labels=list(range(10)), output_dict=True, zero_division=0)
    return {
        "test_loss": F.cross_entropy(logits, labels).item(),
        "test_accuracy": float((pred == y).mean()),
        "test_errors": int((pred != y).sum()),
        "macro_avg": {k: report["macro avg"][k] for k in ("precision", "recall", "f1-score")},
        "weighted_avg": {k: report["weighted avg"][k] for k in ("precision", "recall", "f1-score")},
        "per_class": {
            str(c): {k: report[str(c)][k] for k in ("precision", "recall", "f1-score", "support")} for c in range(10)
        },
    }


def confusion(labels: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """10×10 counts, rows = actual digit, columns = predicted."""
    return confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(10)))
