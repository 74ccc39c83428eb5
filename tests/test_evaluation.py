"""The evaluate/report library on hand-built cases: metrics with known answers, robustness transforms,
the save/load check, figures and the report renderers."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from digits import corruptions, figures, metrics, reload, reporting, robustness
from digits.reporting import Figure, Section, Table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def probs_from(tops: list[tuple[int, float]]) -> torch.Tensor:
    """One row per (class, p): p on that class, the rest spread evenly over the other nine."""
    rows = torch.empty(len(tops), 10, dtype=torch.float64)
    for i, (c, p) in enumerate(tops):
        rows[i] = (1 - p) / 9
        rows[i, c] = p
    return rows


# A: confident and right, B: confident and wrong, C: unsure and right, D: unsure and wrong
PROBS = probs_from([(0, 0.95), (1, 0.95), (2, 0.55), (3, 0.35)])
LABELS = torch.tensor([0, 0, 2, 4])


def test_calibration_by_hand():
    ece, bins = metrics.calibration(PROBS, LABELS, bins=10)
    # bin (0.9, 1]: A and B, accuracy 1/2, confidence 0.95; (0.5, 0.6]: C, 1 vs 0.55; (0.3, 0.4]: D, 0 vs 0.35
    assert ece == pytest.approx(2 / 4 * 0.45 + 1 / 4 * 0.45 + 1 / 4 * 0.35)
    assert [b["count"] for b in bins] == [0, 0, 0, 1, 0, 1, 0, 0, 0, 2]
    assert bins[9] == pytest.approx({"bin_lower": 0.9, "bin_upper": 1.0, "count": 2, "confidence": 0.95,
                                     "accuracy": 0.5})  # fmt: skip
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None


def test_calibration_of_a_perfectly_calibrated_set_is_zero_and_confidence_one_lands_in_the_last_bin():
    probs = probs_from([(0, 1.0)] * 3 + [(1, 0.75)] * 4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # 3 of the 4 at 0.75 are right
    ece, bins = metrics.calibration(probs, labels, bins=4)
    assert ece == pytest.approx(0.0)
    assert [b["count"] for b in bins] == [0, 0, 4, 3]


def test_ranked_errors_by_confidence_gap_ties_by_index():
    probs = probs_from([(0, 0.95), (1, 0.95), (2, 0.55), (3, 0.35), (1, 0.95)])
    labels = torch.tensor([0, 0, 2, 4, 0])
    errors = metrics.ranked_errors(probs, labels)
    assert [e["index"] for e in errors] == [1, 4, 3]  # B and its copy (gap 0.95 - 0.05/9), then D
    assert errors[0] == pytest.approx({"index": 1, "actual": 0, "predicted": 1, "p_predicted": 0.95,
                                       "p_actual": 0.05 / 9, "gap": 0.95 - 0.05 / 9})  # fmt: skip
    assert errors[2]["gap"] == pytest.approx(0.35 - 0.65 / 9)
    assert metrics.ranked_errors(PROBS[:1], LABELS[:1]) == []


def test_confusion_matrix_and_most_confused_pairs():
    actual = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    pred = torch.tensor([0, 1, 1, 1, 0, 3, 3, 2, 2, 3])
    cm = metrics.confusion(actual, pred)
    assert cm.shape == (10, 10) and cm.sum() == 10
    assert cm[0].tolist()[:4] == [1, 2, 0, 0] and cm[2].tolist()[:4] == [0, 0, 1, 2]
    assert metrics.most_confused(cm, 3) == [
        {"actual": 0, "predicted": 1, "count": 2},
        {"actual": 2, "predicted": 3, "count": 2},
        {"actual": 1, "predicted": 0, "count": 1},  # ties in count: by (actual, predicted)
    ]
    assert len(metrics.most_confused(cm, 10)) == 4  # only non-zero off-diagonal cells
    assert metrics.per_class_accuracy(cm)[:5] == [1 / 3, 1 / 2, 1 / 3, 1 / 2, 0.0]


def test_top2_accuracy_and_per_class_accuracy_in_the_classification_report():
    logits = torch.log(PROBS)
    assert metrics.topk_accuracy(logits, LABELS, 1) == 0.5
    # top-2 of B holds class 0? no: B's other classes tie at 0.05/9, topk picks the lowest index (0) → right
    assert metrics.topk_accuracy(logits, torch.tensor([0, 0, 2, 4]), 10) == 1.0
    m = metrics.classification(logits, LABELS)
    assert m["test_top2_accuracy"] == metrics.topk_accuracy(logits, LABELS, 2)
    assert m["per_class"]["0"]["accuracy"] == 0.5 and m["per_class"]["4"]["accuracy"] == 0.0


# --------------------------------------------------------------------------- robustness
def digit_like(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Blobs well inside the frame: perturbations do not push ink out of the image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 9:19, 11:17] = torch.rand(n, 1, 10, 6, generator=g) * 0.5 + 0.5
    return x


@pytest.mark.parametrize("condition", robustness.CONDITIONS, ids=lambda c: c.key)
def test_every_transform_is_deterministic_for_a_seed(condition):
    x = digit_like()
    a, b = robustness.perturb(x, condition, seed=3), robustness.perturb(x, condition, seed=3)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    if condition.family in ("shift", "noise", "elastic"):  # the random ones change with the seed
        assert not torch.equal(a, robustness.perturb(x, condition, seed=4))


def test_rotation_by_90_degrees_is_a_counter_clockwise_quarter_turn():
    x = digit_like()
    turned = robustness.perturb(x, robustness.Condition("r", "rotation", 90), seed=0)
    assert torch.allclose(turned, torch.from_numpy(np.rot90(x.numpy(), 1, axes=(2, 3)).copy()), atol=1e-5)


def centroid(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    mass = x.sum((1, 2, 3))
    return torch.stack([(x[:, 0] * xs).sum((1, 2)) / mass, (x[:, 0] * ys).sum((1, 2)) / mass], 1)


@pytest.mark.parametrize("pixels", [2, 4])
def test_shift_moves_each_image_by_that_many_pixels(pixels):
    x = digit_like()
    moved = robustness.perturb(x, robustness.Condition("s", "shift", pixels), seed=0)
    distance = (centroid(moved) - centroid(x)).norm(dim=1)
    assert torch.allclose(distance, torch.full_like(distance, pixels), atol=0.05)


def test_noise_has_the_requested_sigma_and_blur_keeps_the_ink():
    gray = torch.full((4, 1, 28, 28), 0.5)
    noisy = robustness.perturb(gray, robustness.Condition("n", "noise", 0.1), seed=0)
    assert (noisy - gray).std().item() == pytest.approx(0.1, rel=0.05)
    x = digit_like()
    blurred = robustness.perturb(x, robustness.Condition("b", "blur", 1.0), seed=0)
    assert blurred.sum().item() == pytest.approx(x.sum().item(), rel=1e-5)  # ink spread, none lost
    assert blurred.max() < x.max()
    assert robustness.gaussian_kernel(1.5).sum().item() == pytest.approx(1.0)
    # the matrix form is the zero-padded separable convolution with the kernel
    k = robustness.gaussian_kernel(1.0).float()
    conv = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, len(k) // 2))
    conv = torch.nn.functional.conv2d(conv, k.view(1, 1, -1, 1), padding=(len(k) // 2, 0))
    assert torch.allclose(blurred, conv, atol=1e-6)
    assert len(robustness.gaussian_kernel(1.5)) == 2 * 5 + 1


def test_evaluate_reports_clean_then_every_condition():
    x, y = digit_like(8), torch.arange(8) % 2

    def predict(images: torch.Tensor) -> torch.Tensor:  # "is there ink in the top half?"
        return (images[:, 0, :14].sum((1, 2)) > images[:, 0, 14:].sum((1, 2))).long()

    rows = robustness.evaluate(predict, x, y, seed=0)
    assert [r["condition"] for r in rows] == ["clean"] + [c.name for c in robustness.CONDITIONS]
    assert rows[0]["accuracy"] == (predict(x) == y).double().mean().item()
    assert rows == robustness.evaluate(predict, x, y, seed=0)
    assert len(robustness.examples(x[0], seed=0)) == len(rows)


# --------------------------------------------------------------------------- save/load check
def test_save_load_check_passes_identical_and_fails_on_changed_predictions():
    ref = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    ok = reload.check(ref, {"checkpoint": ref.clone(), "mlflow": ref + 1e-6})
    assert ok["save_load_identical"] is True
    assert ok["save_load_max_abs_logit_diff_checkpoint"] == 0.0
    with pytest.raises(reload.SaveLoadError, match="mlflow: 1 predictions differ"):
        reload.check(ref, {"checkpoint": ref, "mlflow": torch.tensor([[1.0, 2.0], [0.0, 3.0]])})
    with pytest.raises(reload.SaveLoadError, match=r"checkpoint: 0 predictions differ, max \|Δlogit\| 0.5$"):
        reload.check(ref, {"checkpoint": ref + 0.5})
    big = ref * 1e4  # tolerance is relative too: float rounding grows with the logits
    assert reload.check(big, {"checkpoint": big * (1 + 1e-6)})["save_load_identical"] is True


# --------------------------------------------------------------------------- figures
def test_every_evaluate_figure_is_a_valid_png(tmp_path: Path):
    images = (digit_like(12)[:, 0] * 255).to(torch.uint8).numpy()
    labels = np.arange(12) % 10
    probs = probs_from([(int(c + (i % 3 == 0)) % 10, 0.9) for i, c in enumerate(labels)])  # every third wrong
    errors = metrics.ranked_errors(probs, torch.from_numpy(labels))
    ece, bins = metrics.calibration(probs, torch.from_numpy(labels), 15)
    rows = robustness.evaluate(lambda b: torch.zeros(len(b), dtype=torch.long), digit_like(12), torch.zeros(12), 0)
    examples = [(n, im.numpy()) for n, im in robustness.examples(digit_like(1)[0], 0)]
    figures.misclassified(images, errors, tmp_path / "misclassified.png")
    figures.misclassified(images, [], tmp_path / "none_wrong.png")
    figures.prediction_samples(images, labels, probs.numpy(), [0, 1, 2, 5], tmp_path / "predictions.png")
    figures.reliability_diagram(bins, ece, tmp_path / "reliability.png")
    figures.robustness(rows, examples, tmp_path / "robustness.png")
    corrupted = [{"corruption": name, "accuracy": 0.9} for name in corruptions.CORRUPTIONS]
    corrupted_examples = [(n, im.numpy()) for n, im in corruptions.examples(digit_like(1)[0], 0)]
    figures.corruptions(0.99, corrupted, corrupted_examples, set(corruptions.COUNTERPARTS), tmp_path / "corr.png")
    figures.confusion_matrix(metrics.confusion(torch.from_numpy(labels), probs.argmax(1)), tmp_path / "cm.png")
    written = sorted(tmp_path.glob("*.png"))
    assert len(written) == 7
    for path in written:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        min_width, min_height = (200, 30) if path.name == "none_wrong.png" else (300, 200)  # one line of text
        assert width > min_width and height > min_height, (path, width, height)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_digit_montage_places_each_image_in_its_cell_scaled_by_its_own_range():
    a = np.full((4, 3), 10, np.uint8)
    a[0, 0] = 30  # range 10..30
    b = np.arange(12, dtype=float).reshape(4, 3)  # range 0..11
    flat = np.full((4, 3), 7.0)  # no range: drawn as background
    out = figures._montage([a, b, flat], cols=2, gap=1, top=2)
    assert out.shape == (2 * (4 + 2), 2 * (3 + 1))
    assert np.allclose(out[2:6, 0:3], (a - 10) / 20) and np.allclose(out[2:6, 4:7], b / 11)
    assert np.all(out[8:12, 0:3] == 0)
    cells = np.zeros(out.shape, bool)
    cells[2:6, 0:3] = cells[2:6, 4:7] = cells[8:12, 0:3] = True
    assert np.isnan(out[~cells]).all()  # gaps, title rows and the empty fourth cell


# --------------------------------------------------------------------------- report rendering
def test_markdown_and_html_render_the_same_document(tmp_path: Path):
    png = tmp_path / "figures" / "a_figure.png"
    figures.reliability_diagram(metrics.calibration(PROBS, LABELS, 5)[1], 0.1, png)
    doc = [Section("Numbers", ["Some `code` and **bold** <b>", Table(["k", "v|x"], [["a", 1], ["b|c", "2"]])]),
           Section("Pictures", [Figure("a figure", png)])]  # fmt: skip
    md = reporting.markdown("Title", doc, tmp_path / "reports" / "report.md")
    assert md.startswith("# Title\n\n## Numbers\n\nSome `code` and **bold** <b>")
    assert "| k | v\\|x |\n|---|---|\n| a | 1 |\n| b\\|c | 2 |" in md
    assert "![a figure](../figures/a_figure.png)" in md
    page = reporting.html_page("Title", doc)
    assert "<p>Some <code>code</code> and <strong>bold</strong> &lt;b&gt;</p>" in page
    assert "<th>v|x</th>" in page and "<td>b|c</td>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # embedded: the base64 of the PNG magic
    assert page.count("<img ") == 1 and "a_figure.png" not in page


def test_comparison_with_a_baseline_and_missing_keys():
    now = {"evaluate": {"test_accuracy": 0.9959, "test_errors": 41, "test_loss": 0.06, "test_ece": 0.01},
           "train": {"train_seconds": 200.0, "n_parameters": 98554}}  # fmt: skip
    before = {"evaluate": {"test_accuracy": 0.9957, "test_errors": 43, "test_loss": 0.07}, "train": None}
    rows = {r[0]: r[1:] for r in reporting.comparison(now, before).rows}
    assert rows["test accuracy"] == ["99.57%", "99.59%", "+0.02 pp"]
    assert rows["test errors"] == ["43", "41", "-2"]
    assert rows["test loss"] == ["0.0700", "0.0600", "-0.0100"]
    assert rows["expected calibration error"] == ["—", "0.0100", "—"]  # not in the baseline's metrics
    assert rows["training time (s)"] == ["—", "200.0", "—"]


def test_committed_json_reads_the_baseline_from_git(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    assert reporting.committed_json("HEAD", Path("metrics/evaluate.json")) is None  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics" / "evaluate.json").write_text('{"test_accuracy": 0.5}')
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], check=True)
    (tmp_path / "metrics" / "evaluate.json").write_text('{"test_accuracy": 0.75}')  # the new, uncommitted run
    assert reporting.committed_json("HEAD", Path("metrics/evaluate.json")) == {"test_accuracy": 0.5}
    assert reporting.committed_json("HEAD", Path("metrics/train.json")) is None
    assert reporting.committed_json("no-such-rev", Path("metrics/evaluate.json")) is None


def test_historical_results_cite_their_sources():
    assert [a for _, a, _ in reporting.HISTORICAL] == [0.88, 0.953, 0.9965, 0.9977]
    assert all(src and ("LeCun" in src or "Cireșan" in src) for _, _, src in reporting.HISTORICAL)
    assert math.isclose(1 - reporting.HISTORICAL[-1][1], 0.0023)
