"""From a sweep spec to Optuna: samplers, pruners, a trial's config, and objective values.

Optuna is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from bpexp.config import ExperimentConfig
from bpexp.sweep.spec import Choices, Range, SweepSpec, apply_params, field_is_int, schedule_fields, validate_trial_config

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from bpexp.train import History, TrainResult

# Schedules whose lower bound base_lr comes from the range test under `lr: auto`.
CYCLIC = ("triangular", "triangular2", "exp_range")


def worker_seed(spec: SweepSpec, worker_index: int, offset: int = 0) -> int:
    """The sampler seed of worker ``worker_index`` that joins a study holding ``offset`` trials: distinct per worker and per restart."""
    return spec.sweep.seed + 7919 * worker_index + offset


def make_sampler(spec: SweepSpec, worker_seed: int) -> "optuna.samplers.BaseSampler":
    """The sampler the spec names, seeded per worker so parallel workers do not propose the same trials.

    ``grid`` walks every combination of the ``choices`` in ``sweep.space``. It is seeded
    with ``sweep.seed`` alone, the same in every worker, on every machine and after a
    restart: Optuna's GridSampler shuffles the grid with its seed and gives trial number
    n the n-th point of its own order, so workers with other seeds run some points
    twice and leave others out (its documentation: fix the seed for each process in
    distributed optimization).
    """
    import optuna

    sampler = spec.sweep.sampler
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed)
    if sampler.name == "grid":
        space = {key: list(dist.choices) for key, dist in spec.space.items()}
        return optuna.samplers.GridSampler(space, seed=spec.sweep.seed)
    if sampler.name == "cmaes":
        # CMA-ES samples the numeric keys jointly; categorical keys fall back to random sampling
        return optuna.samplers.CmaEsSampler(
            seed=worker_seed, n_startup_trials=sampler.startup_trials, warn_independent_sampling=False
        )
    return optuna.samplers.TPESampler(
        seed=worker_seed, n_startup_trials=sampler.startup_trials, multivariate=False
    )


def grid_size(spec: SweepSpec) -> int | None:
    """The number of grid points for the grid sampler, else None."""
    if spec.sweep.sampler.name != "grid":
        return None
    size = 1
    for dist in spec.space.values():
        size *= len(dist.choices)
    return size


def max_epochs_bound(spec: SweepSpec) -> int:
    """The largest epoch budget a trial can have (the base's, or the top of a searched range)."""
    dist = spec.space.get("train.max_epochs")
    if isinstance(dist, Range):
        return int(dist.high)
    if isinstance(dist, Choices):
        return int(max(dist.choices))
    return spec.base.train.max_epochs


def make_pruner(spec: SweepSpec) -> "optuna.pruners.BasePruner":
    """The pruner the spec names; steps are epochs."""
    import optuna

    pruner = spec.sweep.pruner
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_epochs)
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, pruner.warmup_epochs),
            max_resource=max_epochs_bound(spec),
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------------ the space


def auto_lr_range(spec: SweepSpec, suggestions: dict[str, float | None]) -> tuple[float, float]:
    """The log range of ``optim.lr`` under ``lr: auto``: [max_lr/spread, max_lr·spread].

    Smith (arXiv 1506.01186, section 3.3) reads max_lr off the range test as the λ
    where accuracy stops rising; a constant λ and a cycle's peak are both searched
    around it.

    Raises:
        ValueError: when the range test suggested no max_lr.
    """
    max_lr = suggestions.get("max_lr")
    if not max_lr or not math.isfinite(max_lr) or max_lr <= 0:
        raise ValueError("the range test suggested no max_lr")
    spread = spec.sweep.lr_find.spread
    return max_lr / spread, max_lr * spread


def suggest_params(trial: "optuna.Trial", spec: SweepSpec, auto: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Ask the trial for a value of every key in the space (define-by-run).

    ``schedule.name`` is asked first; a ``schedule.*`` key that the chosen schedule
    does not have is not asked at all (a conditional parameter). Under ``lr: auto``
    ``optim.lr`` is asked on :func:`auto_lr_range`, and a cyclical schedule's
    ``base_lr`` is set to the range test's base_lr suggestion when it is below the
    trial's λ (else the schedule's own default, max_lr/4).

    Returns:
        The trial's dotted overrides, asked ones and derived ones.
    """
    params: dict[str, Any] = {}
    schedule = spec.base.schedule.name
    if "schedule.name" in spec.space:
        schedule = trial.suggest_categorical("schedule.name", spec.space["schedule.name"].choices)
        params["schedule.name"] = schedule
    fields = schedule_fields(schedule)
    for key, dist in spec.space.items():
        if key == "schedule.name":
            continue
        if key.startswith("schedule.") and key.split(".", 1)[1] not in fields:
            continue
        params[key] = _suggest(trial, key, dist)
    if auto is not None:
        low, high = auto_lr_range(spec, auto)
        lr = trial.suggest_float("optim.lr", low, high, log=True)
        params["optim.lr"] = lr
        # the schedule's own peak (or constant λ) wins over optim.lr, so it follows the trial's λ too
        for field in ("max_lr", "lr"):
            if field in fields and f"schedule.{field}" not in params:
                params[f"schedule.{field}"] = lr
        base = auto.get("base_lr")
        if schedule in CYCLIC and "schedule.base_lr" not in params and base and 0 < base < lr:
            params["schedule.base_lr"] = base
    return params


def _suggest(trial: "optuna.Trial", key: str, dist: Any) -> Any:
    if isinstance(dist, Choices):
        return trial.suggest_categorical(key, dist.choices)
    if field_is_int(key):
        step = int(dist.step) if dist.step is not None else 1
        return trial.suggest_int(key, int(dist.low), int(dist.high), step=step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)


def trial_config(spec: SweepSpec, params: dict[str, Any], number: int) -> ExperimentConfig:
    """The resolved config of trial ``number``: the base spec with ``params`` applied.

    Raises:
        ConfigError: when this combination is refused (e.g. base_lr ≥ max_lr).
    """
    raw = apply_params(spec.base_raw, params)
    raw["name"] = f"{spec.base.name}-trial-{number}"
    if spec.base.experiment is not None:
        raw["experiment"] = spec.base.experiment
    return validate_trial_config(raw)


# ------------------------------------------------------------------------ objectives


def iterations_to_target(history: "History", target: float) -> float:
    """Optimiser steps until the validation accuracy first reaches ``target`` (checked per epoch); inf if never."""
    for acc, its in zip(history.val_accuracy, history.iterations):
        if math.isfinite(acc) and acc >= target:
            return float(its)
    return math.inf


def objective_value(name: str, result: "TrainResult", target: float | None) -> float:
    """The value of one objective for a finished run (lower or higher is better per its direction).

    A diverged run's non-finite loss becomes +inf, which every minimising sampler ranks last.
    """
    if name == "val_loss":
        value = result.final["val_loss"]
        return float(value) if value is not None and math.isfinite(value) else math.inf
    if name == "val_accuracy":
        value = result.final["val_accuracy"]
        return float(value) if value is not None and math.isfinite(value) else 0.0
    if name == "iterations_to_target":
        return iterations_to_target(result.history, float(target))
    raise ValueError(f"unknown objective {name!r}")


def intermediate_value(name: str, history: "History", target: float | None) -> float:
    """The value reported to the pruner after each epoch (same direction as the objective).

    For ``iterations_to_target`` it is the iterations at which the target was
    reached, or the iterations spent so far while it has not been: a lower bound
    that only grows, so a trial slower than most is pruned.
    """
    if name == "val_loss":
        value = history.val_loss[-1]
        return float(value) if math.isfinite(value) else math.inf
    if name == "val_accuracy":
        value = history.val_accuracy[-1]
        return float(value) if math.isfinite(value) else 0.0
    if name == "iterations_to_target":
        reached = iterations_to_target(history, float(target))
        return reached if math.isfinite(reached) else float(history.iterations[-1])
    raise ValueError(f"unknown objective {name!r}")
