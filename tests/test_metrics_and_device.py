"""digits.metrics on hand-computed cases, and digits.device on this (CPU-only) machine and on fabricated CPU flags."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from digits import device, metrics

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()

# Four samples, labels [0, 0, 1, 2], predictions [0, 1, 1, 1].
# Each logit row is ln(91) at the predicted class and 0 elsewhere, so softmax gives the predicted class
# 91/100 and every other class 1/100: the loss of a correct sample is -ln(0.91), of a wrong one ln(100).
LABELS = torch.tensor([0, 0, 1, 2])
PRED = torch.tensor([0, 1, 1, 1])


def one_hot_logits(pred: torch.Tensor) -> torch.Tensor:
    logits = torch.zeros(len(pred), 10, dtype=torch.float64)
    logits[torch.arange(len(pred)), pred] = math.log(91)
    return logits


def test_classification_by_hand() -> None:
    m = metrics.classification(one_hot_logits(PRED), LABELS)
    assert m["test_accuracy"] == 0.5
    assert m["test_errors"] == 2
    assert m["test_loss"] == pytest.approx((2 * -math.log(0.91) + 2 * math.log(100)) / 4)

    pc = m["per_class"]
    assert set(pc) == {str(c) for c in range(10)}
    # class 0: predicted once (correctly), 2 actual → P = 1, R = 1/2
    assert pc["0"]["precision"] == pytest.approx(1.0)
    assert pc["0"]["recall"] == pytest.approx(0.5)
    assert pc["0"]["f1-score"] == pytest.approx(2 / 3)
    assert pc["0"]["support"] == 2
    assert pc["0"]["accuracy"] == pytest.approx(0.5)  # per-class accuracy is the class's recall
    # class 1: predicted 3 times, 1 correct; 1 actual → P = 1/3, R = 1
    assert pc["1"]["precision"] == pytest.approx(1 / 3)
    assert pc["1"]["recall"] == pytest.approx(1.0)
    assert pc["1"]["f1-score"] == pytest.approx(0.5)
    assert pc["1"]["support"] == 1
    # class 2: never predicted → P = 0 (zero_division), 1 actual, missed → R = 0
    assert pc["2"]["precision"] == 0.0
    assert pc["2"]["recall"] == 0.0
    assert pc["2"]["support"] == 1
    for c in range(3, 10):
        assert pc[str(c)] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}

    # weighted by support (2, 1, 1): P = (2·1 + 1/3 + 0)/4, R = (2·½ + 1 + 0)/4 = accuracy
    assert m["weighted_avg"]["precision"] == pytest.approx((2 + 1 / 3) / 4)
    assert m["weighted_avg"]["recall"] == pytest.approx(0.5)
    # macro over all ten digit classes (absent ones count as 0)
    assert m["macro_avg"]["precision"] == pytest.approx((1 + 1 / 3) / 10)
    assert m["macro_avg"]["recall"] == pytest.approx(1.5 / 10)


def test_classification_perfect() -> None:
    labels = torch.arange(10)
    m = metrics.classification(one_hot_logits(labels), labels)
    assert m["test_accuracy"] == 1.0
    assert m["test_errors"] == 0
    assert m["test_loss"] == pytest.approx(-math.log(0.91))
    assert m["macro_avg"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1-score": 1.0})
    assert all(pc["support"] == 1 for pc in m["per_class"].values())


def test_classification_uses_argmax_of_logits() -> None:
    logits = torch.tensor([[0.1, 0.2, 3.0] + [0.0] * 7, [5.0, -1.0, 0.0] + [0.0] * 7])
    m = metrics.classification(logits, torch.tensor([2, 1]))
    assert m["test_accuracy"] == 0.5
    assert m["test_errors"] == 1
    assert m["per_class"]["2"]["precision"] == 1.0
    assert m["per_class"]["0"]["precision"] == 0.0
    assert m["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([2, 1])).item())


def test_classification_is_json_ready() -> None:
    m = metrics.classification(one_hot_logits(PRED), LABELS)
    assert isinstance(m["test_accuracy"], float) and isinstance(m["test_errors"], int)
    assert isinstance(m["test_loss"], float)


def test_confusion_rows_actual_columns_predicted() -> None:
    cm = metrics.confusion(LABELS, PRED)
    assert cm.shape == (10, 10)
    expected = np.zeros((10, 10), dtype=int)
    expected[0, 0] = 1  # actual 0, predicted 0
    expected[0, 1] = 1  # actual 0, predicted 1
    expected[1, 1] = 1  # actual 1, predicted 1
    expected[2, 1] = 1  # actual 2, predicted 1
    assert np.array_equal(cm, expected)
    assert cm.sum(1)[:3].tolist() == [2, 1, 1]  # row sums = class supports


def test_confusion_matches_per_class_recall() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (300,), generator=g)
    logits = torch.randn(300, 10, generator=g)
    logits[torch.arange(300), labels] += 1.5  # better than chance
    pred = logits.argmax(1)
    cm = metrics.confusion(labels, pred)
    m = metrics.classification(logits, labels)
    assert cm.sum() == 300
    assert np.trace(cm) == 300 - m["test_errors"]
    for c in range(10):
        assert cm[c].sum() == m["per_class"][str(c)]["support"]
        assert cm[c, c] / cm[c].sum() == pytest.approx(m["per_class"][str(c)]["recall"])
        if cm[:, c].sum():
            assert cm[c, c] / cm[:, c].sum() == pytest.approx(m["per_class"][str(c)]["precision"])


# --------------------------------------------------------------------------- device


@pytest.mark.skipif(HAS_CUDA or HAS_MPS, reason="an accelerator is available")
def test_auto_selects_cpu_without_accelerator() -> None:
    assert device.select("auto") == torch.device("cpu")
    assert device.select() == torch.device("cpu")


def test_explicit_cpu() -> None:
    assert device.select("cpu") == torch.device("cpu")


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available")
def test_cuda_unavailable_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="(?i)cuda"):
        device.select("cuda")


@pytest.mark.skipif(HAS_MPS, reason="MPS is available")
def test_mps_unavailable_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="(?i)mps"):
        device.select("mps")


def test_available_cpus_in_range() -> None:
    n = device.available_cpus()
    assert isinstance(n, int)
    assert 1 <= n <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


def test_describe_cpu_reports_threads() -> None:
    assert device.describe(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


def cpuinfo(*flags: str) -> str:
    """A /proc/cpuinfo of two processors with ``flags``."""
    block = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {' '.join(flags)} rdrand\n"
    return f"{block}\n{block.replace(': 0', ': 1', 1)}"


@pytest.mark.parametrize(
    ("flags", "capability", "isa"),
    [
        (("avx2", "avx512f", "avx512bw"), "AVX512", "AVX-512"),
        (("avx2",), "AVX2", "AVX2"),
        (("avx2", "avx512f"), "AVX2", "AVX2 (imitated on AVX-512)"),  # ATEN_CPU_CAPABILITY=avx2 (scripts/avx2.env)
        (("avx512_bf16", "avx2"), "AVX2", "AVX2"),  # another avx512 flag alone is not AVX-512 Foundation
    ],
)
def test_cpu_isa_from_cpuinfo_flags_and_the_kernels_in_use(flags: tuple[str, ...], capability: str, isa: str):
    assert device.cpu_isa(cpuinfo(*flags), capability) == isa


def test_cpu_isa_without_avx2_is_the_architecture(monkeypatch):
    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    assert device.cpu_isa(cpuinfo("asimd", "sve"), "SVE256") == "aarch64"
    assert device.cpu_isa("", "DEFAULT") == "aarch64"  # no /proc/cpuinfo (macOS)


def test_machine_class_on_cpu_names_the_isa_and_the_usable_cores(monkeypatch):
    here = device.machine_class(torch.device("cpu"))
    assert here.startswith(f"CPU {device.cpu_isa()}, {device.available_cpus()} core")
    monkeypatch.setattr(device, "available_cpus", lambda: 1)
    monkeypatch.setattr(device, "cpu_isa", lambda: "AVX2")
    assert device.machine_class(torch.device("cpu")) == "CPU AVX2, 1 core"
    monkeypatch.setattr(device, "available_cpus", lambda: 16)
    assert device.machine_class(torch.device("cpu")) == "CPU AVX2, 16 cores"


def test_machine_class_on_cuda_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert device.machine_class(torch.device("cuda", 0)) == "CUDA NVIDIA H200"
