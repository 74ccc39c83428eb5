"""Typed schema for params.yaml, validated as a whole before any stage does work."""

from __future__ import annotations

import difflib
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


class TrainParams(Section):
    model: Literal["mlp", "cnn"]
    hidden: list[Annotated[int, Field(ge=1)]] = [128, 128]
    width: Annotated[int, Field(ge=1)] = 32
    dropout: Fraction = 0.0
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
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    deterministic: bool = True


class EvaluateParams(Section):
    batch_size: Annotated[int, Field(ge=1)] = 4096


class ReportParams(Section):
    title: str = "digits: MNIST run report"


class Params(Section):
    download: DownloadParams
    preprocess: PreprocessParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams


class ParamsError(UserError, ValueError):
    """params.yaml is missing, malformed or violates the schema."""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(Params, loc)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{key}'.{suggestion} Allowed keys here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{key}' = {err.get('input')!r} is not allowed; choose one of {expected}"
    return f"'{key}' = {err.get('input')!r}: {err['msg']}"


def validate(raw: Any, source: str = "params") -> Params:
    """Validate a parsed params mapping, raising ParamsError with one line per problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n  - " + "\n  - ".join(lines)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return validate(raw, str(path))
