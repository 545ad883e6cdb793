"""The experiment spec: pydantic models, YAML loading and dotted overrides.

A spec is a YAML file with the sections ``data``, ``model``, ``optim``,
``schedule`` and ``train``. Unknown keys are errors; a value out of range names
the field, the allowed range and the value received. The fully resolved config
(``ExperimentConfig.model_dump()``) is what gets logged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bpexp.errors import ConfigError

BUNDLED_DATASETS = ("digits", "iris", "wine", "breast_cancer", "mnist")
SYNTHETIC_DATASETS = ("blobs", "circles", "moons", "classification")
SCHEDULE_NAMES = (
    "constant",
    "step",
    "exponential",
    "triangular",
    "triangular2",
    "exp_range",
    "one_cycle",
    "cosine",
    "sequence",
)
STOP_REASONS = ("loss_threshold", "max_epochs", "early_stopping", "diverged")


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys and re-validates on assignment."""

    # inf and NaN are never meaningful in a spec (an infinite λ would only diverge)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- data


class DataConfig(StrictModel):
    """Where the samples come from, how they are split, and how they are manipulated."""

    name: str | None = Field(
        default="digits",
        description="a bundled dataset (digits, iris, wine, breast_cancer, mnist) or a synthetic "
        "generator (blobs, circles, moons, classification); ignored when path is set",
    )
    path: str | None = Field(default=None, description="a .npz, a .csv, or a folder of MNIST-format IDX files")
    label_column: str = Field(default="label", description="the label column of a .csv file")
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the synthetic generator (n_samples, noise, ...)"
    )
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="validation share when the source has no split")
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0, description="test share when the source has no split")
    standardize: bool = Field(default=True, description="z-score features, fitted on the training split only")
    per_class: int | None = Field(default=None, ge=1, description="keep this many training samples per class")
    imbalance: float | None = Field(
        default=None, ge=1.0, description="majority:minority ratio; class `majority_class` keeps all its samples"
    )
    majority_class: int = Field(default=0, ge=0, description="the class that keeps all samples under `imbalance`")
    label_noise: float = Field(default=0.0, ge=0.0, lt=1.0, description="share of training labels replaced by another class")
    order: Literal["shuffled", "fixed", "sorted"] = Field(
        default="shuffled",
        description="sample order per epoch: a new permutation, one permutation kept, or sorted by label",
    )

    @model_validator(mode="after")
    def _check_source(self) -> "DataConfig":
        if self.path is None:
            known = BUNDLED_DATASETS + SYNTHETIC_DATASETS
            if self.name not in known:
                raise ValueError(f"data.name must be one of {', '.join(known)} (or set data.path); got {self.name!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be < 1; got {self.val_fraction} + {self.test_fraction}"
            )
        return self


# --------------------------------------------------------------------------- model


class ModelConfig(StrictModel):
    """The network: the article's perceptron, softmax(A·x), or an MLP."""

    kind: Literal["perceptron", "mlp"] = "perceptron"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128], description="MLP hidden widths")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="MLP dropout on hidden layers (inverted dropout)")
    init: Literal["zeros", "small_random", "he"] = Field(
        default="zeros", description="weight init; default zeros for the perceptron, he for the MLP"
    )
    init_scale: float = Field(default=0.01, gt=0.0, description="std of the small_random init")
    l2: float = Field(default=0.0, ge=0.0, description="λ₂ in (1/n)·Σ loss_i + (λ₂/2)·‖W‖², biases excluded")
    dtype: Literal["float32", "float64"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _resolve_init(cls, raw: Any) -> Any:
        # Fill in the kind's default init, so the logged config says what was used.
        if isinstance(raw, dict) and raw.get("init") is None:
            raw = {**raw, "init": "he" if raw.get("kind") == "mlp" else "zeros"}
        return raw

    @model_validator(mode="after")
    def _check_init(self) -> "ModelConfig":
        if self.kind == "mlp" and self.init == "zeros":
            raise ValueError("model.init 'zeros' leaves every hidden unit identical in an MLP; use 'he' or 'small_random'")
        if self.kind == "perceptron" and self.init == "he":
            raise ValueError("model.init 'he' is for ReLU layers; the perceptron takes 'zeros' or 'small_random'")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("model.hidden must name at least one layer width for an MLP (use kind 'perceptron' for none); got []")
        return self



# ----------------------------------------------------------------------- optimiser


class OptimConfig(StrictModel):
    """The update rule and its constant learning rate λ (the schedule may vary it)."""

    name: Literal["sgd", "momentum", "nesterov", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0.0, description="λ; the peak of cyclical schedules unless schedule.max_lr is set")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-8, gt=0.0)
    batch_size: int | Literal["full"] = Field(
        default=32, description="1 is online SGD (the article), 'full' is full-batch gradient descent"
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _check_batch(cls, value: Any) -> int | str:
        if value == "full":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be an integer >= 1 or 'full'; got {value!r}")
        return value


# ------------------------------------------------------------------------ schedule


class _ScheduleBase(StrictModel):
    """Fields shared by the pieces of a schedule; lengths are given in epochs or iterations.

    The length is a stage's length inside a sequence; on a top-level one_cycle or
    cosine it sets the span of the anneal (default: the whole run).
    """

    epochs: float | None = Field(default=None, gt=0, description="stage length in epochs (or the anneal span)")
    iterations: int | None = Field(default=None, ge=1, description="stage length in iterations (or the anneal span)")

    @model_validator(mode="after")
    def _one_length(self) -> "_ScheduleBase":
        if self.epochs is not None and self.iterations is not None:
            raise ValueError("give schedule epochs or iterations, not both")
        return self


class ConstantSchedule(_ScheduleBase):
    name: Literal["constant"] = "constant"
    lr: float | None = Field(default=None, gt=0, description="λ; default optim.lr")


class StepSchedule(_ScheduleBase):
    name: Literal["step"] = "step"
    lr: float | None = Field(default=None, gt=0)
    step_epochs: float = Field(default=10, gt=0, description="drop λ every this many epochs")
    factor: float = Field(default=0.1, gt=0, le=1)


class ExponentialSchedule(_ScheduleBase):
    name: Literal["exponential"] = "exponential"
    lr: float | None = Field(default=None, gt=0)
    gamma: float = Field(default=0.95, gt=0, le=1, description="λ multiplier per epoch")


class _CyclicBase(_ScheduleBase):
    base_lr: float | None = Field(default=None, gt=0, description="lower bound; default max_lr / 4 (Smith's rule of thumb)")
    max_lr: float | None = Field(default=None, gt=0, description="upper bound; default optim.lr")
    stepsize: int | None = Field(default=None, ge=1, description="half cycle in iterations")
    stepsize_epochs: float | None = Field(
        default=None, gt=0, description="half cycle in epochs; Smith recommends 2-10 (default 4)"
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> "_CyclicBase":
        if self.base_lr is not None and self.max_lr is not None and self.base_lr >= self.max_lr:
            raise ValueError(f"schedule.base_lr must be < schedule.max_lr; got {self.base_lr} >= {self.max_lr}")
        if self.stepsize is not None and self.stepsize_epochs is not None:
            raise ValueError("give schedule.stepsize or schedule.stepsize_epochs, not both")
        return self


class TriangularSchedule(_CyclicBase):
    name: Literal["triangular"] = "triangular"


class Triangular2Schedule(_CyclicBase):
    name: Literal["triangular2"] = "triangular2"


class ExpRangeSchedule(_CyclicBase):
    name: Literal["exp_range"] = "exp_range"
    gamma: float = Field(default=0.99994, gt=0, le=1, description="decay per iteration (Smith's CIFAR-10 value)")
    decay_bounds: bool = Field(
        default=False,
        description="false: the amplitude decays by γ^t (PyTorch/Keras CLR); true: the whole λ decays, "
        "both bounds included (the paper's wording)",
    )


class OneCycleSchedule(_ScheduleBase):
    name: Literal["one_cycle"] = "one_cycle"
    max_lr: float | None = Field(default=None, gt=0)
    pct_start: float = Field(default=0.3, gt=0, lt=1)
    div_factor: float = Field(default=25.0, gt=0)
    final_div_factor: float = Field(default=1e4, gt=0)


class CosineSchedule(_ScheduleBase):
    name: Literal["cosine"] = "cosine"
    max_lr: float | None = Field(default=None, gt=0)
    min_lr: float = Field(default=0.0, ge=0)
    restart_epochs: float | None = Field(default=None, gt=0, description="first period of warm restarts (SGDR T_0)")
    t_mult: int = Field(default=1, ge=1, description="period multiplier after each restart")


Stage = Annotated[
    Union[
        ConstantSchedule,
        StepSchedule,
        ExponentialSchedule,
        TriangularSchedule,
        Triangular2Schedule,
        ExpRangeSchedule,
        OneCycleSchedule,
        CosineSchedule,
    ],
    Field(discriminator="name"),
]


class SequenceSchedule(_ScheduleBase):
    """Stages run one after another, each for its `epochs` or `iterations` (the last may run on)."""

    name: Literal["sequence"] = "sequence"
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_lengths(self) -> "SequenceSchedule":
        for i, stage in enumerate(self.stages[:-1]):
            if stage.epochs is None and stage.iterations is None:
                raise ValueError(f"schedule.stages[{i}] needs epochs or iterations (only the last stage may run on)")
        return self


ScheduleConfig = Annotated[Union[Stage, SequenceSchedule], Field(discriminator="name")]


# --------------------------------------------------------------------------- train


class TrainConfig(StrictModel):
    """The loop's budget and stop rules."""

    max_epochs: int = Field(default=100, ge=1)
    stop_loss: float | None = Field(default=None, gt=0, description="stop when the monitored loss is below this")
    stop_on: Literal["train", "val"] = Field(default="train", description="the loss that stop_loss watches")
    patience: int | None = Field(default=None, ge=1, description="early stopping on validation loss; best weights restored")
    diverge_factor: float = Field(
        default=10.0, gt=1, description="diverged when the training loss exceeds this multiple of its initial value"
    )
    record_steps: bool = Field(default=False, description="also record the loss and λ of every step")


# ----------------------------------------------------------------------- whole spec


class ExperimentConfig(StrictModel):
    """One training job: everything needed to reproduce it bit for bit."""

    name: str = "experiment"
    experiment: str | None = Field(default=None, description="MLflow experiment name; default bpexp")
    seed: int = Field(default=0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ConstantSchedule)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_schedule_bounds(self) -> "ExperimentConfig":
        # Bounds left unset fall back on optim.lr, so only here can they be compared.
        stages = self.schedule.stages if isinstance(self.schedule, SequenceSchedule) else [self.schedule]
        for i, stage in enumerate(stages):
            where = f"schedule.stages[{i}]" if isinstance(self.schedule, SequenceSchedule) else "schedule"
            peak = getattr(stage, "max_lr", None) or self.optim.lr
            base = getattr(stage, "base_lr", None)
            if base is not None and base >= peak:
                raise ValueError(f"{where}.base_lr must be < the peak λ {peak:g} (max_lr, or optim.lr); got {base:g}")
            floor = getattr(stage, "min_lr", None)
            if floor is not None and floor >= peak:
                raise ValueError(f"{where}.min_lr must be < the peak λ {peak:g} (max_lr, or optim.lr); got {floor:g}")
        return self


# ------------------------------------------------------------------------ loading


def format_validation_error(error: ValidationError, source: str = "spec") -> str:
    """Turn pydantic's report into one line per problem, each naming the field.

    Returns:
        A message such as ``spec: optim.lr: must be > 0 (got -1)``.
    """
    lines = []
    for item in error.errors():
        loc = _field_path(item["loc"])
        kind = item["type"]
        given = item.get("input")
        ctx = item.get("ctx") or {}
        if kind == "extra_forbidden":
            lines.append(f"{source}: unknown key {loc!r}")
            continue
        if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
            bound = next(iter(ctx.values()))
            lines.append(f"{source}: {loc} must be {op} {bound} (got {given!r})")
            continue
        if kind == "finite_number":
            lines.append(f"{source}: {loc} must be a finite number (got {given!r})")
            continue
        if kind == "union_tag_invalid":
            lines.append(f"{source}: {loc}.name must be one of {ctx.get('expected_tags')}; got {ctx.get('tag')!r}")
            continue
        message = str(item["msg"]).removeprefix("Value error, ")
        if kind == "literal_error":
            message = f"{message} (got {given!r})"
        lines.append(f"{source}: {loc}: {message}" if loc else f"{source}: {message}")
    return "; ".join(lines)


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic inserts the discriminator value ("triangular") into the location path right
    # after the union field (schedule, or a stage's index); drop it there only, so that a key
    # which happens to share a schedule's name (schedule.step) is still named.
    parts = []
    for i, part in enumerate(loc):
        prev = loc[i - 1] if i else None
        if isinstance(part, str) and part in SCHEDULE_NAMES and (prev == "schedule" or isinstance(prev, int)):
            continue
        parts.append(str(part))
    return ".".join(parts)


def config_from_dict(raw: dict[str, Any], source: str = "spec") -> ExperimentConfig:
    """Validate a plain dict as an experiment spec.

    Raises:
        ConfigError: naming each unknown key or out-of-range field.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a spec must be a mapping of sections, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``.

    Raises:
        ConfigError: when the file is missing, unreadable, not YAML or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the spec ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a spec must be a mapping of sections, got {type(raw).__name__}")
    return raw


REMOVE = object()
"""An override value that deletes the key, so the field falls back on its default."""


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted keys (``optim.lr``) set to the given values.

    ``None`` values are skipped, so unset CLI flags leave the spec alone; :data:`REMOVE`
    deletes the key. Setting ``schedule.name`` to a different schedule drops the old
    schedule's fields.
    """
    merged = _deep_copy(raw)
    for dotted, value in overrides.items():
        if value is None:
            continue
        parts = dotted.split(".")
        node = merged
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if parts == ["schedule", "name"] and node.get("name") not in (None, value):
            node.clear()
        if value is REMOVE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def parse_scalar(text: str) -> Any:
    """Parse a ``--set key=value`` value the way YAML would (numbers, booleans, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load a spec file (or the defaults), apply dotted overrides and validate.

    Raises:
        ConfigError: for a missing or malformed file, an unknown key or a value out of range.
    """
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or {})
    return config_from_dict(raw, source=str(path) if path is not None else "config")


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys (lists become their YAML text), e.g. for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (list, dict)):
            flat[name] = yaml.safe_dump(value, default_flow_style=True).strip()
        else:
            flat[name] = value
    return flat


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or inf float, at any depth of dicts, lists and tuples, as None.

    JSON has neither; tuples become lists. Other values pass unchanged.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
