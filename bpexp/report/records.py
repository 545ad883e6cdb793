"""Plain records of a sweep: what the report reads, whatever storage it came from.

A :class:`SweepRecord` holds the study's name and direction, the optional range
test, and one :class:`TrialRecord` per trial. The loaders (``bpexp.report.load``)
build them from an Optuna study and its MLflow runs; :func:`record_from_result`
builds one from a :class:`~bpexp.train.TrainResult` in memory. Everything after
this module (figure data, figures, HTML) sees only these records, so it can be
tested on real training runs without a tracking server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from bpexp.config import json_safe

# Optuna's trial states, by name (optuna.trial.TrialState.name).
COMPLETE, PRUNED, FAIL, RUNNING, WAITING = "COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"


@dataclass
class TrialRecord:
    """One trial of a sweep (or one standalone run), as plain values.

    Attributes:
        number: the Optuna trial number (0 for a standalone run).
        state: an Optuna state name: COMPLETE, PRUNED, FAIL, RUNNING or WAITING.
        value: the objective's value (the first one of a multi-objective study); None if absent.
        params: the flattened resolved config (``optim.lr``, ``schedule.name``, ``train.stop_loss``, ...).
        stop_reason: loss_threshold, max_epochs, early_stopping, diverged, or None if it never ran.
        diagnosis: findings as dicts ``{"mode", "confidence", "epoch", "evidence", "advice"}``.
        history: per-epoch lists keyed by History field (epoch, lr, train_loss, val_loss, ...).
        final: final metrics (train/val/test loss and accuracy); None where unknown or non-finite.
        epochs: epochs completed.
        run_id: the MLflow run id of the trial, if tracked.
        config: the nested resolved config, when known (else rebuilt from ``params``).
        values: every objective value of a multi-objective study.
        error: why a failed trial failed, when known.
    """

    number: int
    state: str = COMPLETE
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    diagnosis: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, list] = field(default_factory=dict)
    final: dict[str, float | None] = field(default_factory=dict)
    epochs: int = 0
    run_id: str | None = None
    config: dict[str, Any] | None = None
    values: list[float | None] | None = None
    error: str | None = None

    @property
    def lr(self) -> float | None:
        """λ of the trial: the schedule's own ``lr`` or ``max_lr`` when set, else ``optim.lr``.

        For cyclical, one-cycle and cosine schedules this is the peak λ, which is
        what a sweep over ``optim.lr`` varies.
        """
        for key in ("schedule.lr", "schedule.max_lr", "optim.lr"):
            value = finite_number(self.params.get(key))
            if value is not None and value > 0:
                return value
        return None

    @property
    def schedule(self) -> str:
        """The schedule's name, ``constant`` by default."""
        return str(self.params.get("schedule.name") or "constant")

    @property
    def stop_loss(self) -> float | None:
        """``train.stop_loss``, or None when the run had no loss threshold."""
        return finite_number(self.params.get("train.stop_loss"))

    @property
    def modes(self) -> list[str]:
        """The diagnosed failure modes, most confident first."""
        ranked = sorted(self.diagnosis, key=lambda f: -(finite_number(f.get("confidence")) or 0.0))
        return [str(f.get("mode")) for f in ranked if f.get("mode")]

    def finding(self, mode: str) -> dict[str, Any] | None:
        """The finding of ``mode``, or None."""
        for item in self.diagnosis:
            if item.get("mode") == mode:
                return item
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN and inf become None)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrialRecord":
        """Rebuild a record from :meth:`to_dict` output; unknown keys are ignored."""
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class SweepRecord:
    """A whole sweep: the study, its trials, and the range test run before it.

    Attributes:
        study_name: the Optuna study's name (or the run's name for a single run).
        directions: ``minimize``/``maximize`` per objective.
        trials: one record per trial, in trial-number order.
        lr_find: the range test as ``{"lrs", "losses", "smoothed", "accuracies",
            "suggestions": {name: {"lr", "reason"}}}``, or None.
        parent_run_id: the MLflow parent run of the sweep, if tracked.
        spec: the sweep spec as loaded (its base config and search space), if known.
        objective: what the value measures, e.g. ``val_loss``.
        search_space: Optuna distributions by param name, as ``optuna.distributions.distribution_to_json``
            strings; None to infer the searched params from the ones that vary.
        tracking_uri: the MLflow tracking URI, to link trials' runs; None if not tracked.
        experiment_id: the MLflow experiment of the runs, for links.
        kind: ``sweep`` or ``run`` (a report of one standalone run).
    """

    study_name: str
    directions: list[str] = field(default_factory=lambda: ["minimize"])
    trials: list[TrialRecord] = field(default_factory=list)
    lr_find: dict[str, Any] | None = None
    parent_run_id: str | None = None
    spec: dict[str, Any] | None = None
    objective: str = "val_loss"
    search_space: dict[str, str] | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    kind: str = "sweep"

    @property
    def direction(self) -> str:
        """The first objective's direction."""
        return self.directions[0] if self.directions else "minimize"

    def by_state(self, state: str) -> list[TrialRecord]:
        """The trials in ``state``."""
        return [t for t in self.trials if t.state == state]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN and inf become None)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "SweepRecord":
        """Rebuild a sweep from :meth:`to_dict` output."""
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        known["trials"] = [TrialRecord.from_dict(t) for t in known.get("trials", [])]
        return cls(**known)


# ------------------------------------------------------------------ builders


def findings_to_dicts(findings: Iterable[Any]) -> list[dict[str, Any]]:
    """Turn diagnose's findings (dataclasses, objects with ``to_dict``, or dicts) into plain dicts."""
    out = []
    for item in findings or []:
        if isinstance(item, dict):
            raw = dict(item)
        elif hasattr(item, "to_dict"):
            raw = item.to_dict()
        elif hasattr(item, "__dataclass_fields__"):
            raw = asdict(item)
        else:
            raw = dict(vars(item))
        out.append(_clean(raw))
    return out


def record_from_result(
    result: Any,
    number: int = 0,
    *,
    findings: Iterable[Any] = (),
    value: float | None = None,
    state: str = COMPLETE,
    run_id: str | None = None,
    objective: str = "val_loss",
) -> TrialRecord:
    """A :class:`TrialRecord` of a finished :class:`~bpexp.train.TrainResult`.

    Args:
        result: the TrainResult.
        number: the trial number to give it.
        findings: its diagnosis (Finding objects or dicts).
        value: the objective value; by default ``result.final[objective]``.
        state: the Optuna state name.
        run_id: its MLflow run id, if any.
        objective: the final metric used as the value when ``value`` is None.

    Returns:
        The record, with the flattened config as params.
    """
    from bpexp.config import flatten

    config = result.config.model_dump(mode="json")
    final = {k: json_safe(v) for k, v in result.final.items()}
    if value is None:
        value = final.get(objective)
    return TrialRecord(
        number=number,
        state=state,
        value=json_safe(value),
        params=flatten(config),
        stop_reason=result.stop_reason,
        diagnosis=findings_to_dicts(findings),
        history=result.history.to_dict(),
        final=final,
        epochs=result.epochs,
        run_id=run_id,
        config=config,
    )


def unflatten(params: dict[str, Any]) -> dict[str, Any]:
    """Nest dotted keys (``optim.lr``) back into sections; YAML-text lists are parsed back.

    Returns:
        The nested dict (values of ``None`` are dropped, so the spec's defaults apply).
    """
    import yaml

    nested: dict[str, Any] = {}
    for dotted, value in params.items():
        if value is None:
            continue
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return nested


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None for None, booleans, text and NaN or inf."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    return json_safe(value)
