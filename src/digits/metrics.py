"""Classification metrics from labels and logits (scikit-learn for the per-class report)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix


def classification(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Headline numbers (loss, accuracy, top-2 accuracy, macro/weighted P/R/F1) and, under ``per_class``,
    accuracy (= recall)/P/R/F1/support by digit."""
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    report = classification_report(y, pred, labels=list(range(10)), output_dict=True, zero_division=0)
    accuracy = per_class_accuracy(confusion_matrix(y, pred, labels=list(range(10))))
    return {
        "test_loss": F.cross_entropy(logits, labels).item(),
        "test_accuracy": float((pred == y).mean()),
        "test_top2_accuracy": topk_accuracy(logits, labels, 2),
        "test_errors": int((pred != y).sum()),
        "macro_avg": {k: report["macro avg"][k] for k in ("precision", "recall", "f1-score")},
        "weighted_avg": {k: report["weighted avg"][k] for k in ("precision", "recall", "f1-score")},
        "per_class": {
            str(c): {
                "accuracy": accuracy[c],
                **{k: report[str(c)][k] for k in ("precision", "recall", "f1-score", "support")},
            }
            for c in range(10)
        },
    }


def confusion(labels: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
    """10×10 counts, rows = actual digit, columns = predicted."""
    return confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(10)))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest logits."""
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean().item()


def per_class_accuracy(cm: np.ndarray) -> list[float]:
    """Share of each actual digit classified correctly (the recall of that class); 0 for an absent class."""
    return (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()


def most_confused(cm: np.ndarray, n: int) -> list[dict[str, int]]:
    """The ``n`` largest off-diagonal cells (actual, predicted, count), ties broken by (actual, predicted)."""
    cells = [(-int(cm[a, p]), a, p) for a in range(len(cm)) for p in range(len(cm)) if a != p and cm[a, p]]
    return [{"actual": a, "predicted": p, "count": -c} for c, a, p in sorted(cells)[:n]]


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the per-bin table.

    Confidence is the top-class probability; a sample with confidence c falls in bin ⌈c·bins⌉ − 1 (bins are
    (lo, hi]). ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|. Empty bins have count 0 and no rates.
    """
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    index = (conf.double() * bins).ceil().long().clamp(1, bins) - 1
    rows, ece = [], 0.0
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        row = {"bin_lower": b / bins, "bin_upper": (b + 1) / bins, "count": count,
               "confidence": None, "accuracy": None}  # fmt: skip
        if count:
            row["confidence"] = conf[member].double().mean().item()
            row["accuracy"] = correct[member].mean().item()
            ece += count / len(labels) * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return ece, rows


def ranked_errors(probs: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    """Misclassified samples, most confidently wrong first: by confidence gap = p(predicted) − p(true),
    ties by index. Each entry: index, actual, predicted, p_predicted, p_actual, gap."""
    pred = probs.argmax(1)
    wrong = torch.nonzero(pred != labels).flatten().tolist()
    entries = []
    for i in wrong:
        p_pred, p_true = probs[i, pred[i]].item(), probs[i, labels[i]].item()
        entries.append({"index": i, "actual": int(labels[i]), "predicted": int(pred[i]),
                        "p_predicted": p_pred, "p_actual": p_true, "gap": p_pred - p_true})  # fmt: skip
    return sorted(entries, key=lambda e: (-e["gap"], e["index"]))
