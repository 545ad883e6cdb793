"""The sweep spec: a base experiment spec plus a validated ``sweep:`` section.

A sweep spec is an experiment spec (the sections of
:class:`~bpexp.config.ExperimentConfig`) with one more section::

    sweep:
      n_trials: 30
      sampler: tpe                 # tpe, random, grid, cmaes
      pruner: median               # median, hyperband, none
      objective: val_loss          # val_loss, val_accuracy, iterations_to_target, or a list of two
      space:
        lr: auto                   # range test first; λ range and CLR bounds centred on it
        schedule.name: {choices: [constant, triangular, triangular2, exp_range, one_cycle]}
        train.stop_loss: {low: 0.01, high: 0.3, log: true}
        optim.batch_size: {choices: [16, 32, 64]}

Everything is checked before any run starts: unknown keys, empty or inverted
ranges, λ bounds ≤ 0, unknown schedules, values the base config would refuse, and
objectives that cannot be reached (a target accuracy above 1). Each message names
the field.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bpexp.config import (
    SCHEDULE_NAMES,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    format_validation_error,
    load_yaml,
)
from bpexp.errors import ConfigError

#: objective name → (default direction, what it measures)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "val_loss": ("minimize", "validation cross-entropy of the final weights"),
    "val_accuracy": ("maximize", "validation accuracy of the final weights"),
    "iterations_to_target": (
        "minimize",
        "optimiser steps until the validation accuracy first reaches target_accuracy "
        "(Smith 2015, arXiv 1506.01186, Table 1: iterations to reach a given accuracy)",
    ),
}
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
# Schedules a sweep may choose among (a sequence has no single set of bounds to search).
SWEEP_SCHEDULES = tuple(name for name in SCHEDULE_NAMES if name != "sequence")
# Keys whose values are learning rates or thresholds: a bound ≤ 0 is meaningless for them.
POSITIVE_KEYS = ("optim.lr", "schedule.lr", "schedule.base_lr", "schedule.max_lr", "train.stop_loss")
AUTO_LR_KEY = "lr"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A numeric range: ``{low, high, log, step}``; ints stay ints when the config field is an int."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite (got low={self.low}, high={self.high})")
        if self.low >= self.high:
            kind = "empty" if self.low == self.high else "inverted"
            raise ValueError(f"an {kind} range: low must be < high (got low={self.low:g}, high={self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got low={self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        return self


class Choices(_Strict):
    """A categorical parameter: ``{choices: [...]}`` (numbers, strings, booleans)."""

    choices: list[Union[bool, int, float, str]] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _unique(cls, values: list) -> list:
        seen = []
        for value in values:
            if value in seen:
                raise ValueError(f"choices must be unique; {value!r} appears twice")
            seen.append(value)
        return values


class AutoLr(_Strict):
    """``lr: auto`` — the range test's settings, and how wide the λ range is around its suggestion."""

    start_lr: float = Field(default=1e-4, gt=0, description="first λ of the range test")
    end_lr: float = Field(default=10.0, gt=0, description="last λ of the range test")
    epochs: int = Field(default=4, ge=1, description="epochs the range test runs (Smith: a few epochs)")
    spread: float = Field(
        default=3.0,
        gt=1,
        description="optim.lr is searched on [max_lr/spread, max_lr·spread], log scale, around the "
        "range test's max_lr suggestion",
    )

    @model_validator(mode="after")
    def _check(self) -> "AutoLr":
        if self.start_lr >= self.end_lr:
            raise ValueError(f"lr_find.start_lr must be < lr_find.end_lr (got {self.start_lr:g} >= {self.end_lr:g})")
        return self


Distribution = Union[Range, Choices]


class PrunerConfig(_Strict):
    """Which pruner stops unpromising trials early, and when it may start."""

    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(default=5, ge=0, description="median: trials that run to the end before any is pruned")
    warmup_epochs: int = Field(
        default=3, ge=0, description="median: epochs a trial runs before it can be pruned; hyperband: its min_resource"
    )
    reduction_factor: int = Field(default=3, ge=2, description="hyperband: η, the share 1/η kept per bracket rung")


class SamplerConfig(_Strict):
    """Which sampler proposes trials."""

    name: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    startup_trials: int = Field(default=8, ge=0, description="tpe/cmaes: random trials before the model takes over")


class SweepSection(_Strict):
    """The ``sweep:`` section of a sweep spec."""

    study_name: str | None = Field(default=None, description="Optuna study name; default the spec's name")
    n_trials: int = Field(default=20, ge=1, description="finished trials (complete + pruned) to reach in total")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    objective: list[str] = Field(default_factory=lambda: ["val_loss"], min_length=1, max_length=2)
    direction: list[Literal["minimize", "maximize"]] | None = None
    target_accuracy: float | None = Field(default=None, description="iterations_to_target: the accuracy to reach, in (0, 1]")
    seed: int = Field(default=0, ge=0, description="sampler seed (each worker adds its own offset)")
    lr_find: AutoLr = Field(default_factory=AutoLr)
    curves: Literal["best", "all", "none"] = Field(
        default="best",
        description="curves.png per trial run: only the best trial's (drawn at the end), every trial's, or none; "
        "drawing costs far more than recording, and the MLflow UI plots every trial's metrics anyway",
    )
    metrics: Literal["curves", "all"] = Field(
        default="curves",
        description="per-epoch metrics of each trial run: the learning curves (lr, train/val loss and accuracy), "
        "or every History series (adding the weight, update and gradient norms, iterations and batch loss); "
        "each run's history.json holds them all either way, and each metric row costs the store a write",
    )
    heartbeat_interval: int = Field(default=5, ge=1, description="RDB storage: seconds between a trial's heartbeats")
    grace_period: int = Field(default=20, ge=2, description="RDB storage: seconds without heartbeat before a trial is failed")
    space: dict[str, Any] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for one, many in (("objective", "objectives"), ("direction", "directions")):
            if many in raw:
                if one in raw:
                    raise ValueError(f"give sweep.{one} or sweep.{many}, not both")
                raw[one] = raw.pop(many)
            if isinstance(raw.get(one), str):
                raw[one] = [raw[one]]
        for key in ("sampler", "pruner"):
            if isinstance(raw.get(key), str):
                raw[key] = {"name": raw[key]}
        return raw

    @field_validator("objective")
    @classmethod
    def _known_objectives(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}")
        if len(set(names)) != len(names):
            raise ValueError(f"the two objectives must differ (got {names})")
        return names

    @field_validator("target_accuracy")
    @classmethod
    def _reachable(cls, value: float | None) -> float | None:
        if value is not None and not (0 < value <= 1):
            raise ValueError(f"an accuracy is in (0, 1]; {value:g} can never be reached")
        return value

    @model_validator(mode="after")
    def _check(self) -> "SweepSection":
        if self.direction is not None and len(self.direction) != len(self.objective):
            raise ValueError(f"sweep.direction gives {len(self.direction)} directions for {len(self.objective)} objectives")
        if "iterations_to_target" in self.objective and self.target_accuracy is None:
            raise ValueError("sweep.target_accuracy is needed by the iterations_to_target objective")
        multi = len(self.objective) > 1
        if multi and self.pruner.name != "none":
            raise ValueError("sweep.pruner: Optuna cannot prune a multi-objective study; set pruner: none")
        if multi and self.sampler.name == "cmaes":
            raise ValueError("sweep.sampler: CMA-ES optimises one objective; use tpe, random or grid for two")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"sweep.grace_period ({self.grace_period}) must exceed sweep.heartbeat_interval ({self.heartbeat_interval})"
            )
        return self

    @property
    def directions(self) -> list[str]:
        """One direction per objective: as given, else each objective's natural one."""
        return list(self.direction) if self.direction is not None else [OBJECTIVES[o][0] for o in self.objective]

    @property
    def multi_objective(self) -> bool:
        """True when two objectives are optimised together (a Pareto front, no single best)."""
        return len(self.objective) > 1


class _SweepOnly(_Strict):
    # validates the section under its own name, so that error locations read sweep.<field>
    sweep: SweepSection


class SweepSpec(BaseModel):
    """A validated sweep spec.

    Attributes:
        base: the base experiment, validated.
        base_raw: the base sections as written (trial overrides apply to these).
        sweep: the ``sweep:`` section.
        space: parsed distributions by dotted config key (without ``lr: auto``).
        auto_lr: True when the space says ``lr: auto``.
        raw: the whole spec as loaded, for the parent run's artifact.
        source: the file it came from, or ``spec``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base: ExperimentConfig
    base_raw: dict[str, Any]
    sweep: SweepSection
    space: dict[str, Any]
    auto_lr: bool
    raw: dict[str, Any]
    source: str = "spec"

    @property
    def study_name(self) -> str:
        """The study's name: ``sweep.study_name``, else the spec's ``name``."""
        return self.sweep.study_name or self.base.name


# ----------------------------------------------------------------------- loading


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file.

    Raises:
        ConfigError: naming the field, for anything :func:`sweep_spec_from_dict` refuses.
    """
    return sweep_spec_from_dict(load_yaml(path), source=str(path))


def sweep_spec_from_dict(raw: dict[str, Any], source: str = "spec") -> SweepSpec:
    """Validate a sweep spec given as a dict.

    Raises:
        ConfigError: a missing or unknown ``sweep`` key, a bad base section, a bad
            range or choice, an unknown schedule, a λ bound ≤ 0, a value the base
            config refuses, or an unreachable objective. The message names the field.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a sweep spec must be a mapping, got {type(raw).__name__}")
    if "sweep" not in raw:
        raise ConfigError(f"{source}: a sweep spec needs a 'sweep' section (with at least 'space')")
    base_raw = {k: v for k, v in raw.items() if k != "sweep"}
    base = config_from_dict(base_raw, source=source)
    section_raw = raw["sweep"]
    if not isinstance(section_raw, dict):
        raise ConfigError(f"{source}: sweep must be a mapping, got {type(section_raw).__name__}")
    try:
        section = _SweepOnly.model_validate({"sweep": section_raw}).sweep
    except ValidationError as exc:
        message = format_validation_error(exc, source)
        raise ConfigError(message.replace(f"{source}: sweep: sweep.", f"{source}: sweep.")) from None
    space, auto = _parse_space(section.space, source)
    if auto and "optim.lr" in space:
        raise ConfigError(f"{source}: sweep.space: 'lr: auto' chooses the optim.lr range; remove sweep.space.optim.lr")
    if section.sampler.name == "grid":
        bad = [k for k, d in space.items() if not isinstance(d, Choices)]
        if auto or bad:
            named = bad[0] if bad else AUTO_LR_KEY
            raise ConfigError(f"{source}: sweep.space.{named}: the grid sampler needs {{choices: [...]}} for every key")
    _check_against_base(space, base_raw, source)
    return SweepSpec(base=base, base_raw=base_raw, sweep=section, space=space, auto_lr=auto, raw=raw, source=source)


def _parse_space(raw_space: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
    space: dict[str, Any] = {}
    auto = False
    for key, value in raw_space.items():
        where = f"{source}: sweep.space.{key}"
        if key == AUTO_LR_KEY:
            if value != "auto":
                raise ConfigError(f"{where}: the only value of 'lr' is 'auto' (to search λ, use optim.lr: {{low, high, log}})")
            auto = True
            continue
        if value == "auto":
            raise ConfigError(f"{where}: 'auto' applies to the key 'lr' only")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: give {{low, high[, log, step]}} or {{choices: [...]}}; got {value!r}")
        model = Choices if "choices" in value else Range
        try:
            dist = model.model_validate(value)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, where)) from None
        if key in POSITIVE_KEYS:
            bounds = dist.choices if isinstance(dist, Choices) else [dist.low, dist.high]
            bad = [b for b in bounds if isinstance(b, (int, float)) and not isinstance(b, bool) and b <= 0]
            if bad:
                raise ConfigError(f"{where}: a λ or loss bound must be > 0 (got {bad[0]:g})")
        if key == "schedule.name":
            if not isinstance(dist, Choices):
                raise ConfigError(f"{where}: schedules are chosen with {{choices: [...]}}")
            unknown = [c for c in dist.choices if c not in SWEEP_SCHEDULES]
            if unknown:
                raise ConfigError(f"{where}: unknown schedule {unknown[0]!r}; choose from {', '.join(SWEEP_SCHEDULES)}")
        space[key] = dist
    return space, auto


def schedule_fields(name: str) -> set[str]:
    """The keys a schedule section of ``name`` accepts."""
    from bpexp import config as config_module

    for member in typing.get_args(typing.get_args(config_module.Stage)[0]):
        if member.model_fields["name"].default == name:
            return set(member.model_fields)
    return set()


def field_is_int(key: str) -> bool:
    """True when the config field at dotted ``key`` takes integers only (so a range stays integral)."""
    parts = key.split(".")
    model: Any = ExperimentConfig
    for i, part in enumerate(parts):
        if parts[0] == "schedule" and i == 1:
            for name in SWEEP_SCHEDULES:
                if part in schedule_fields(name):
                    annotation = _schedule_annotation(name, part)
                    return _int_only(annotation)
            return False
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i == len(parts) - 1:
            return _int_only(annotation)
        model = annotation
    return False


def _schedule_annotation(name: str, field: str) -> Any:
    from bpexp import config as config_module

    for member in typing.get_args(typing.get_args(config_module.Stage)[0]):
        if member.model_fields["name"].default == name:
            return member.model_fields[field].annotation
    return None


def _int_only(annotation: Any) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    numeric = [a for a in args if a in (int, float)]
    return numeric == [int]


def apply_params(base_raw: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The base spec with a trial's dotted params applied.

    ``schedule.name`` goes first; when it changes the schedule, the base schedule's
    fields that the new schedule accepts are kept (others are dropped). Keys
    outside ``sweep.space`` (``lr: auto``'s ``schedule.base_lr``) apply the same way.
    """
    params = dict(params)
    raw = apply_overrides(base_raw, {})
    name = params.pop("schedule.name", None)
    if name is not None:
        old = dict(raw.get("schedule") or {})
        keep = schedule_fields(name)
        raw["schedule"] = {"name": name, **{k: v for k, v in old.items() if k in keep and k != "name"}}
    return apply_overrides(raw, params)


def _check_against_base(space: dict[str, Any], base_raw: dict[str, Any], source: str) -> None:
    """Apply each bound and choice to the base config and let the config models judge it."""
    base_schedule = (base_raw.get("schedule") or {}).get("name", "constant")
    names = space["schedule.name"].choices if "schedule.name" in space else [base_schedule]
    for key, dist in space.items():
        where = f"{source}: sweep.space.{key}"
        values = dist.choices if isinstance(dist, Choices) else [dist.low, dist.high]
        if isinstance(dist, Range) and field_is_int(key):
            if dist.low != int(dist.low) or dist.high != int(dist.high):
                raise ConfigError(f"{where}: {key} takes integers; give integer low and high (got {dist.low:g}, {dist.high:g})")
        params_for: list[dict[str, Any]] = []
        if key.startswith("schedule.") and key != "schedule.name":
            field = key.split(".", 1)[1]
            fitting = [n for n in names if field in schedule_fields(n)]
            if not fitting:
                raise ConfigError(f"{where}: no schedule in the sweep has a field {field!r} (schedules: {', '.join(names)})")
            params_for = [{"schedule.name": n} for n in fitting]
        else:
            params_for = [{}]
        for extra in params_for:
            for value in values:
                value = int(value) if isinstance(dist, Range) and field_is_int(key) else value
                candidate = apply_params(base_raw, {**extra, key: value})
                try:
                    ExperimentConfig.model_validate(candidate)
                except ValidationError as exc:
                    detail = format_validation_error(exc, "").removeprefix(": ").lstrip()
                    raise ConfigError(f"{where}: the value {value!r} is refused: {detail}") from None


def validate_trial_config(raw: dict[str, Any]) -> ExperimentConfig:
    """The trial's config, validated.

    Raises:
        ConfigError: when a combination of values is refused (e.g. base_lr ≥ max_lr).
    """
    return config_from_dict(raw, source="trial")
