"""params.yaml schema: the repository's file validates, and each class of mistake gets a clear ParamsError."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import clean_env, git_project

from digits import params
from digits.errors import UserError
from digits.params import ParamsError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text())


def write_variant(tmp_path: Path, base: dict[str, Any], mutate: Callable[[dict[str, Any]], None]) -> Path:
    raw = copy.deepcopy(base)
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ParamsError) as excinfo:
        params.load(path)
    return str(excinfo.value)


def set_key(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw[section][key] = value

    return mutate


def rename_key(section: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw[section][new] = raw[section].pop(old)

    return mutate


def test_repository_params_validate() -> None:
    p = params.load(REPO_PARAMS)
    assert isinstance(p, params.Params)
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    zoo = raw["train"]["zoo"]
    first, recipe = next(iter(zoo.values())), zoo[raw["train"]["model"]]  # the default: what it changes of the first
    assert p.train.model == raw["train"]["model"] == "digits_cnn" and "lr" not in recipe
    assert raw["train"]["lr"] is None and p.train.lr == pytest.approx(first["lr"])
    assert p.train.augment.rotation_deg == pytest.approx(first["augment"]["rotation_deg"])
    assert p.train.augment.noise == pytest.approx(recipe["augment"]["noise"]) and first["augment"]["noise"] == 0
    assert p.preprocess.val_fraction == pytest.approx(raw["preprocess"]["val_fraction"])
    assert p.download.mirrors == raw["download"]["mirrors"]


def test_unmodified_copy_validates(tmp_path: Path, base: dict[str, Any]) -> None:
    # Guards the helper itself: a round trip through safe_dump must not produce errors on its own.
    path = write_variant(tmp_path, base, lambda raw: None)
    assert params.load(path) == params.load(REPO_PARAMS)


def test_params_error_is_a_user_error() -> None:
    assert issubclass(ParamsError, UserError)
    assert issubclass(ParamsError, ValueError)


def test_wrong_type(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "lr", "fast")))
    assert "'train.lr'" in msg
    assert "'fast'" in msg
    assert "valid number" in msg
    assert str(tmp_path / "params.yaml") in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "bound"),
    [
        ("train", "lr", 0, "greater than 0"),
        ("train", "lr", -0.1, "greater than 0"),
        ("train", "batch_size", 0, "greater than or equal to 1"),
        ("preprocess", "val_fraction", 0, "greater than 0"),
        ("preprocess", "val_fraction", 1, "less than 1"),
        ("train", "epochs", 0, "greater than or equal to 1"),
        ("train", "dropout", 1.0, "less than 1"),
        ("train", "nproc", 0, "greater than or equal to 1"),
        ("train", "dropout", -0.1, "greater than or equal to 0"),
        ("train", "last_width", -1, "greater than or equal to 0"),
    ],
)
def test_out_of_range(tmp_path: Path, base: dict[str, Any], section: str, key: str, value: Any, bound: str) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key(section, key, value)))
    assert f"'{section}.{key}' = {value!r}" in msg
    assert bound in msg
    # exactly one problem reported: the mutated key
    assert msg.count("\n  - ") == 1


def test_unknown_model_lists_the_zoo(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "model", "resnet")))
    assert "'train.model' = 'resnet' is not in train.zoo; choose one of: " in msg
    assert all(name in msg for name in base["train"]["zoo"])


def test_unknown_architecture_lists_allowed_names(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "arch", "resnet")))
    assert "'train.arch' = 'resnet' is not allowed" in msg
    assert "'mlp'" in msg and "'cnn'" in msg


def test_first_stride_2_with_one_stage_is_refused_before_any_work(tmp_path: Path, base: dict[str, Any]) -> None:
    def one_strided_stage(params: dict[str, Any]) -> None:
        params["train"].update(stages=1, first_stride=2)

    msg = load_error(write_variant(tmp_path, base, one_strided_stage))
    assert "first_stride 2 replaces the first stage's max-pool and needs stages ≥ 2" in msg
    msg = load_error(write_variant(tmp_path, base, set_key("train", "first_stride", 3)))
    assert "'train.first_stride' = 3 is not allowed" in msg


def test_unknown_last_pool_lists_allowed_names(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "last_pool", "avg")))
    assert "'train.last_pool' = 'avg' is not allowed" in msg
    assert all(f"'{name}'" in msg for name in ("floor", "ceil", "none"))


def test_unknown_optimizer_lists_allowed_names(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "optimizer", "rmsprop")))
    assert "'train.optimizer'" in msg
    assert "'rmsprop'" in msg
    for name in ("adam", "adamw", "sgd"):
        assert f"'{name}'" in msg


def test_unknown_scheduler_lists_allowed_names(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, set_key("train", "scheduler", "linear")))
    assert "'train.scheduler'" in msg
    for name in ("none", "onecycle", "cosine", "step", "plateau"):
        assert f"'{name}'" in msg


def test_misspelled_key_suggests_the_right_one(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, rename_key("train", "epochs", "epoch")))
    assert "unknown key 'train.epoch'" in msg
    assert "Did you mean 'epochs'?" in msg
    assert "missing key" not in msg  # a train key left out takes the recipe's value


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path: Path, base: dict[str, Any]) -> None:
    # 'learning_rate' is too far from 'lr' for a did-you-mean; the allowed keys are listed instead.
    msg = load_error(write_variant(tmp_path, base, rename_key("train", "lr", "learning_rate")))
    assert "unknown key 'train.learning_rate'" in msg
    unknown_line = next(line for line in msg.splitlines() if "train.learning_rate" in line)
    allowed = unknown_line.split("Allowed keys here:")[1]
    assert {k.strip() for k in allowed.split(",")} == set(params.TrainParams.model_fields)


def test_unknown_section_suggests_section(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, lambda raw: raw.__setitem__("trian", {})))
    assert "unknown key 'trian'" in msg
    assert "Did you mean 'train'?" in msg


def test_unknown_nested_key(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, lambda raw: raw["train"]["augment"].__setitem__("rotate", 5)))
    assert "unknown key 'train.augment.rotate'" in msg
    line = next(line for line in msg.splitlines() if "train.augment.rotate" in line)
    # the allowed keys are those of the augment section, not of train
    allowed = {k.strip() for k in line.split("Allowed keys here:")[1].split(",")}
    assert allowed == {"rotation_deg", "zoom", "shift", "elastic_px", "elastic_scale", "interpolation",
                       "off_last_epochs", "thickness", "outline", "lowres", "blur", "erasing", "scribble",
                       "shading", "contrast", "noise", "robust_share", "robust_ops"}  # fmt: skip


def test_missing_section(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, lambda raw: raw.pop("train")))
    assert "missing key 'train'" in msg


def test_missing_required_key(tmp_path: Path, base: dict[str, Any]) -> None:
    msg = load_error(write_variant(tmp_path, base, lambda raw: raw["train"]["zoo"]["digits_cnn_clean"].pop("lr")))
    assert "missing key 'train.lr'" in msg
    assert msg.count("\n  - ") == 1


def test_a_complete_recipe_moved_from_the_top_of_the_zoo_is_named(tmp_path: Path, base: dict[str, Any]) -> None:
    """params.yaml written with sorted keys puts another zoo entry first: the fix named, then the keys missing."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(base))  # sorted keys
    first = sorted(base["train"]["zoo"])[0]
    required = ("arch", "epochs", "batch_size", "optimizer", "lr", "seed")  # the schema's, in its order
    lacking = [k for k in required if k not in base["train"]["zoo"][first]]
    assert lacking, "the sorted zoo's first entry sets every key: the test needs another mutation"
    assert load_error(path).splitlines()[1:] == [
        f"  - 'train.zoo.{first}' comes first, so it is the recipe the other entries change, but it lacks "
        f"{', '.join(lacking)}; 'digits_cnn_clean' sets every key: move it to the top of train.zoo (writing "
        f"params.yaml with sorted keys moves entries)",
        *[f"  - missing key 'train.{k}'" for k in lacking],
    ]


def test_optional_key_may_be_omitted(tmp_path: Path, base: dict[str, Any]) -> None:
    recipe = params.load(write_variant(tmp_path, base, lambda raw: raw["train"].pop("augment"))).train
    assert recipe.augment == params.load(REPO_PARAMS).train.augment  # left out of the train section: the recipe's
    def drop_augment(raw: dict[str, Any]) -> None:
        for name in ("digits_cnn_clean", "digits_cnn"):  # the first recipe, and what the default changes of it
            raw["train"]["zoo"][name].pop("augment")

    p = params.load(write_variant(tmp_path, base, drop_augment))
    assert p.train.augment == params.AugmentParams()  # left out of the recipes too: the schema's default


def test_several_problems_reported_together(tmp_path: Path, base: dict[str, Any]) -> None:
    def mutate(raw: dict[str, Any]) -> None:
        raw["train"]["lr"] = "fast"
        raw["train"]["optimizer"] = "rmsprop"

    msg = load_error(write_variant(tmp_path, base, mutate))
    assert "'train.lr'" in msg and "'train.optimizer'" in msg


@pytest.mark.parametrize("content", ["- a\n- b\n", "just a string\n", "42\n", ""])
def test_not_a_mapping(tmp_path: Path, content: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(content)
    msg = load_error(path)
    assert "expected a mapping" in msg
    assert str(path) in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    msg = load_error(path)
    assert "not valid YAML" in msg
    assert str(path) in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = load_error(path)
    assert "file not found" in msg
    assert str(path) in msg


def test_validate_accepts_a_mapping_directly(base: dict[str, Any]) -> None:
    assert params.validate(copy.deepcopy(base)) == params.load(REPO_PARAMS)
    with pytest.raises(ParamsError, match="custom-source"):
        params.validate([], "custom-source")


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    return git_project(tmp_path_factory.mktemp("dvc") / "digits", REPO_PARAMS.parent, lambda raw: None)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.lr=-1", "'train.lr' = -1: Input should be greater than 0"),
        ("train.optimizer=rmsprop", "'train.optimizer' = 'rmsprop' is not allowed; choose one of"),
        ("+train.epoch=3", "unknown key 'train.epoch'. Did you mean 'epochs'?"),
    ],
)
def test_dvc_exp_run_with_a_bad_value_fails_before_any_work(dvc_project: Path, setting: str, message: str) -> None:
    """`dvc exp run -S` with a bad value (`+key` adds a key DVC does not know): the first stage stops on validation
    with the clear message; no data,
    no MLflow run."""
    proc = subprocess.run(["dvc", "exp", "run", "-S", setting], cwd=dvc_project, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=dvc_project, check=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in output, output
    assert "Traceback" not in output
    assert not (dvc_project / "data" / "raw").exists() and not (dvc_project / "mlflow.db").exists()


def test_zoo_model_and_overrides() -> None:
    p = params.zoo_model("digits_cnn_fast", REPO_PARAMS)
    assert p.model == "digits_cnn_fast" and p.width == 8
    q = params.override(p, ["lr=0.003", "augment.off_last_epochs=2", "hidden=[64, 32]", "amp=false"])
    assert (q.lr, q.augment.off_last_epochs, q.hidden, q.amp) == (0.003, 2, [64, 32], False)
    assert q.width == p.width and p.lr != 0.003  # the rest kept, the original untouched


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lrr=0.1", "override 'lrr=0.1': expected KEY=VALUE with KEY a train param"),
        ("lr", "override 'lr': expected KEY=VALUE"),
        ("augment.rotate=5", "override 'augment.rotate=5': expected KEY=VALUE with KEY a train param"),
        ("epochs.max=3", "override 'epochs.max=3': 'train.epochs.max' is not a train param"),
        ("lr=-1", "'train.lr' = -1: Input should be greater than 0"),
        ("augment.off_last_epochs=-1", "'train.augment.off_last_epochs' = -1"),
    ],
)
def test_bad_overrides_are_clear_errors(item: str, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        params.override(params.zoo_model("digits_cnn", REPO_PARAMS), [item])
    assert message in str(err.value)


def test_zoo_model_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="'train.model' = 'nope' is not in train.zoo"):
        params.zoo_model("nope", REPO_PARAMS)
    with pytest.raises(ParamsError, match="file not found"):
        params.zoo_model("digits_cnn", tmp_path / "params.yaml")


ZOO = list(yaml.safe_load(REPO_PARAMS.read_text())["train"]["zoo"])


@pytest.mark.parametrize("model", ZOO)
def test_a_key_set_in_the_train_section_overrides_every_recipe(tmp_path: Path, base: dict[str, Any], model: str):
    """`dvc exp run -S train.model=M -S train.lr=X` writes these two keys: X is what trains, whatever M's recipe."""
    recipe = params.zoo_model(model, REPO_PARAMS)
    assert recipe.lr != 0.0123 and recipe.augment.off_last_epochs != 1

    def choose(raw: dict[str, Any]) -> None:
        raw["train"].update(model=model, lr=0.0123)
        raw["train"]["augment"]["off_last_epochs"] = 1

    p = params.load(write_variant(tmp_path, base, choose)).train
    assert p.lr == 0.0123 and p.augment.off_last_epochs == 1
    assert p.model_copy(update={"lr": recipe.lr, "augment": recipe.augment}) == recipe  # the rest: the recipe's


def test_null_keys_take_the_recipe_and_a_set_null_able_key_can_switch_a_feature_off(tmp_path, base):
    fast = params.load(write_variant(tmp_path, base, set_key("train", "model", "digits_cnn_fast"))).train
    assert (fast.width, fast.epochs, fast.ema_decay) == (8, 2, 0)
    default = params.load(REPO_PARAMS).train
    assert default.ema_decay == 0.999
    assert params.load(write_variant(tmp_path, base, set_key("train", "ema_decay", 0))).train.ema_decay == 0


@pytest.mark.parametrize(
    ("model", "key", "value", "words"),
    [
        ("digits_cnn", "hidden", [64], "'train.hidden' is set, but applies to mlp models only; model 'digits_cnn' "
                                        "is 'cnn'"),
        ("digits_cnn", "batchnorm", True, "'train.batchnorm' is set, but applies to mlp models only"),
        ("mlp_128_128", "width", 8, "'train.width' is set, but applies to cnn models only; model 'mlp_128_128' "
                                     "is 'mlp'"),
        ("digits_cnn", "momentum", 0.8, "'train.momentum' is set, but applies only with optimizer sgd; model "
                                         "'digits_cnn' uses optimizer 'adamw'"),
        ("digits_cnn", "step_size", 5, "'train.step_size' is set, but applies only with scheduler step"),
        ("mlp_128_128", "gamma", 0.3, "'train.gamma' is set, but applies only with scheduler step or plateau"),
        ("digits_cnn", "plateau_patience", 2, "'train.plateau_patience' is set, but applies only with scheduler "
                                               "plateau"),
    ],
)  # fmt: skip
def test_a_key_the_model_has_no_use_for_is_an_error(tmp_path, base, model: str, key: str, value, words: str):
    def mutate(raw: dict[str, Any]) -> None:
        raw["train"].update({"model": model, key: value})

    msg = load_error(write_variant(tmp_path, base, mutate))
    assert words in msg and "remove it or set it to null" in msg and msg.count("\n  - ") == 1


def test_a_key_that_applies_once_the_recipe_is_changed_is_accepted(tmp_path, base):
    def mutate(raw: dict[str, Any]) -> None:
        raw["train"].update(optimizer="sgd", momentum=0.8, scheduler="step", step_size=5, gamma=0.3)

    p = params.load(write_variant(tmp_path, base, mutate)).train
    assert (p.optimizer, p.momentum, p.scheduler, p.step_size, p.gamma) == ("sgd", 0.8, "step", 5, 0.3)


def test_in_use_leaves_out_what_the_recipe_has_no_use_for() -> None:
    cnn = params.in_use(params.zoo_model("digits_cnn", REPO_PARAMS))
    assert {"width", "head", "lr", "augment", "seed"} <= set(cnn)
    assert not {"hidden", "batchnorm", "momentum", "step_size", "gamma", "plateau_patience"} & set(cnn)
    mlp = params.in_use(params.zoo_model("mlp_512_256_128", REPO_PARAMS))  # adam with a step scheduler
    assert {"hidden", "dropout", "step_size", "gamma"} <= set(mlp)
    assert not {"width", "head", "last_pool", "momentum", "plateau_patience"} & set(mlp)
