"""Sweeps for the report tests, built from real training runs on digits.

Nothing here is hand-written numbers: every trial is a real :func:`bpexp.train.train`
run, diagnosed by :mod:`bpexp.diagnose`, with a real range test. The grid spans λ
from far too low to diverging, several schedules, and a few stop thresholds.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

from bpexp.config import config_from_dict
from bpexp.report.records import COMPLETE, FAIL, PRUNED, SweepRecord, TrialRecord, record_from_result

BASE: dict[str, Any] = {
    "name": "digits-grid",
    "data": {"name": "digits"},
    "model": {"kind": "perceptron", "l2": 0.001, "dtype": "float32"},
    "optim": {"name": "sgd", "batch_size": 32},
    "train": {"max_epochs": 20},
}
# λ from far too low (1e-5: 20 epochs barely move the loss) to diverging (≥ 100).
LR_GRID = (1e-5, 1e-4, 1e-3, 0.03, 0.1, 0.3, 1.0, 10.0, 30.0, 100.0, 300.0)
SCHEDULES = ("step", "exponential", "triangular", "one_cycle", "cosine")
STOP_LOSSES = (0.5, 0.3, 0.2, 0.1)
GOOD_LR = 0.3


def grid_specs() -> list[dict[str, Any]]:
    """The raw specs of the grid: λ sweep (constant), schedules at a good λ, stop thresholds at a good λ."""
    specs = []
    for lr in LR_GRID:
        spec = copy.deepcopy(BASE)
        spec["optim"]["lr"] = lr
        specs.append(spec)
    for name in SCHEDULES:
        spec = copy.deepcopy(BASE)
        spec["optim"]["lr"] = GOOD_LR
        spec["schedule"] = {"name": name}
        specs.append(spec)
    for stop in STOP_LOSSES:
        spec = copy.deepcopy(BASE)
        spec["optim"]["lr"] = GOOD_LR
        spec["train"] = {"max_epochs": 40, "stop_loss": stop}
        specs.append(spec)
    return specs


def diagnose_findings(result) -> list:
    """bpexp.diagnose's findings for a finished run."""
    from bpexp.diagnose import diagnose

    return list(diagnose(result))


def build_real_sweep(dataset, *, with_range_test: bool = True) -> SweepRecord:
    """Train, diagnose and record every spec of :func:`grid_specs` on ``dataset``."""
    from bpexp.train import train

    trials = []
    for number, spec in enumerate(grid_specs()):
        result = train(config_from_dict(spec), dataset)
        trials.append(record_from_result(result, number, findings=diagnose_findings(result), run_id=f"run{number:04d}"))
    lr_find = None
    if with_range_test:
        from bpexp.lr_find import range_test

        lr_find = range_test(config_from_dict({**BASE, "optim": {**BASE["optim"], "lr": GOOD_LR}}), dataset).to_dict()
    return SweepRecord("digits-grid", ["minimize"], trials, lr_find=lr_find, objective="val_loss")


def replicate(sweep: SweepRecord, n: int, seed: int = 0) -> SweepRecord:
    """``n`` trials made of the sweep's real ones, λ and stop_loss jittered on a log scale and values by ±2 %.

    The learning curves stay the real ones; only the landscape coordinates move, as a
    large random search would spread them.
    """
    rng = random.Random(seed)
    source = [t for t in sweep.trials if t.state == COMPLETE]
    trials = []
    for number in range(n):
        base = source[number % len(source)]
        params = dict(base.params)
        params["optim.lr"] = base.params["optim.lr"] * 10 ** rng.uniform(-0.15, 0.15)
        if base.stop_loss is not None:
            params["train.stop_loss"] = base.stop_loss * 10 ** rng.uniform(-0.1, 0.1)
        config = copy.deepcopy(base.config)
        config["optim"]["lr"] = params["optim.lr"]
        config["train"]["stop_loss"] = params["train.stop_loss"]
        jitter = 1 + rng.uniform(-0.02, 0.02)
        final = {k: (v * jitter if isinstance(v, float) and "loss" in k else v) for k, v in base.final.items()}
        trials.append(
            TrialRecord(
                number=number,
                state=COMPLETE,
                value=None if base.value is None else base.value * jitter,
                params=params,
                stop_reason=base.stop_reason,
                diagnosis=copy.deepcopy(base.diagnosis),
                history=base.history,
                final=final,
                epochs=base.epochs,
                run_id=f"run{number:04d}",
                config=config,
            )
        )
    return SweepRecord(f"{sweep.study_name}-x{n}", sweep.directions, trials, lr_find=sweep.lr_find)


def with_state(sweep: SweepRecord, state: str, keep: int | None = None) -> SweepRecord:
    """A copy of the sweep whose trials (the first ``keep``) all ended in ``state``.

    Failed trials keep no result; pruned ones keep the first half of their history.
    """
    trials = []
    for t in sweep.trials[: keep or len(sweep.trials)]:
        t = copy.deepcopy(t)
        t.state = state
        if state == FAIL:
            t.value, t.final, t.history, t.diagnosis, t.stop_reason, t.epochs = None, {}, {}, [], None, 0
            t.error = "TrainingError: non-finite weights"
        elif state == PRUNED:
            half = max(1, len(t.history.get("epoch", [])) // 2)
            t.history = {k: (v[:half] if isinstance(v, list) else v) for k, v in t.history.items()}
            t.value, t.final, t.stop_reason, t.epochs = None, {}, None, half
        trials.append(t)
    return SweepRecord(f"{sweep.study_name}-{state.lower()}", sweep.directions, trials, lr_find=None)


def lr_of(t: TrialRecord) -> float:
    """The trial's λ (never None in these sweeps)."""
    assert t.lr is not None and math.isfinite(t.lr)
    return t.lr
