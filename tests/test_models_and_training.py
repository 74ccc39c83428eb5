"""digits.models and digits.training on tiny synthetic data: shapes, fit(), early stopping, schedules,
optimizers, determinism and checkpoints."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from digits import device, models, training
from digits.data import DataError
from digits.params import AugmentParams, TrainParams

ARCH: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [32, 16], "dropout": 0.0, "batchnorm": False, "stretch": False},
    "cnn": {"width": 8, "dropout": 0.0, "depth": 1, "head": 0, "stages": 3, "block_dropout": 0.0, "last_width": 0,
            "last_pool": "floor", "first_stride": 1, "stretch": False},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_params(**overrides: Any) -> TrainParams:
    base: dict[str, Any] = {
        "model": "test",
        "arch": "mlp",
        "hidden": [32, 16],
        "width": 8,
        "dropout": 0.0,
        "epochs": 3,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 0.01,
        "scheduler": "none",
        "seed": 0,
        "device": "cpu",
    }
    base.update(overrides)
    return TrainParams(**base)


def squares(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k = a bright 5×5 square at grid position k (3 rows × 4 columns), on a noisy background,
    jittered by ±1 px. Easily separable, float [N, 1, 28, 28] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 1, 28, 28, generator=g) * 0.3
    jitter = torch.randint(-1, 2, (len(y), 2), generator=g)
    for i, k in enumerate(y.tolist()):
        r = 3 + 8 * (k // 4) + int(jitter[i, 0])
        c = 3 + 6 * (k % 4) + int(jitter[i, 1])
        x[i, 0, r : r + 5, c : c + 5] = 1.0
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


@pytest.fixture(scope="module")
def train_xy() -> tuple[torch.Tensor, torch.Tensor]:
    return squares(30, seed=1)


@pytest.fixture(scope="module")
def val_xy() -> tuple[torch.Tensor, torch.Tensor]:
    return squares(10, seed=2)


def build(name: str, seed: int = 0, mean: float = 0.2, std: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build(name, mean, std, **ARCH[name])


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("n", [1, 5])
def test_models_produce_logits(name: str, n: int) -> None:
    model = build(name).eval()
    out = model(torch.rand(n, 1, 28, 28))
    assert out.shape == (n, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_standardize_buffers_in_state_dict(name: str) -> None:
    model = build(name, mean=0.1307, std=0.3081)
    state = model.state_dict()
    assert state["0.mean"].item() == pytest.approx(0.1307)
    assert state["0.std"].item() == pytest.approx(0.3081)
    # buffers, not trainable parameters
    param_names = {k for k, _ in model.named_parameters()}
    assert "0.mean" not in param_names and "0.std" not in param_names


def test_standardize_is_applied_first() -> None:
    layer = models.Standardize(0.5, 0.25)
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(layer(x), torch.tensor([-2.0, 0.0, 2.0]))
    # a model built with other statistics but the same body weights gives different logits
    a, b = build("mlp", mean=0.0, std=1.0), build("mlp", mean=0.5, std=0.25)
    inp = torch.rand(3, 1, 28, 28)
    assert not torch.allclose(a.eval()(inp), b.eval()(inp))


def test_build_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="resnet") as excinfo:
        models.build("resnet", 0.0, 1.0, width=8, dropout=0.0)
    assert "mlp" in str(excinfo.value) and "cnn" in str(excinfo.value)


def test_mlp_hidden_sizes_and_dropout() -> None:
    body = models.mlp([32, 16], dropout=0.5)
    linears = [m for m in body if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in body) == 2
    assert not any(isinstance(m, torch.nn.Dropout) for m in models.mlp([32, 16], dropout=0.0))


def test_mlp_batchnorm_and_xavier_init() -> None:
    body = models.mlp([32, 16], dropout=0.0, batchnorm=True)
    assert [type(m).__name__ for m in body][1:5] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert body[1].bias is None  # BatchNorm makes the bias redundant
    torch.manual_seed(0)
    model = models.build("mlp", 0.0, 1.0, init="xavier", hidden=[32], dropout=0.0)
    first = model[1][1]
    bound = math.sqrt(6 / (784 + 32))  # Glorot-uniform limit
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(first.bias) == 0


def test_cnn_stages_and_block_dropout() -> None:
    """The Keras notebook CNN: two stages (32, 64 channels), dropout after each pooling, dense head 128."""
    body = models.cnn(32, 0.5, head=128, stages=2, block_dropout=0.25)
    assert [m.out_channels for m in body if isinstance(m, torch.nn.Conv2d)] == [32, 64]
    assert [m.p for m in body if isinstance(m, torch.nn.Dropout)] == [0.25, 0.25, 0.5]
    assert [m.in_features for m in body if isinstance(m, torch.nn.Linear)] == [64 * 7 * 7, 128]
    assert body(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_width_scales_channels() -> None:
    convs = [m for m in models.cnn(8, 0.0) if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in convs] == [8, 16, 32]
    assert models.count_parameters(models.cnn(16, 0.0)) > models.count_parameters(models.cnn(8, 0.0))


@pytest.mark.parametrize(("last_pool", "side"), [("floor", 3), ("ceil", 4), ("none", 7)])
def test_cnn_last_stage_width_and_pooling(last_pool: str, side: int) -> None:
    """``last_width`` sets the 7 px stage's channels; ``last_pool`` how much of its 7 × 7 map the head sees."""
    body = models.cnn(8, 0.0, head=16, last_width=24, last_pool=last_pool)
    assert [m.out_channels for m in body if isinstance(m, torch.nn.Conv2d)] == [8, 16, 24]
    assert [m.in_features for m in body if isinstance(m, torch.nn.Linear)] == [24 * side * side, 16]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in body) == (2 if last_pool == "none" else 3)
    assert body(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [m.in_features for m in models.cnn(8, 0.0, stages=2, last_pool="ceil") if isinstance(m, torch.nn.Linear)
            ] == [16 * 7 * 7]  # 14 px → 7 either way  # fmt: skip
    with pytest.raises(ValueError, match="unknown last_pool 'avg'"):
        models.cnn(8, 0.0, last_pool="avg")


def test_cnn_first_stride_2_replaces_the_first_pool() -> None:
    """``first_stride=2``: the first convolution computes the 14 px map directly, the first max-pool is gone, and the
    rest of the network (channels, head) is the one of ``first_stride=1``; it needs a second stage."""
    strided, plain = models.cnn(8, 0.0, first_stride=2), models.cnn(8, 0.0)
    convs = [m for m in strided if isinstance(m, torch.nn.Conv2d)]
    assert [m.stride for m in convs] == [(2, 2), (1, 1), (1, 1)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in strided) == 2
    assert [v.shape for v in strided.state_dict().values()] == [v.shape for v in plain.state_dict().values()]
    x = torch.rand(2, 1, 28, 28)
    assert strided[:3](x).shape == plain[:4](x).shape == (2, 8, 14, 14)
    assert strided(x).shape == (2, 10)
    with pytest.raises(ValueError, match="first_stride 2 is not possible with 1 stage"):
        models.cnn(8, 0.0, stages=1, first_stride=2)


def test_checkpoint_without_the_newer_cnn_keys_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before ``last_width``/``last_pool``/``first_stride`` existed rebuild the same network."""
    kwargs = {k: v for k, v in ARCH["cnn"].items() if k not in ("last_width", "last_pool", "first_stride")}
    model = models.build("cnn", 0.0, 1.0, **kwargs)
    training.save_checkpoint(tmp_path / "old.pt", model, {"arch": "cnn", "model_kwargs": kwargs})
    loaded, _ = training.load_checkpoint(tmp_path / "old.pt")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_architecture_kwargs_rebuild_the_same_shapes(name: str) -> None:
    p = train_params(arch=name)
    kwargs = models.architecture_kwargs(p)
    assert kwargs == ARCH[name]
    a = models.build(name, 0.0, 1.0, **kwargs)
    b = build(name)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


# --------------------------------------------------------------------------- fit


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_fit_learns_separable_data_and_restores_best_epoch(name: str, train_xy, val_xy) -> None:
    model = build(name)
    p = train_params(arch=name, epochs=3)
    seen: list[training.Epoch] = []
    result = training.fit(model, train_xy, val_xy, p, on_epoch=seen.append)
    assert len(result.history) == 3
    assert [e.epoch for e in result.history] == [1, 2, 3]
    assert seen == result.history
    assert not result.stopped_early
    assert 1 <= result.best_epoch <= 3
    assert result.best is result.history[result.best_epoch - 1]
    assert result.best.val_accuracy >= 0.95
    assert result.history[-1].train_accuracy >= 0.9
    val_loss, val_acc = training.loss_and_accuracy(model, *val_xy)
    assert val_acc == result.history[result.best_epoch - 1].val_accuracy
    assert val_loss == pytest.approx(result.best.val_loss, rel=1e-6)
    assert state_equal(model.state_dict(), result.best_state)
    # best is the max of (val_accuracy, -val_loss) over the history
    assert result.best == max(result.history, key=lambda e: (e.val_accuracy, -e.val_loss))


def test_fit_restores_an_earlier_best_epoch(train_xy, val_xy) -> None:
    """Validation labels shifted by one class: the better the model learns, the worse validation gets,
    so the best epoch is early and the final weights must be replaced by it."""
    x_val, y_val = val_xy
    wrong_val = (x_val, (y_val + 1) % 10)
    model = build("mlp")
    result = training.fit(model, train_xy, wrong_val, train_params(epochs=4))
    assert len(result.history) == 4
    assert result.best_epoch < 4
    last = result.history[-1]
    assert (last.val_accuracy, -last.val_loss) < (result.best.val_accuracy, -result.best.val_loss)
    val_loss, val_acc = training.loss_and_accuracy(model, *wrong_val)
    assert val_acc == result.best.val_accuracy
    assert val_loss == pytest.approx(result.best.val_loss, rel=1e-6)
    assert val_loss != pytest.approx(last.val_loss, rel=1e-3)


def test_early_stopping_when_validation_stops_improving(train_xy, val_xy) -> None:
    x_val, y_val = val_xy
    wrong_val = (x_val, (y_val + 1) % 10)
    result = training.fit(build("mlp"), train_xy, wrong_val, train_params(epochs=10, early_stopping_patience=1))
    assert result.stopped_early
    assert len(result.history) < 10
    assert len(result.history) == result.best_epoch + 1


def test_no_early_stopping_without_patience(train_xy, val_xy) -> None:
    x_val, y_val = val_xy
    wrong_val = (x_val, (y_val + 1) % 10)
    result = training.fit(build("mlp"), train_xy, wrong_val, train_params(epochs=4, early_stopping_patience=0))
    assert not result.stopped_early
    assert len(result.history) == 4


def test_patience_larger_than_epochs_runs_all_epochs(train_xy, val_xy) -> None:
    result = training.fit(build("mlp"), train_xy, val_xy, train_params(epochs=2, early_stopping_patience=5))
    assert not result.stopped_early
    assert len(result.history) == 2


@pytest.mark.parametrize("scheduler", ["none", "onecycle", "cosine", "step", "plateau"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_every_optimizer_and_scheduler_trains(optimizer: str, scheduler: str, train_xy, val_xy) -> None:
    model = build("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = train_params(optimizer=optimizer, scheduler=scheduler, epochs=1, lr=0.01, weight_decay=1e-4)
    result = training.fit(model, train_xy, val_xy, p)
    assert len(result.history) == 1
    e = result.history[0]
    assert math.isfinite(e.train_loss) and math.isfinite(e.val_loss)
    assert 0.0 <= e.val_accuracy <= 1.0 and 0.0 <= e.train_accuracy <= 1.0
    assert not state_equal(model.state_dict(), before)


def test_optimizer_choice(train_xy) -> None:
    model = build("mlp")
    assert type(training.make_optimizer(train_params(optimizer="adam"), model)) is torch.optim.Adam
    assert type(training.make_optimizer(train_params(optimizer="adamw"), model)) is torch.optim.AdamW
    sgd = training.make_optimizer(train_params(optimizer="sgd", momentum=0.9), model)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["nesterov"] is True
    plain = training.make_optimizer(train_params(optimizer="sgd", momentum=0.0), model)
    assert plain.param_groups[0]["nesterov"] is False


def test_step_scheduler_decays_per_epoch(train_xy, val_xy) -> None:
    p = train_params(scheduler="step", step_size=1, gamma=0.5, epochs=3, lr=0.01)
    result = training.fit(build("mlp"), train_xy, val_xy, p)
    assert [e.lr for e in result.history] == pytest.approx([0.01, 0.005, 0.0025])


def test_onecycle_and_cosine_step_per_batch(train_xy) -> None:
    steps = -(-len(train_xy[1]) // 32)
    model = build("mlp")
    p = train_params(scheduler="onecycle", epochs=2, lr=0.01)
    opt = training.make_optimizer(p, model)
    sched, per_batch = training.make_scheduler(p, opt, steps)
    assert per_batch and isinstance(sched, torch.optim.lr_scheduler.OneCycleLR)
    assert sched.total_steps == 2 * steps
    p = train_params(scheduler="cosine", epochs=2)
    sched, per_batch = training.make_scheduler(p, training.make_optimizer(p, model), steps)
    assert per_batch and isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert sched.T_max == 2 * steps
    p = train_params(scheduler="none")
    assert training.make_scheduler(p, training.make_optimizer(p, model), steps) == (None, False)


def test_onecycle_lr_starts_low_and_peaks_at_lr(train_xy, val_xy) -> None:
    p = train_params(scheduler="onecycle", epochs=3, lr=0.01)
    result = training.fit(build("mlp"), train_xy, val_xy, p)
    lrs = [e.lr for e in result.history]
    assert lrs[0] == pytest.approx(0.01 / 25)  # OneCycleLR starts at max_lr / div_factor
    assert max(lrs) <= 0.01 + 1e-12


@pytest.fixture
def restore_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    fill = torch.utils.deterministic.fill_uninitialized_memory
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.backends.cudnn.benchmark = benchmark


def test_same_seed_gives_identical_weights(train_xy, val_xy, restore_determinism) -> None:
    p = train_params(arch="cnn", epochs=2, dropout=0.25, augment=AugmentParams(rotation_deg=10, zoom=0.1, shift=0.1))

    def run(seed: int) -> tuple[dict[str, torch.Tensor], list[training.Epoch]]:
        device.configure(torch.device("cpu"), seed, deterministic=True)
        torch.set_num_threads(1)  # configure() sizes the pool to all CPUs; keep the test light
        model = models.build("cnn", 0.2, 0.3, **models.architecture_kwargs(p))
        result = training.fit(model, train_xy, val_xy, p.model_copy(update={"seed": seed}))
        return model.state_dict(), result.history

    state_a, hist_a = run(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    assert not torch.utils.deterministic.fill_uninitialized_memory  # NaN-filling costs ~20 % of a CPU step
    state_b, hist_b = run(0)
    assert state_equal(state_a, state_b)
    assert [(e.train_loss, e.val_loss) for e in hist_a] == [(e.train_loss, e.val_loss) for e in hist_b]
    state_c, _ = run(1)
    assert not state_equal(state_a, state_c)


def test_fit_seed_controls_shuffling(train_xy, val_xy) -> None:
    # same initial weights, different fit seeds → different batch order → different weights
    a, b = build("mlp", seed=0), build("mlp", seed=0)
    assert state_equal(a.state_dict(), b.state_dict())
    training.fit(a, train_xy, val_xy, train_params(epochs=1, seed=1))
    training.fit(b, train_xy, val_xy, train_params(epochs=1, seed=2))
    assert not state_equal(a.state_dict(), b.state_dict())


def test_predict_logits_gives_a_last_partial_batch_the_batch_size() -> None:
    seen = []
    model = torch.nn.Flatten()
    model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    x = torch.rand(20, 1, 2, 2)
    assert torch.equal(training.predict_logits(model, x, batch_size=8), x.flatten(1))
    assert seen == [8, 8, 8], "rows 12-19 last, of which 16-19 are kept"
    seen.clear()
    assert torch.equal(training.predict_logits(model, x[:5], batch_size=8), x[:5].flatten(1))
    assert seen == [5], "a single short batch stays as it is"


def test_predict_logits_batches_match_single_pass(val_xy) -> None:
    model = build("cnn")
    x, _ = val_xy
    full = training.predict_logits(model, x, batch_size=len(x))
    chunked = training.predict_logits(model, x, batch_size=7)
    assert torch.allclose(full, chunked, atol=1e-5)
    assert not model.training


def test_epoch_rows(train_xy, val_xy) -> None:
    result = training.fit(build("mlp"), train_xy, val_xy, train_params(epochs=2))
    rows = training.epoch_rows(result.history)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds"}


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_checkpoint_round_trip(name: str, tmp_path: Path, train_xy, val_xy) -> None:
    model = build(name, mean=0.1307, std=0.3081)
    training.fit(model, train_xy, val_xy, train_params(arch=name, epochs=1))
    x, _ = val_xy
    expected = training.predict_logits(model, x)
    meta = {"model": "test", "arch": name, "model_kwargs": ARCH[name], "epoch": 1, "val_accuracy": 0.5,
            "params": {"lr": 0.01}}
    path = tmp_path / "models" / "model.pt"
    training.save_checkpoint(path, model, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", *meta}
    assert raw["model_kwargs"] == ARCH[name]

    loaded, loaded_meta = training.load_checkpoint(path)
    assert not loaded.training
    assert loaded_meta == meta
    assert loaded[0].mean.item() == pytest.approx(0.1307)
    assert loaded[0].std.item() == pytest.approx(0.3081)
    assert torch.equal(training.predict_logits(loaded, x), expected)


def test_stretch_maps_each_images_range_to_0_1_and_travels_in_the_checkpoint(tmp_path: Path, train_xy, val_xy):
    x, _ = val_xy
    dim, lifted = 0.6 * x, 0.5 + 0.5 * x  # a faint digit; a digit on a grey background
    stretch = models.Stretch()
    for changed in (dim, lifted):
        assert torch.allclose(stretch(changed), stretch(x), atol=1e-5)
    assert stretch(torch.zeros(2, 1, 28, 28)).abs().max() == 0  # a blank image stays blank
    kwargs = {**ARCH["cnn"], "stretch": True}
    model = models.build("cnn", mean=0.1307, std=0.3081, **kwargs)
    assert isinstance(model[0], models.Stretch)
    training.fit(model, train_xy, val_xy, train_params(arch="cnn", epochs=1))
    path = tmp_path / "model.pt"
    training.save_checkpoint(path, model, {"arch": "cnn", "model_kwargs": kwargs})
    loaded, _ = training.load_checkpoint(path)
    assert isinstance(loaded[0], models.Stretch)
    assert torch.equal(training.predict_logits(loaded, lifted), training.predict_logits(model, lifted))
    # a checkpoint from before the key existed rebuilds without it
    old = {k: v for k, v in ARCH["cnn"].items() if k != "stretch"}
    assert isinstance(models.build("cnn", mean=0.0, std=1.0, **old)[0], models.Standardize)


def test_load_checkpoint_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00not a checkpoint" * 20)
    with pytest.raises(DataError, match="not a usable checkpoint") as excinfo:
        training.load_checkpoint(path)
    assert str(path) in str(excinfo.value)


def test_load_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no checkpoint"):
        training.load_checkpoint(tmp_path / "model.pt")


def test_load_checkpoint_architecture_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    training.save_checkpoint(path, build("cnn"), {"arch": "cnn", "model_kwargs": {"width": 16, "dropout": 0.0}})
    with pytest.raises(DataError, match="not a usable checkpoint"):
        training.load_checkpoint(path)


def test_load_checkpoint_missing_metadata(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"state_dict": build("mlp").state_dict()}, path)
    with pytest.raises(DataError, match="not a usable checkpoint"):
        training.load_checkpoint(path)
