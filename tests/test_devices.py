"""The training and inference paths on every device this machine has (the CPU; CUDA where there is a GPU): mixed-
precision and compiled training, determinism, compiled inference, batched augmentation, CUDA's auto-selection.

They use no fixture from conftest.py, so they also run with `pytest --noconftest tests/test_devices.py` on a GPU
machine that has torch but not the project's MLflow/DVC stack (docs/benchmarks.md records where they ran).
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_recipe_features import blobs, tp

from digits import data, device, models, training

DEVICES = [torch.device("cpu")] + [torch.device("cuda")] * torch.cuda.is_available()
on_every_device = pytest.mark.parametrize("dev", DEVICES, ids=str)


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False


def fit_on(dev: torch.device, **overrides):
    p = tp(device=dev.type, channels_last=True, **overrides)
    threads = torch.get_num_threads()
    device.configure(dev, p.seed, p.deterministic)
    torch.set_num_threads(threads)  # configure() sizes the CPU pool to the machine; keep the test's setting
    model = training.prepare(models.build("cnn", 0.2, 0.3, width=8, dropout=0.0), p, dev)
    train, val = (tuple(t.to(dev) for t in blobs(n, seed)) for n, seed in ((400, 1), (100, 2)))
    return model, training.fit(model, train, val, p), val


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CPU-only: test_metrics_and_device)")
def test_auto_picks_cuda_and_describes_it():
    dev = device.select("auto")
    assert dev.type == "cuda"
    assert device.describe(dev) == f"cuda ({torch.cuda.get_device_name(dev)})"


@on_every_device
@pytest.mark.parametrize("amp", [True, False])
def test_fit_learns_with_and_without_bf16(dev, amp):
    model, result, val = fit_on(dev, amp=amp, deterministic=False, epochs=3, ema_decay=0.9,
                                  augment={"rotation_deg": 10, "zoom": 0.1, "shift": 0.1})  # fmt: skip
    assert result.best.val_accuracy > 0.9
    assert all(t.device.type == dev.type for t in result.best_state.values())
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    assert training.loss_and_accuracy(model, *val)[1] == pytest.approx(result.best.val_accuracy)


@on_every_device
def test_deterministic_fit_repeats_exactly(dev):
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _, _ = fit_on(dev, deterministic=True, amp=True, augment={"rotation_deg": 10, "shift": 0.1})
        states.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@on_every_device
def test_compiled_training_step(dev):
    _, result, _ = fit_on(dev, compile=True, deterministic=False, epochs=2)
    assert result.best.val_accuracy > 0.9


@on_every_device
def test_compiled_inference_matches_eager(dev):
    model, _, (vx, _) = fit_on(dev, deterministic=False, epochs=1)
    eager = training.predict_logits(model, vx)
    fast = training.predict_logits(models.for_inference(model, dev, compile=True), vx)
    torch.testing.assert_close(fast, eager, atol=2e-3, rtol=2e-3)  # TF32 convolutions: not bit-identical
    assert training.inference_rate(models.for_inference(model, dev), vx, repeats=2) > 0


@on_every_device
def test_augmentation_keeps_images_sane(dev):
    x, _ = blobs(64, 3)
    x = x.to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    assert torch.equal(data.augment(x, 0, 0, 0, g), x)
    out = data.augment(x, 10, 0.1, 0.1, g)
    assert out.shape == x.shape and out.device.type == dev.type
    assert out.min() >= 0 and out.max() <= 1
    assert 0.6 * x.mean() < out.mean() < 1.05 * x.mean()  # zero padding only lowers it, and not by much
