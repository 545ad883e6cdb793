"""The batch file: a named list of experiments (train specs, range tests, sweeps) run in order.

::

    name: nightly                  # the key of the batch: its ledger rows, lock and MLflow tags
    experiment: nightly            # MLflow experiment of every run (default: the batch's name)
    workers: 2                     # sweep worker processes (default 1; --workers overrides)
    experiments:
      - name: digits-range-test
        kind: lr_find              # train, lr_find or sweep
        spec: digits_mlp.yaml      # a spec file, relative to the batch file, or an inline mapping
        set: {seed: 1}             # dotted overrides applied to the spec
        epochs: 2                  # lr_find: start_lr, end_lr, epochs | iterations, mode
      - name: digits-clr
        kind: sweep
        spec: digits_sweep.yaml
        n_trials: 8                # sweep: n_trials, workers, report
      - name: gallery
        kind: train
        spec: failure_modes/*.yaml # a pattern: one experiment per file, named gallery/<file stem>

Everything is validated before anything runs: unknown keys and kinds, duplicate
names, spec files that are missing or do not validate (each message names the
experiment).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bpexp.config import ExperimentConfig, apply_overrides, config_from_dict, format_validation_error, load_yaml
from bpexp.errors import ConfigError

KINDS = ("train", "lr_find", "sweep")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_GLOB_CHARS = "*?["


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Item(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=100, description="unique within the batch")
    spec: Union[str, dict[str, Any]] = Field(description="a spec file (relative to the batch file; may be a glob) or an inline spec")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides, as --set key=value")


class TrainItem(_Item):
    """One training run (``bpexp train --spec``)."""

    kind: Literal["train"]


class LrFindItem(_Item):
    """One LR range test (``bpexp lr-find``), recorded as its own run."""

    kind: Literal["lr_find"]
    start_lr: float = Field(default=1e-5, gt=0)
    end_lr: float = Field(default=10.0, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    iterations: int | None = Field(default=None, ge=5)
    mode: Literal["exp", "linear"] = "exp"

    @model_validator(mode="after")
    def _check(self) -> "LrFindItem":
        if self.start_lr >= self.end_lr:
            raise ValueError(f"start_lr must be < end_lr (got {self.start_lr:g} >= {self.end_lr:g})")
        if self.epochs is not None and self.iterations is not None:
            raise ValueError("give epochs or iterations, not both")
        return self


class SweepItem(_Item):
    """One Optuna sweep (``bpexp sweep``); its study is per batch run, so a resumed batch resumes it."""

    kind: Literal["sweep"]
    n_trials: int | None = Field(default=None, ge=1, description="overrides sweep.n_trials")
    workers: int | None = Field(default=None, ge=1, description="worker processes; --workers overrides")
    report: bool = Field(default=True, description="write the sweep's report and log it on its parent run")


Item = Annotated[Union[TrainItem, LrFindItem, SweepItem], Field(discriminator="kind")]


class BatchFile(_Strict):
    """The batch file as written."""

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    description: str | None = None
    experiment: str | None = Field(default=None, description="MLflow experiment of every run; default the batch's name")
    workers: int = Field(default=1, ge=1, description="sweep worker processes unless an item or --workers says otherwise")
    experiments: list[Item] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _kind_aliases(cls, raw: Any) -> Any:
        # `lr-find` is the command's spelling; accept it as the kind too
        if isinstance(raw, dict) and isinstance(raw.get("experiments"), list):
            raw = dict(raw)
            raw["experiments"] = [
                {**item, "kind": "lr_find"} if isinstance(item, dict) and item.get("kind") == "lr-find" else item
                for item in raw["experiments"]
            ]
        return raw


@dataclass
class Experiment:
    """One validated experiment of a batch.

    Attributes:
        name: unique within the batch.
        kind: train, lr_find or sweep.
        source: the spec file, or ``<batch file>#<name>`` for an inline spec.
        raw: the spec with the overrides applied.
        item: the batch file's entry (kind-specific options).
        config: the validated experiment (train, lr_find) or the sweep's base.
        sweep: the validated sweep spec (sweep only).
    """

    name: str
    kind: str
    source: str
    raw: dict[str, Any]
    item: Any
    config: ExperimentConfig
    sweep: Any = None


@dataclass
class BatchSpec:
    """A validated batch: its name, MLflow experiment, default workers and experiments in order."""

    name: str
    experiment: str
    workers: int
    experiments: list[Experiment]
    source: str
    raw: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    def names(self) -> list[str]:
        """The experiments' names, in order."""
        return [e.name for e in self.experiments]


def load_batch(path: str | Path) -> BatchSpec:
    """Read and validate a batch file and every spec it names.

    Raises:
        ConfigError: a missing or malformed file, an unknown key or kind, a duplicate
            name, a spec file that is missing or matches nothing, or a spec that does
            not validate; the message names the batch file and the experiment.
    """
    path = Path(path)
    return batch_from_dict(load_yaml(path), source=str(path), base_dir=path.resolve().parent)


def batch_from_dict(raw: dict[str, Any], source: str = "batch", base_dir: str | Path | None = None) -> BatchSpec:
    """Validate a batch given as a dict; relative spec paths resolve against ``base_dir`` (default: here).

    Raises:
        ConfigError: as :func:`load_batch`.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a batch file must be a mapping, got {type(raw).__name__}")
    _check_kinds(raw, source)
    try:
        parsed = BatchFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source, raw)) from None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    experiments: list[Experiment] = []
    for index, item in enumerate(parsed.experiments):
        for name, spec_source, spec_raw in _expand(item, index, source, base):
            experiments.append(_validate(item, name, spec_source, spec_raw, f"{source}: experiments[{index}] {name!r}"))
    seen: set[str] = set()
    for experiment in experiments:
        if experiment.name in seen:
            raise ConfigError(f"{source}: two experiments are named {experiment.name!r}; names must be unique")
        seen.add(experiment.name)
    return BatchSpec(
        name=parsed.name,
        experiment=parsed.experiment or parsed.name,
        workers=parsed.workers,
        experiments=experiments,
        source=source,
        raw=raw,
        description=parsed.description,
    )


def _check_kinds(raw: dict[str, Any], source: str) -> None:
    """Name an entry whose kind is missing or unknown (pydantic's message for a bad tag names no entry)."""
    items = raw.get("experiments")
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: experiments[{index}] must be a mapping (name, kind, spec), got {item!r}")
        kind = item.get("kind")
        if kind == "lr-find":
            continue
        if kind not in KINDS:
            what = "has no kind" if kind is None else f"has an unknown kind {kind!r}"
            label = f" {item['name']!r}" if isinstance(item.get("name"), str) else ""
            raise ConfigError(f"{source}: experiments[{index}]{label} {what}; choose from {', '.join(KINDS)}")


def _format(exc: ValidationError, source: str, raw: dict[str, Any]) -> str:
    message = format_validation_error(exc, source)
    # pydantic puts the discriminator's value in the location (experiments.0.train.spec): name the entry instead
    for kind in KINDS:
        message = message.replace(f".{kind}.", ".").replace(f".{kind}:", ":")
    return message


def _expand(item: Any, index: int, source: str, base: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, source, raw spec) for an entry: one for a file or inline spec, one per match of a pattern."""
    where = f"{source}: experiments[{index}] {item.name!r}"
    if isinstance(item.spec, dict):
        return [(item.name, f"{source}#{item.name}", apply_overrides(item.spec, {}))]
    text = item.spec
    pattern = Path(text) if Path(text).is_absolute() else base / text
    if any(c in text for c in _GLOB_CHARS):
        matches = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
        if not matches:
            raise ConfigError(f"{where}: spec pattern {text!r} matches no file (looked in {pattern.parent})")
        return [(f"{item.name}/{m.stem}", str(m), _read(m, where)) for m in matches]
    if not pattern.is_file():
        raise ConfigError(f"{where}: spec file {text!r} does not exist (looked for {pattern})")
    return [(item.name, str(pattern), _read(pattern, where))]


def _read(path: Path, where: str) -> dict[str, Any]:
    try:
        return load_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _validate(item: Any, name: str, spec_source: str, spec_raw: dict[str, Any], where: str) -> Experiment:
    raw = apply_overrides(spec_raw, dict(item.set))
    try:
        if item.kind == "sweep":
            from bpexp.sweep.spec import sweep_spec_from_dict

            sweep = sweep_spec_from_dict(raw, source=spec_source)
            return Experiment(name, item.kind, spec_source, raw, item, sweep.base, sweep)
        if "sweep" in raw:
            raise ConfigError(f"{spec_source}: a {item.kind} experiment takes a plain spec; this one has a 'sweep' section (use kind: sweep)")
        config = config_from_dict(raw, source=spec_source)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Experiment(name, item.kind, spec_source, raw, item, config)
