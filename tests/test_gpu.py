"""The CUDA path: device choice, mixed-precision and compiled training, determinism, compiled inference.

These need a CUDA GPU and are skipped without one (CI has none); docs/benchmarks.md records where they ran.
They use no fixture from conftest.py, so they also run with `pytest --noconftest tests/test_gpu.py` on a machine
that has torch but not the project's MLflow/DVC stack.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_recipe_features import blobs, tp

from digits import data, device, models, training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False


def cuda_fit(**overrides):
    p = tp(device="cuda", channels_last=True, **overrides)
    device.configure(CUDA, p.seed, p.deterministic)
    model = training.prepare(models.build("cnn", 0.2, 0.3, width=8, dropout=0.0), p, CUDA)
    train, val = (tuple(t.to(CUDA) for t in blobs(n, seed)) for n, seed in ((400, 1), (100, 2)))
    return model, training.fit(model, train, val, p), val


def test_auto_picks_cuda_and_describes_it():
    dev = device.select("auto")
    assert dev.type == "cuda"
    assert device.describe(dev) == f"cuda ({torch.cuda.get_device_name(dev)})"


@pytest.mark.parametrize("amp", [True, False])
def test_fit_on_cuda_learns_with_and_without_bf16(amp):
    model, result, val = cuda_fit(amp=amp, deterministic=False, epochs=3, ema_decay=0.9,
                                  augment={"rotation_deg": 10, "zoom": 0.1, "shift": 0.1})  # fmt: skip
    assert result.best.val_accuracy > 0.9
    assert all(t.device.type == "cuda" for t in result.best_state.values())
    assert next(model.parameters()).dtype == torch.float32  # autocast: the weights stay float32
    assert training.loss_and_accuracy(model, *val)[1] == pytest.approx(result.best.val_accuracy)


def test_deterministic_cuda_fit_repeats_exactly():
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _, _ = cuda_fit(deterministic=True, amp=True, augment={"rotation_deg": 10, "shift": 0.1})
        states.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_compiled_training_step_on_cuda():
    _, result, _ = cuda_fit(compile=True, deterministic=False, epochs=2)
    assert result.best.val_accuracy > 0.9


def test_compiled_inference_on_cuda_matches_eager():
    model, _, (vx, _) = cuda_fit(deterministic=False, epochs=1)
    eager = training.predict_logits(model, vx)
    fast = training.predict_logits(models.for_inference(model, CUDA, compile=True), vx)
    torch.testing.assert_close(fast, eager, atol=2e-3, rtol=2e-3)  # TF32 convolutions: not bit-identical
    assert training.inference_rate(models.for_inference(model, CUDA), vx, repeats=2) > 0


def test_augmentation_on_cuda_keeps_images_sane():
    x, _ = blobs(64, 3)
    x = x.to(CUDA)
    g = torch.Generator(device=CUDA).manual_seed(0)
    assert torch.equal(data.augment(x, 0, 0, 0, g), x)
    out = data.augment(x, 10, 0.1, 0.1, g)
    assert out.shape == x.shape and out.device.type == "cuda"
    assert out.min() >= 0 and out.max() <= 1
    assert 0.6 * x.mean() < out.mean() < 1.05 * x.mean()  # zero padding only lowers it, and not by much
