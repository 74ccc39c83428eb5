"""Typed schema for params.yaml, validated as a whole before any stage does work."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from digits.errors import UserError

PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadParams(Section):
    local_dir: str | None = None
    mirrors: list[Annotated[str, Field(pattern=r"^https?://\S+$")]]
    registry_mirror: bool = True
    timeout_s: PositiveFloat = 10.0


class PreprocessParams(Section):
    val_fraction: Annotated[float, Field(gt=0, lt=1)]
    seed: int
    train_limit: Annotated[int, Field(ge=100)] | None = None
    test_limit: Annotated[int, Field(ge=10)] | None = None


class AugmentParams(Section):
    rotation_deg: Annotated[float, Field(ge=0, le=180)] = 0.0
    zoom: Fraction = 0.0
    shift: Fraction = 0.0
    elastic_px: Annotated[float, Field(ge=0, le=10)] = 0.0
    elastic_scale: Annotated[float, Field(ge=1, le=28)] = 4.0
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    off_last_epochs: Annotated[int, Field(ge=0)] = 0  # the last N epochs train on un-augmented images


class TrainParams(Section):
    model: str  # the name of the entry of ``train.zoo`` whose keys are applied on top of these
    arch: Literal["mlp", "cnn"]
    hidden: list[Annotated[int, Field(ge=1)]] = [128, 128]
    batchnorm: bool = False
    width: Annotated[int, Field(ge=1)] = 32
    stages: Annotated[int, Field(ge=1, le=3)] = 3
    depth: Annotated[int, Field(ge=1, le=4)] = 1
    head: Annotated[int, Field(ge=0)] = 0
    block_dropout: Fraction = 0.0
    last_width: Annotated[int, Field(ge=1)] | None = None  # cnn: channels of the last stage (None: width·2^(stages−1))
    last_pool: Literal["floor", "ceil", "none"] = "floor"  # cnn: the last stage's 2×2 max-pool (7 px → 3, 4 or 7)
    dropout: Fraction = 0.0
    init: Literal["default", "xavier"] = "default"
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: PositiveFloat
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Fraction = 0.9
    scheduler: Literal["none", "onecycle", "cosine", "step", "plateau"] = "none"
    step_size: Annotated[int, Field(ge=1)] = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5
    plateau_patience: Annotated[int, Field(ge=0)] = 3
    label_smoothing: Fraction = 0.0
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None
    augment: AugmentParams = AugmentParams()
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    deterministic: bool = True
    channels_last: bool = True
    amp: bool = True
    compile: bool = False
    nproc: Annotated[int, Field(ge=1, le=256)] = 1  # >1: the stage relaunches itself under torchrun (DDP)


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1)] = 256
    compile: bool = True  # torch.compile the inference model (Inductor, weights frozen)
    seed: int = 0  # robustness perturbations and the sample of predictions shown
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15
    misclassified_shown: Annotated[int, Field(ge=1, le=200)] = 36


class ReportParams(Section):
    title: str = "digits: MNIST run report"
    baseline_rev: str = "HEAD"  # git revision whose committed metrics the run is compared with


class RegisterParams(Section):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] = "digits-mnist"


with warnings.catch_warnings():  # the section `register` shadows ABCMeta.register, harmlessly: fields win
    warnings.filterwarnings("ignore", r'Field name "register"', UserWarning)

    class Params(Section):
        download: DownloadParams
        preprocess: PreprocessParams
        train: TrainParams
        evaluate: EvaluateParams
        report: ReportParams
        register: RegisterParams = RegisterParams()


class ParamsError(UserError, ValueError):
    """params.yaml is missing, malformed or violates the schema."""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that holds the last element of ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(err: dict[str, Any], model: type[BaseModel] | None = None, prefix: tuple[str, ...] = ()) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in prefix + loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model or Params, loc)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{key}'.{suggestion} Allowed keys here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{key}' = {err.get('input')!r} is not allowed; choose one of {expected}"
    return f"'{key}' = {err.get('input')!r}: {err['msg']}"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_zoo(train: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Apply ``train.zoo[train.model]`` over the train keys; check every zoo entry. Returns (train, problems)."""
    train = dict(train)
    zoo = train.pop("zoo", None) or {}
    if not isinstance(zoo, dict):
        return train, ["'train.zoo' must map model names to train keys"]
    zoo = {name: {} if entry is None else entry for name, entry in zoo.items()}  # `name:` alone = no overrides
    problems = []
    for name, overrides in zoo.items():
        if not isinstance(overrides, dict) or {"model", "zoo"} & set(overrides):
            problems.append(f"'train.zoo.{name}' must be a mapping of train keys (other than model/zoo)")
            continue
        try:
            TrainParams.model_validate(_merge(train, overrides) | {"model": name})
        except ValidationError as exc:  # report only what the entry itself sets; base errors come later
            own = [e for e in exc.errors() if e["loc"][0] in overrides]
            problems += [_describe(e, TrainParams, ("train", "zoo", str(name))) for e in own]
    name = train.get("model")
    if name is None:  # reported by the schema as a missing key
        return train, problems
    if name not in zoo:
        choices = ", ".join(map(str, zoo)) or "none defined"
        problems.append(f"'train.model' = {name!r} is not in train.zoo; choose one of: {choices}")
        return train, problems
    return (_merge(train, zoo[name]) if isinstance(zoo[name], dict) else train), problems


def validate(raw: Any, source: str = "params") -> Params:
    """Validate a parsed params mapping (the train.zoo entry applied), raising ParamsError with one line per problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    problems: list[str] = []
    if isinstance(raw.get("train"), dict):
        train, problems = _apply_zoo(raw["train"])
        raw = {**raw, "train": train}
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems += [_describe(e) for e in exc.errors()]
    if problems:
        raise ParamsError(f"{source} is invalid:\n  - " + "\n  - ".join(problems))
    return params


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    return validate(_read(Path(path)), str(path))


def zoo_model(name: str, path: str | Path = "params.yaml") -> TrainParams:
    """The train params of ``train.zoo`` model ``name`` in params.yaml (``dvc exp run -S train.model=name``)."""
    raw = _read(Path(path))
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        raise ParamsError(f"{path}: no 'train' section")
    return validate({**raw, "train": {**raw["train"], "model": name}}, str(path)).train


def override(p: TrainParams, items: list[str]) -> TrainParams:
    """``p`` with ``KEY=VALUE`` overrides (``augment.zoom=0`` for nested keys; values parsed as YAML), validated."""
    train = p.model_dump()
    for item in items:
        key, sep, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = train
        for part in parents:
            node = node.get(part)
            if not isinstance(node, dict):
                raise ParamsError(f"override {item!r}: 'train.{key}' is not a train param")
        if not sep or leaf not in node:
            raise ParamsError(f"override {item!r}: expected KEY=VALUE with KEY a train param, e.g. lr=0.01")
        node[leaf] = yaml.safe_load(value)
    try:
        return TrainParams.model_validate(train)
    except ValidationError as exc:
        problems = [_describe(e, TrainParams, ("train",)) for e in exc.errors()]
        raise ParamsError("invalid override:\n  - " + "\n  - ".join(problems)) from None
