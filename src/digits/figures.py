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
    """``per_class`` examples of each digit, one row per digit (one image, as in ``_digit_grid``)."""
    blank = np.zeros(images.shape[1:], images.dtype)
    cells = []
    for digit in range(10):
        members = list(images[np.flatnonzero(labels == digit)[:per_class]])
        cells += members + [blank] * (per_class - len(members))
    h, w = images.shape[1:]
    fig = plt.figure(figsize=(per_class * 0.6, 10 * 0.6 + 0.4))
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    ax.imshow(_montage(cells, per_class, w // 7, h // 7), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
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


def _montage(images: list[np.ndarray], cols: int, gap: int, top: int) -> np.ndarray:
    """Equal-sized images tiled in rows of ``cols``, each scaled to [0, 1] by its own range (as ``imshow`` scales
    one image), ``gap`` blank pixels right of and ``top`` above each; NaN where no image is."""
    h, w = images[0].shape
    rows = -(-len(images) // cols)
    out = np.full((rows * (h + top), cols * (w + gap)), np.nan)
    for k, image in enumerate(images):
        image = np.asarray(image, dtype=float)
        span = image.max() - image.min()
        r, c = divmod(k, cols)
        out[r * (h + top) + top : (r + 1) * (h + top), c * (w + gap) : c * (w + gap) + w] = (
            (image - image.min()) / span if span else np.zeros_like(image))  # fmt: skip
    return out


def _digit_grid(images: list[np.ndarray], titles: list[str], suptitle: str, none: str, path: str | Path, cols: int,
                fontsize: int) -> None:  # fmt: skip
    """Digits in a grid of ``cols`` columns, each under its title; ``none`` alone where there are none. One image
    of all the digits, not an axes each: 36 axes took seconds to lay out and save on 2 CPU cores."""
    if not images:
        fig = plt.figure(figsize=(6, 1.2))
        fig.text(0.5, 0.5, none, ha="center", va="center", fontsize=12)
        save(fig, path)
        return
    h, w = images[0].shape
    gap, top = w // 4, round(h * 0.6)  # room between the digits and for two lines of title above each
    montage = _montage(images, cols, gap, top)
    width = cols * 1.3  # inches; the height follows the montage, plus 0.6 for the title
    fig = plt.figure(figsize=(width, width * montage.shape[0] / montage.shape[1] + 0.6))
    ax = fig.add_axes((0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    ax.imshow(montage, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for k, title in enumerate(titles):
        r, c = divmod(k, cols)
        ax.text(c * (w + gap) + w / 2, r * (h + top) + top - 1, title, ha="center", va="bottom", fontsize=fontsize)
    fig.suptitle(suptitle, fontsize=10)
    save(fig, path)


def misclassified(images: np.ndarray, errors: list[dict], path: str | Path, cols: int = 9) -> None:
    """A grid of misclassified digits (``errors`` as from ``metrics.ranked_errors``, shown in that order)."""
    _digit_grid([images[e["index"]] for e in errors],
                [f"{e['actual']} → {e['predicted']}\n{e['p_predicted']:.2f} vs {e['p_actual']:.2f}" for e in errors],
                "Misclassified test digits, most confidently wrong first\n(true → predicted; p(predicted) vs p(true))",
                "No misclassified test digits", path, cols, 8)  # fmt: skip


def font_errors(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, family: np.ndarray,
                families: list[str], path: str | Path, shown: int = 36, cols: int = 9) -> None:  # fmt: skip
    """A grid of the font digits (fonts.load) the model gets wrong, true → predicted and font family: up to
    ``shown``, the families with errors in turn (``family`` indexes ``families``)."""
    labels, predicted, family = np.asarray(labels), np.asarray(predicted), np.asarray(family)
    wrong = np.flatnonzero(labels != predicted)
    rank = np.zeros(len(wrong), int)  # each error's place among its family's errors
    for f in np.unique(family[wrong]):
        rank[family[wrong] == f] = np.arange(np.count_nonzero(family[wrong] == f))
    picked = wrong[np.lexsort((family[wrong], rank))][:shown]
    _digit_grid([images[i] for i in picked], [f"{labels[i]} → {predicted[i]}\n{families[family[i]]}" for i in picked],
                f"Font digits the model gets wrong: {len(wrong)} of {len(labels)}, the families in turn\n"
                "(true → predicted; font family)", f"No misclassified font digits (of {len(labels)})", path, cols, 7)


def prediction_samples(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, indices: list[int],
                       path: str | Path, cols: int = 2) -> None:  # fmt: skip
    """Sampled test digits next to their predicted class probabilities (true class green, a wrong pick red)."""
    rows = -(-len(indices) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(5.2 * cols, 1.25 * rows + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6] * cols, "hspace": 0.6, "wspace": 0.15,
                                          "top": 1 - 0.55 / (1.25 * rows + 0.4)})  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(indices):
        ax_img, ax_bar = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        ax_img.imshow(images[i], cmap="gray_r")
        pred = int(probs[i].argmax())
        colors = ["tab:green" if d == labels[i] else "tab:red" if d == pred else "0.6" for d in range(10)]
        ax_bar.axis("on")
        ax_bar.bar(range(10), probs[i], color=colors)
        ax_bar.set(ylim=(0, 1.05), xticks=range(10), yticks=[0, 0.5, 1])
        ax_bar.tick_params(labelsize=7)
        ax_bar.set_title(f"#{i}: true {labels[i]}, predicted {pred} ({probs[i, pred]:.3f})", fontsize=8)
    fig.suptitle("Sample of test predictions: class probabilities (true class green, wrong prediction red)",
                 fontsize=10)  # fmt: skip
    save(fig, path)


def reliability_diagram(bins: list[dict], ece: float, path: str | Path) -> None:
    """Accuracy against mean confidence per confidence bin, with the sample count of each bin below."""
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["count"]]
    width = bins[0]["bin_upper"] - bins[0]["bin_lower"]
    centers = [(b["bin_lower"] + b["bin_upper"]) / 2 for b in full]
    ax.bar(centers, [b["accuracy"] for b in full], width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    ax.hlines([b["confidence"] for b in full], [c - width * 0.475 for c in centers],
              [c + width * 0.475 for c in centers], color="tab:red", lw=2.5, label="mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram (ECE {ece:.4f}, {len(bins)} bins)")
    ax.legend(loc="upper left")
    ax_n.bar(centers, [b["count"] for b in full], width * 0.95, color="0.5")
    ax_n.set(yscale="log", xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="samples")
    save(fig, path)


def robustness(rows: list[dict], examples: list[tuple[str, np.ndarray]], path: str | Path,
               title: str = "Robustness: test accuracy under perturbations (dashed: clean)",
               legend: bool = False) -> None:  # fmt: skip
    """Accuracy under each perturbation (bars, coloured by ``family``; the first row is clean) and one test digit
    under each (top row)."""
    n = len(examples)
    fig = plt.figure(figsize=(max(9.0, 0.8 * n), 7.5))
    grid = fig.add_gridspec(2, n, height_ratios=[1, 6], hspace=0.12)
    for k, (name, image) in enumerate(examples):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name.replace(" ", "\n", 1), fontsize=7)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    names = [r["condition"] for r in rows][::-1]
    acc = [r["accuracy"] for r in rows][::-1]
    families = sorted({r["family"] for r in rows}, key=[r["family"] for r in rows].index)
    color = {f: plt.get_cmap("tab10")(i) for i, f in enumerate(families)}
    ax.barh(names, acc, color=[color[r["family"]] for r in rows][::-1])
    low = min(acc)
    ax.set_xlim(max(0.0, low - (1 - low) * 0.15 - 0.01), 1.0)
    for y, a in enumerate(acc):
        ax.text(a, y, f" {a:.2%}", va="center", ha="left" if a < 0.97 else "right", fontsize=8,
                color="black" if a < 0.97 else "white")  # fmt: skip
    ax.axvline(rows[0]["accuracy"], color="k", ls="--", lw=1)
    ax.set(xlabel="test accuracy", title=title)
    if legend:
        ax.legend([plt.Rectangle((0, 0), 1, 1, color=color[f]) for f in families], families, loc="upper center",
                  bbox_to_anchor=(0.5, -0.09), ncol=len(families), frameon=False, fontsize=8)  # fmt: skip
    save(fig, path)


def corruptions(clean: float, rows: list[dict], examples: list[tuple[str, np.ndarray]], resembled: set[str],
                path: str | Path) -> None:  # fmt: skip
    """The MNIST-C-style corruptions (``digits.corruptions``): accuracy under each, coloured by whether a training
    augmentation resembles it (``resembled``), and one test digit under each."""
    bars = [{"condition": "clean", "family": "clean", "accuracy": clean}] + [
        {"condition": r["corruption"].replace("_", " "), "accuracy": r["accuracy"],
         "family": "like a training augmentation" if r["corruption"] in resembled else "like no augmentation"}
        for r in rows
    ]  # fmt: skip
    images = [(name.replace("_", " "), image) for name, image in examples]
    robustness(bars, images, path, "MNIST-C-style corruptions: test accuracy (dashed: clean)", legend=True)
