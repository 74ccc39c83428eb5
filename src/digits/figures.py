"""Figures as PNG files (matplotlib, headless), written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from digits import files  # noqa: E402


def save(fig: plt.Figure, path: str | Path) -> None:
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def class_distribution(counts: dict[str, list[int]], path: str | Path) -> None:
    """Grouped bars: samples per digit for each split."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(counts)
    for i, (split, c) in enumerate(counts.items()):
        ax.bar(np.arange(10) + i * width, c, width, label=f"{split} ({sum(c)})")
    ax.set(
        xticks=np.arange(10) + 0.4 - width / 2,
        xticklabels=range(10),
        xlabel="digit",
        ylabel="samples",
        title="Class distribution",
    )
    ax.set_ylim(0, max(max(c) for c in counts.values()) * 1.25)  # headroom so the legend hides no bar
    ax.legend(loc="upper center", ncol=len(counts))
    save(fig, path)


def sample_grid(images: np.ndarray, labels: np.ndarray, path: str | Path, per_class: int = 10) -> None:
    """``per_class`` examples of each digit, one row per digit."""
    fig, axes = plt.subplots(10, per_class, figsize=(per_class * 0.6, 10 * 0.6))
    for digit in range(10):
        members = np.flatnonzero(labels == digit)[:per_class]
        for j, ax in enumerate(axes[digit]):
            ax.axis("off")
            if j < len(members):
                ax.imshow(images[members[j]], cmap="gray_r")
    fig.suptitle("Training samples, one row per digit")
    save(fig, path)


def training_curves(rows: list[dict[str, float]], path: str | Path) -> None:
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.5))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in rows], marker="o", label=split)
    ax_lr.plot(epochs, [r["lr"] for r in rows], marker="o")
    ax_loss.set(title="Loss (train: augmented, label-smoothed)", xlabel="epoch")
    ax_acc.set(title="Accuracy", xlabel="epoch")
    ax_lr.set(title="Learning rate (start of epoch)", xlabel="epoch")
    ax_loss.legend()
    ax_acc.legend()
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(fig, path)


def confusion_matrix(cm: np.ndarray, path: str | Path) -> None:
    """Counts (left) and row-normalised rates (right); rows are the actual digit."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for ax, mat, title, fmt in ((axes[0], cm, "Counts", "d"), (axes[1], norm, "Row-normalised", ".3f")):
        ax.imshow(np.log1p(mat * (1 if fmt == "d" else 1000)), cmap="Blues")
        for i in range(10):
            for j in range(10):
                value = mat[i, j]
                if value:
                    ax.text(
                        j,
                        i,
                        format(value, fmt).lstrip("0") if fmt != "d" else value,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if i == j else "black",
                    )
        ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="actual", title=title)
    save(fig, path)
