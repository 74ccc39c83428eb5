"""Typed schema for params.yaml, validated as a whole before any stage does work."""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
    # digits.augmentations, each per sample and 0: off
    thickness: Annotated[float, Field(ge=0, le=1)] = 0.0  # share of a 3×3 dilation/erosion blended in, at most
    outline: Annotated[float, Field(ge=0, le=1)] = 0.0  # probability of hollow strokes (morphological gradient)
    lowres: Annotated[float, Field(ge=0, le=0.75)] = 0.0  # share of the side lost by down- and upscaling, at most
    blur: Annotated[float, Field(ge=0, le=5)] = 0.0  # Gaussian σ in px, at most
    erasing: Annotated[float, Field(ge=0, le=1)] = 0.0  # probability of erasing a rectangle
    scribble: Annotated[float, Field(ge=0, le=1)] = 0.0  # probability of a stray stroke across the image
    shading: Annotated[float, Field(ge=0, le=4)] = 0.0  # weight of an uneven light field, at most
    contrast: Annotated[float, Field(ge=0, le=1)] = 0.0  # gain e^(±contrast), background lift ≤ 0.1·contrast
    noise: Annotated[float, Field(ge=0, le=1)] = 0.0  # Gaussian noise σ, at most
    robust_share: Annotated[float, Field(ge=0, le=1)] = 1.0  # share of the images that get the nine above
    robust_ops: Annotated[int, Field(ge=0, le=9)] = 0  # how many of the nine each of those images gets (0: all)


def _ordered(span: tuple[float, float]) -> tuple[float, float]:
    if span[0] > span[1]:
        raise ValueError(f"expected [low, high] with low ≤ high, got {list(span)}")
    return span


def _unique(names: list[str]) -> list[str]:
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"listed more than once: {', '.join(twice)}")
    return names


Families = Annotated[list[str], Field(min_length=1), AfterValidator(_unique)]


class RenderParams(Section):
    seed: int
    per_class: Annotated[int, Field(ge=1)]  # images of each digit in each part
    size_px: Annotated[tuple[Annotated[int, Field(ge=8, le=400)], Annotated[int, Field(ge=8, le=400)]],
                       AfterValidator(_ordered)]  # fmt: skip
    stroke: Annotated[tuple[Fraction, Fraction], AfterValidator(_ordered)]  # extra stroke width / font size
    slant: Annotated[tuple[Annotated[float, Field(ge=-1, le=1)], Annotated[float, Field(ge=-1, le=1)]],
                     AfterValidator(_ordered)]  # fmt: skip
    position: Annotated[float, Field(ge=0, le=1)]  # largest offset from the canvas centre / font size
    selection: Families
    heldout: Families

    @model_validator(mode="after")
    def _disjoint(self) -> RenderParams:
        if both := [n for n in self.selection if n in self.heldout]:
            raise ValueError(f"families in both selection and heldout: {', '.join(both)}")
        return self


class TrainParams(Section):
    model: str  # the entry of ``train.zoo`` whose recipe these are (with the keys params.yaml sets applied)
    arch: Literal["mlp", "cnn"]
    hidden: list[Annotated[int, Field(ge=1)]] = [128, 128]
    batchnorm: bool = False
    width: Annotated[int, Field(ge=1)] = 32
    stages: Annotated[int, Field(ge=1, le=3)] = 3
    depth: Annotated[int, Field(ge=1, le=4)] = 1
    head: Annotated[int, Field(ge=0)] = 0
    block_dropout: Fraction = 0.0
    last_width: Annotated[int, Field(ge=0)] = 0  # cnn: channels of the last stage (0: width·2^(stages−1))
    last_pool: Literal["floor", "ceil", "none"] = "floor"  # cnn: the last stage's 2×2 max-pool (7 px → 3, 4 or 7)
    first_stride: Literal[1, 2] = 1  # cnn: 2: the first conv strides 28 → 14 px in place of the first max-pool
    dropout: Fraction = 0.0
    init: Literal["default", "xavier"] = "default"
    stretch: bool = False  # the model's first step maps each image's darkest pixel to 0 and its brightest to 1
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
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0  # 0: off
    augment: AugmentParams = AugmentParams()
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.0  # 0: off
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    deterministic: bool = True
    channels_last: bool = True
    amp: bool = True
    compile: bool = False
    nproc: Annotated[int, Field(ge=1, le=256)] = 1  # >1: the stage relaunches itself under torchrun (DDP)

    @field_validator("first_stride")
    @classmethod
    def _first_stride_needs_a_second_stage(cls, value: int, info: ValidationInfo) -> int:
        if value == 2 and info.data.get("arch") == "cnn" and info.data.get("stages", 2) < 2:
            raise ValueError("first_stride 2 replaces the first stage's max-pool and needs stages ≥ 2")
        return value


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
        render: RenderParams
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
    if err["type"] == "value_error":  # a validator's own message
        return f"'{key}': {err['ctx']['error']}"
    if err["type"] == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"'{key}' = {err.get('input')!r} is not allowed; choose one of {expected}"
    return f"'{key}' = {err.get('input')!r}: {err['msg']}"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


ARCHITECTURE_KEYS = {  # the train keys that define each architecture (stored in checkpoints to rebuild it)
    "mlp": ("hidden", "dropout", "batchnorm", "stretch"),
    "cnn": ("width", "dropout", "depth", "head", "stages", "block_dropout", "last_width", "last_pool", "first_stride",
            "stretch"),
}
ONLY_WITH = {  # train keys that mean something only with one of these values of another key
    "momentum": ("optimizer", ("sgd",)),
    "step_size": ("scheduler", ("step",)),
    "gamma": ("scheduler", ("step", "plateau")),
    "plateau_patience": ("scheduler", ("plateau",)),
}


def explicit_keys(section: dict[str, Any], schema: type[BaseModel]) -> dict[str, Any]:
    """The keys of a params section that are set, i.e. not null (nested sections such as ``augment`` included),
    and every key the schema does not know, null or not (so that it is reported)."""
    out = {}
    for key, value in section.items():
        field = schema.model_fields.get(key)
        if field is None:
            out[key] = value
        elif isinstance(value, dict) and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if inner := explicit_keys(value, field.annotation):
                out[key] = inner
        elif value is not None:
            out[key] = value
    return out


def keys_without_use(train: dict[str, Any]) -> set[str]:
    """The train keys the recipe ``train`` has no use for: the other architecture's keys (when ``arch`` is a known
    one), ``momentum`` without sgd, ``step_size``/``gamma``/``plateau_patience`` without their scheduler."""
    unused = set()
    if train.get("arch") in ARCHITECTURE_KEYS:
        unused = {k for keys in ARCHITECTURE_KEYS.values() for k in keys} - set(ARCHITECTURE_KEYS[train["arch"]])
    return unused | {k for k, (other, values) in ONLY_WITH.items() if train.get(other) not in values}


def _unused_keys(explicit: dict[str, Any], train: dict[str, Any]) -> list[str]:
    """A problem for each explicitly set key that the resolved recipe ``train`` has no use for."""
    problems = []
    for key in sorted(keys_without_use(train) & set(explicit), key=list(explicit).index):
        if key in ONLY_WITH:
            other, values = ONLY_WITH[key]
            problems.append(f"'train.{key}' is set, but applies only with {other} {' or '.join(values)}; "
                            f"model {train.get('model')!r} uses {other} {train.get(other)!r}: remove it or set it "
                            f"to null")  # fmt: skip
        else:
            owners = [a for a, keys in ARCHITECTURE_KEYS.items() if key in keys]
            problems.append(f"'train.{key}' is set, but applies to {'/'.join(owners)} models only; model "
                            f"{train.get('model')!r} is {train['arch']!r}: remove it or set it to null")  # fmt: skip
    return problems


def in_use(p: TrainParams) -> dict[str, Any]:
    """The train params as a dict without the keys the recipe has no use for (``keys_without_use``): what MLflow
    logs."""
    values = p.model_dump()
    unused = keys_without_use(values)
    return {k: v for k, v in values.items() if k not in unused}


def _complete_recipe_not_first(zoo: dict[str, Any], explicit: dict[str, Any]) -> str | None:
    """A problem when the first zoo entry lacks required keys that a later entry sets in full: the complete recipe was
    moved from the top (as by a tool that writes YAML with sorted keys). None otherwise."""
    required = [k for k, f in TrainParams.model_fields.items() if f.is_required() and k != "model"]
    first_name, first = next(iter(zoo.items()))
    lacking = [k for k in required if k not in first and k not in explicit]
    complete = [n for n, e in zoo.items() if isinstance(e, dict) and all(k in e or k in explicit for k in required)]
    if not lacking or not complete:
        return None
    return (f"'train.zoo.{first_name}' comes first, so it is the recipe the other entries change, but it lacks "
            f"{', '.join(lacking)}; '{complete[0]}' sets every key: move it to the top of train.zoo (writing "
            f"params.yaml with sorted keys moves entries)")


def _apply_zoo(train: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Resolve the train section: ``train.zoo[train.model]`` (the first entry, then what this one changes), then
    every key the section sets (not null). Every zoo entry is checked. Returns (train, problems)."""
    zoo = train.get("zoo") or {}
    if not isinstance(zoo, dict) or not zoo:
        return train, ["'train.zoo' must map model names to recipes (train keys), the first one complete"]
    zoo = {name: {} if entry is None else entry for name, entry in zoo.items()}  # `name:` alone = the first recipe
    explicit = explicit_keys({k: v for k, v in train.items() if k not in ("model", "zoo")}, TrainParams)
    first = next(iter(zoo.values()))
    if not isinstance(first, dict):
        return train, [f"'train.zoo.{next(iter(zoo))}' (the first recipe) must be a mapping of train keys"]
    problems = [moved] if (moved := _complete_recipe_not_first(zoo, explicit)) else []
    for name, entry in zoo.items():
        if not isinstance(entry, dict) or {"model", "zoo"} & set(entry):
            problems.append(f"'train.zoo.{name}' must be a mapping of train keys (other than model/zoo)")
            continue
        try:
            TrainParams.model_validate(_merge(_merge(first, entry), explicit) | {"model": name})
        except ValidationError as exc:  # report only what the entry itself sets; the others are reported below
            own = [e for e in exc.errors() if e["loc"][0] in entry and e["loc"][0] not in explicit]
            problems += [_describe(e, TrainParams, ("train", "zoo", str(name))) for e in own]
    name = train.get("model")
    if name is None:  # reported by the schema as a missing key
        return explicit, problems
    if name not in zoo:
        choices = ", ".join(map(str, zoo))
        problems.append(f"'train.model' = {name!r} is not in train.zoo; choose one of: {choices}")
        return explicit | {"model": name}, problems
    resolved = _merge(_merge(first, zoo[name]) if isinstance(zoo[name], dict) else first, explicit) | {"model": name}
    return resolved, problems + _unused_keys(explicit, resolved)


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
