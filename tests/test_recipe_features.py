"""Issue-3 recipe features: deeper/headed CNNs, BN folding for inference, EMA, channels_last, the model zoo,
and the batched data path against a per-sample reference."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from digits import data, models, params, training
from digits.errors import UserError
from digits.params import TrainParams

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tp(**overrides: Any) -> TrainParams:
    base = dict(model="test", arch="cnn", width=4, dropout=0.0, epochs=2, batch_size=32, optimizer="adam", lr=0.01,
                seed=0, device="cpu", channels_last=False)
    return TrainParams(**(base | overrides))


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: a bright 4×4 blob at one of 10 positions, on light noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat(n // 10)
    x = torch.rand(len(y), 1, 28, 28, generator=g) * 0.2
    for i, k in enumerate(y.tolist()):
        r, c = 4 + 10 * (k // 5), 2 + 5 * (k % 5)
        x[i, 0, r : r + 4, c : c + 4] = 1.0
    return x, y


@pytest.mark.parametrize(("depth", "head"), [(1, 0), (2, 0), (1, 32), (3, 16)])
def test_cnn_depth_and_head(depth: int, head: int):
    model = models.build("cnn", 0.1, 0.3, width=4, dropout=0.1, depth=depth, head=head)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 1 + 2 * depth
    assert len(linears) == (2 if head else 1)
    if head:
        assert linears[0].out_features == head


def test_fuse_for_inference_folds_batchnorm_and_keeps_outputs():
    torch.manual_seed(0)
    model = models.build("cnn", 0.1, 0.3, width=4, dropout=0.0, depth=2, head=8)
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.rand(16, 1, 28, 28) * 3)
    model.eval()
    fused = models.fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original must be untouched"
    x = torch.rand(20, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-4)


def test_fuse_for_inference_leaves_an_mlp_alone():
    model = models.build("mlp", 0.1, 0.3, hidden=[8], dropout=0.0).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(models.fuse_for_inference(model)(x), model(x))


@pytest.mark.parametrize(("arch", "compile"), [("cnn", False), ("cnn", True), ("mlp", True)])
def test_for_inference_keeps_outputs_and_the_original(arch, compile):
    torch.manual_seed(0)
    kwargs = {"width": 8, "depth": 2, "head": 8, "block_dropout": 0.2} if arch == "cnn" else {"hidden": [8]}
    model = models.build(arch, 0.1, 0.3, dropout=0.3, **kwargs)
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.rand(16, 1, 28, 28) * 3)
    model.eval()
    fast = models.for_inference(model, torch.device("cpu"), compile=compile)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == (arch == "cnn"), "original kept"
    x = torch.rand(20, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(training.predict_logits(fast, x, 8), model(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(training.predict_logits(fast, x, 8), model(x), atol=1e-5, rtol=1e-4)  # 2nd call


@pytest.mark.parametrize("channels", [1, 8, 16])
def test_cnn_batchnorm_trains_like_the_stock_one_and_keeps_channels_last(channels):
    """models.BatchNorm2d (narrow layers on a channels-first copy on CPU) gives the stock layer's outputs, input
    gradients and running statistics, up to float rounding, and hands back channels_last; a wide one is the stock."""
    torch.manual_seed(0)
    x = (torch.randn(64, channels, 14, 14) * 2 + 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    stock, ours = torch.nn.BatchNorm2d(channels), models.BatchNorm2d(channels)
    ours.load_state_dict(stock.state_dict())
    y_stock, y_ours = stock(x), ours(x)
    g = torch.randn_like(y_stock)
    (dx_stock,), (dx_ours,) = torch.autograd.grad(y_stock, x, g), torch.autograd.grad(y_ours, x, g)
    assert y_ours.is_contiguous(memory_format=torch.channels_last)
    for a, b in ((y_stock, y_ours), (dx_stock, dx_ours), (stock.running_mean, ours.running_mean),
                 (stock.running_var, ours.running_var)):  # fmt: skip
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    if channels > models.BatchNorm2d.NARROW:
        assert torch.equal(y_stock, y_ours) and torch.equal(dx_stock, dx_ours)
    assert any(isinstance(m, models.BatchNorm2d) for m in models.build("cnn", 0.1, 0.3, width=8, dropout=0).modules())


def test_compiled_inference_freezes_weights_into_onednn_convolutions_and_compiles_once():
    """The compiled model runs oneDNN convolutions with prepacked weights and fused ReLU (Inductor's freezing), and a
    partial last batch is not compiled for anew."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = models.build("cnn", 0.1, 0.3, width=4, stages=2, dropout=0.0).eval()
    fast = models.for_inference(model, torch.device("cpu"), compile=True)
    x = torch.rand(20, 1, 28, 28)
    logits, codes = run_and_get_code(training.predict_logits, fast, x, 8)
    assert len(codes) == 1, "one graph for all three batches of 20 images"
    assert "mkldnn._convolution_pointwise" in codes[0] and "'relu'" in codes[0]
    with torch.inference_mode():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-4)


def test_compiled_inference_without_a_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    model = models.build("cnn", 0.1, 0.3, width=8, dropout=0.0)
    with pytest.raises(UserError, match="evaluate.compile=true needs a C\\+\\+ compiler"):
        models.for_inference(model, torch.device("cpu"), compile=True)
    assert models.for_inference(model, torch.device("cpu"), compile=False) is not None


def test_ema_fit_keeps_and_restores_the_averaged_weights():
    train, val = blobs(200, 1), blobs(50, 2)
    torch.manual_seed(0)
    plain = models.build("cnn", 0.2, 0.3, width=4, dropout=0.0)
    ema_model = copy.deepcopy(plain)
    plain_result = training.fit(plain, train, val, tp(epochs=2))
    ema_result = training.fit(ema_model, train, val, tp(epochs=2, ema_decay=0.9))
    assert not torch.equal(plain.state_dict()["1.0.weight"], ema_model.state_dict()["1.0.weight"])
    _, acc = training.loss_and_accuracy(ema_model, *val)
    assert acc == pytest.approx(ema_result.best.val_accuracy)
    assert ema_result.best_state.keys() == plain_result.best_state.keys()


def test_channels_last_prepare_and_same_predictions():
    torch.manual_seed(0)
    model = models.build("cnn", 0.2, 0.3, width=4, dropout=0.0).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.inference_mode():
        expected = model(x)
    prepared = training.prepare(model, tp(channels_last=True), torch.device("cpu"))
    conv = next(m for m in prepared.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(prepared(x), expected, atol=1e-5, rtol=1e-4)


def test_batched_path_matches_a_per_sample_reference_with_augmentation_off():
    """Same seed → the indexing path yields exactly the batches a per-sample loop over the same order builds."""
    x, y = blobs(100, 3)
    seed, bs = 7, 16
    ours = list(data.batches(x, y, bs, torch.Generator().manual_seed(seed)))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).tolist()
    reference = [
        (torch.stack([x[i] for i in order[s : s + bs]]), torch.stack([y[i] for i in order[s : s + bs]]))
        for s in range(0, len(order), bs)
    ]
    assert len(ours) == len(reference)
    for (xa, ya), (xb, yb) in zip(ours, reference, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(data.augment(ours[0][0], 0, 0, 0, g), ours[0][0])


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("name", list(repo_params()["train"]["zoo"]))
def test_every_zoo_model_in_params_yaml_validates(name):
    raw = repo_params()
    raw["train"]["model"] = name
    p = params.validate(raw).train
    assert p.model == name
    first = next(iter(raw["train"]["zoo"].values()))
    for key, value in {**first, **(raw["train"]["zoo"][name] or {})}.items():
        got = getattr(p, key)
        assert (got.model_dump() if hasattr(got, "model_dump") else got) == (
            {**first[key], **value} if isinstance(value, dict) else value
        )


def test_the_gpu_top_recipe_is_the_clean_cnn_wider_deeper_and_longer():
    """`digits_cnn_gpu_top` (docs/benchmarks.md, "GPU: every check in one call") changes only what its comment says."""
    top = params.zoo_model("digits_cnn_gpu_top", REPO / "params.yaml").model_dump()
    base = params.zoo_model("digits_cnn_clean", REPO / "params.yaml").model_dump()
    assert {k: v for k, v in top.items() if v != base[k]} == {
        "model": "digits_cnn_gpu_top", "width": 32, "depth": 2, "head": 256, "dropout": 0.3, "epochs": 30,
        "batch_size": 256, "lr": 0.01, "deterministic": False}  # fmt: skip
    assert top["amp"] and top["ema_decay"] == 0.999 and top["augment"]["rotation_deg"] == 10
    p = params.zoo_model("digits_cnn_gpu_top", REPO / "params.yaml")
    assert models.count_parameters(models.from_params(p, 0.1307, 0.3081)) == 575_338


@pytest.mark.parametrize("name", list(repo_params()["train"]["zoo"]))
def test_every_zoo_model_builds_and_trains_one_epoch_on_tiny_data(name):
    raw = repo_params()
    raw["train"]["model"] = name
    p = params.validate(raw).train.model_copy(update={"epochs": 1, "device": "cpu"})
    torch.manual_seed(0)
    model = training.prepare(models.from_params(p, 0.2, 0.3), p, torch.device("cpu"))
    before = copy.deepcopy(model.state_dict())
    result = training.fit(model, blobs(p.batch_size * 2, 1), blobs(20, 2), p)
    assert len(result.history) == 1 and math.isfinite(result.best.train_loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_zoo_entry_overrides_only_what_it_names():
    raw = repo_params()
    full = next(iter(raw["train"]["zoo"].values()))
    raw["train"]["zoo"] = {"full": full, "tiny": {"epochs": 1, "augment": {"zoom": 0.0}}, "plain": None}
    raw["train"]["model"] = "tiny"
    p = params.validate(raw).train
    assert p.epochs == 1 and p.augment.zoom == 0.0
    assert p.augment.rotation_deg == full["augment"]["rotation_deg"]
    assert p.lr == full["lr"]
    raw["train"]["model"] = "plain"  # an entry with no keys: the first recipe as it is
    assert params.validate(raw).train.epochs == full["epochs"]


def test_unknown_model_and_bad_zoo_keys_are_reported():
    raw = repo_params()
    raw["train"]["zoo"] = {"tiny": {"epoch": 1}, "bad": {"lr": 0}, "nested": {"model": "tiny"}}
    raw["train"]["model"] = "huge"
    with pytest.raises(params.ParamsError) as err:
        params.validate(raw)
    text = str(err.value)
    assert "'train.model' = 'huge' is not in train.zoo; choose one of: tiny, bad, nested" in text
    assert "unknown key 'train.zoo.tiny.epoch'. Did you mean 'epochs'?" in text
    assert "'train.zoo.bad.lr' = 0" in text
    assert "'train.zoo.nested' must be a mapping of train keys (other than model/zoo)" in text


def test_ema_warm_up_follows_the_model_early_and_averages_later():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.zero_()
    ema = training.EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n=1: decay min(0.999, 2/11) -> moves 9/11 of the way
    assert ema.module.weight[0, 0].item() == pytest.approx(9 / 11)
    for _ in range(5000):
        ema.update(model)
    assert ema.module.weight[0, 0].item() == pytest.approx(1.0, abs=1e-3)
    assert ema.decay == 0.999 and (1 + ema.updates) / (10 + ema.updates) > 0.998


def test_ema_short_run_is_useful():
    """One short epoch with decay 0.999 must not leave the averaged model near its random initialisation."""
    train, val = blobs(300, 1), blobs(100, 2)
    torch.manual_seed(0)
    model = models.build("cnn", 0.2, 0.3, width=4, dropout=0.0)
    result = training.fit(model, train, val, tp(epochs=1, ema_decay=0.999, lr=0.02))
    assert result.best.val_accuracy > 0.5


def test_off_last_epochs_trains_those_epochs_on_clean_images():
    train, val = blobs(200, 1), blobs(50, 2)
    aug = {"rotation_deg": 30, "zoom": 0.2, "shift": 0.2}

    def fit(**overrides):
        torch.manual_seed(0)
        model = models.build("cnn", 0.2, 0.3, width=4, dropout=0.0)
        return model, training.fit(model, train, val, tp(epochs=2, **overrides))

    clean, _ = fit()
    all_off, _ = fit(augment={**aug, "off_last_epochs": 2})  # every epoch clean: the unaugmented run exactly
    pairs = zip(clean.state_dict().values(), all_off.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    _, augmented = fit(augment=aug)
    _, last_off = fit(augment={**aug, "off_last_epochs": 1})
    assert last_off.history[0].train_loss == augmented.history[0].train_loss  # epoch 1 augmented in both
    assert last_off.history[1].train_loss != augmented.history[1].train_loss


def test_ema_update_matches_the_per_tensor_formula_and_survives_a_state_load():
    torch.manual_seed(0)
    model = models.build("cnn", 0.2, 0.3, width=4, dropout=0.0)  # BatchNorm: float buffers and integer counters
    ema = training.EMA(model, decay=0.9)
    expected = copy.deepcopy(ema.module.state_dict())
    for step in range(1, 4):
        model.train()
        model(torch.rand(8, 1, 28, 28))  # moves the BatchNorm statistics and counters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if step == 2:  # a resumed run loads saved states into the live objects
            ema.module.load_state_dict(expected)
            model.load_state_dict(model.state_dict())
        ema.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        for k, cur in model.state_dict().items():
            expected[k] = expected[k] + (cur - expected[k]) * (1 - d) if cur.is_floating_point() else cur.clone()
        for k, avg in ema.module.state_dict().items():
            torch.testing.assert_close(avg, expected[k], rtol=1e-6, atol=1e-6)
