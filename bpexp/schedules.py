"""Learning-rate schedules: pure functions of the iteration number, t ↦ λ_t.

A schedule is any ``Callable[[int], float]``: given the 0-based iteration ``t``
(one optimiser step, i.e. one mini-batch) it returns the learning rate λ_t to use
for that step. Nothing here keeps state, so a schedule can be evaluated at any t,
in any order, as often as wanted (plots, reports, tests), in the style of fastai's
``callback/schedule.py``.

Each factory below validates its arguments once and returns a
``functools.partial`` of a module-level formula, so a schedule is picklable and
its ``repr`` shows its parameters.

Schedules and their sources:

- :func:`constant`, :func:`step`, :func:`exponential`: the classic decays.
- :func:`triangular`, :func:`triangular2`, :func:`exp_range`: cyclical learning
  rates, L. N. Smith, "Cyclical Learning Rates for Training Neural Networks",
  arXiv:1506.01186 (2017), section 3.1, as implemented by PyTorch's ``CyclicLR``.
- :func:`one_cycle`: PyTorch's ``OneCycleLR`` (two-phase cosine annealing; Smith
  & Topin, arXiv:1708.07120).
- :func:`cosine`: cosine annealing, and SGDR warm restarts (Loshchilov & Hutter,
  arXiv:1608.03983) as in PyTorch's ``CosineAnnealingLR`` and
  ``CosineAnnealingWarmRestarts``.
- :func:`combine`: stages one after another, like fastai's ``combine_scheds``
  but with stage lengths in iterations.
- :func:`build_schedule`: a validated ``schedule`` section of the spec
  (``bpexp.config``) turned into a schedule.

Only the standard library and numpy are used.
"""

from __future__ import annotations

import bisect
import math
import numbers
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from bpexp.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; keeps pydantic out of the import
    from bpexp.config import ScheduleConfig

__all__ = [
    "Schedule",
    "constant",
    "step",
    "exponential",
    "triangular",
    "triangular2",
    "exp_range",
    "one_cycle",
    "cosine",
    "combine",
    "build_schedule",
    "lr_bounds",
    "values",
    "DEFAULT_STEPSIZE_EPOCHS",
    "BASE_LR_DIVISOR",
]

Schedule = Callable[[int], float]
"""A learning-rate schedule: the 0-based iteration t ↦ the learning rate λ_t."""

DEFAULT_STEPSIZE_EPOCHS = 4.0
"""Half cycle of the cyclical schedules when the spec gives none: Smith (2017, §3.3)
recommends a stepsize of 2-10 epochs."""

BASE_LR_DIVISOR = 4.0
"""Default base_lr = max_lr / 4: Smith's rule of thumb (§3.3) sets the base at
1/3 or 1/4 of the maximum found by the range test."""


# ------------------------------------------------------------------- validation
# Messages follow scikit-learn's utils/_param_validation.py: they name the
# parameter, the function, the allowed range and the value received.


def _check_int(value: Any, name: str, func: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(
            f"The {name!r} parameter of {func} must be an int in the range [{low}, inf). Got {value!r} instead."
        )
    return int(value)


def _check_real(
    value: Any,
    name: str,
    func: str,
    low: float = 0.0,
    high: float = math.inf,
    closed: str = "neither",
) -> float:
    """Check ``low < value < high`` (``closed`` in neither/left/right/both makes an end inclusive)."""
    left = "[" if closed in ("left", "both") else "("
    right = "]" if closed in ("right", "both") else ")"
    interval = f"{left}{low}, {'inf' if high == math.inf else high}{right}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"The {name!r} parameter of {func} must be a finite float in the range {interval}. Got {value!r} instead."
        )
    ok_low = value >= low if left == "[" else value > low
    ok_high = value <= high if right == "]" else value < high
    if not (ok_low and ok_high):
        raise ValueError(
            f"The {name!r} parameter of {func} must be a float in the range {interval}. Got {value!r} instead."
        )
    return float(value)


def _check_below(low_value: float, low_name: str, high_value: float, high_name: str, func: str) -> None:
    if not low_value < high_value:
        raise ValueError(
            f"The {low_name!r} parameter of {func} must be < {high_name} ({high_value!r}). Got {low_value!r} instead."
        )


def _check_t(t: int) -> None:
    if t < 0:
        raise ValueError(f"The iteration 't' of a schedule must be an int in the range [0, inf). Got {t!r} instead.")


# ------------------------------------------------------------- classic decays


def _constant_at(t: int, *, lr: float) -> float:
    _check_t(t)
    return lr


def constant(lr: float) -> Schedule:
    """A constant learning rate: λ_t = lr.

    Returns:
        The schedule t ↦ lr.

    Raises:
        ValueError: if ``lr`` is not a finite float > 0.
    """
    lr = _check_real(lr, "lr", "constant")
    return partial(_constant_at, lr=lr)


def _step_at(t: int, *, lr: float, step_iterations: int, factor: float) -> float:
    _check_t(t)
    # λ_t = λ · factor^⌊t / step_iterations⌋   (PyTorch StepLR, stepped every iteration)
    return lr * factor ** (t // step_iterations)


def step(lr: float, step_iterations: int, factor: float) -> Schedule:
    """Step decay: λ is multiplied by ``factor`` every ``step_iterations`` iterations.

    λ_t = lr · factor^⌊t / step_iterations⌋.

    Returns:
        The step-decay schedule.

    Raises:
        ValueError: if ``lr`` ≤ 0, ``step_iterations`` < 1 or ``factor`` is not in (0, 1].
    """
    lr = _check_real(lr, "lr", "step")
    step_iterations = _check_int(step_iterations, "step_iterations", "step")
    factor = _check_real(factor, "factor", "step", 0.0, 1.0, closed="right")
    return partial(_step_at, lr=lr, step_iterations=step_iterations, factor=factor)


def _exponential_at(t: int, *, lr: float, gamma: float, steps_per_epoch: int) -> float:
    _check_t(t)
    # λ_t = λ · γ^⌊t / steps_per_epoch⌋   (PyTorch ExponentialLR, stepped once per epoch)
    return lr * gamma ** (t // steps_per_epoch)


def exponential(lr: float, gamma: float, steps_per_epoch: int) -> Schedule:
    """Exponential decay per epoch: λ_t = lr · γ^⌊t / steps_per_epoch⌋.

    Matches PyTorch's ``ExponentialLR(gamma)`` stepped at the end of every epoch:
    λ is constant within an epoch.

    Returns:
        The exponential-decay schedule.

    Raises:
        ValueError: if ``lr`` ≤ 0, ``gamma`` is not in (0, 1] or ``steps_per_epoch`` < 1.
    """
    lr = _check_real(lr, "lr", "exponential")
    gamma = _check_real(gamma, "gamma", "exponential", 0.0, 1.0, closed="right")
    steps_per_epoch = _check_int(steps_per_epoch, "steps_per_epoch", "exponential")
    return partial(_exponential_at, lr=lr, gamma=gamma, steps_per_epoch=steps_per_epoch)


# ------------------------------------------------------- cyclical (Smith 2017)


def _triangle(t: int, stepsize: int) -> tuple[int, float]:
    """The cycle number (1-based) and the triangle's height in [0, 1] at iteration t.

    Smith (2017), section 3.1:
        cycle = ⌊1 + t / (2·stepsize)⌋
        x     = |t / stepsize − 2·cycle + 1|
        h     = max(0, 1 − x)          (0 at t = 0, 1 at t = stepsize, 0 at t = 2·stepsize)
    """
    cycle = 1 + t // (2 * stepsize)  # integer floor, exact for any t
    x = abs(t / stepsize - 2 * cycle + 1)
    return cycle, max(0.0, 1.0 - x)


def _cyclic_at(
    t: int, *, base_lr: float, max_lr: float, stepsize: int, mode: str, gamma: float, decay_bounds: bool
) -> float:
    _check_t(t)
    cycle, height = _triangle(t, stepsize)
    amplitude = max_lr - base_lr
    if mode == "triangular":
        # λ = base + (max − base)·h
        return base_lr + amplitude * height
    if mode == "triangular2":
        # λ = base + (max − base)·h / 2^(cycle − 1)   (the amplitude halves every cycle)
        return base_lr + amplitude * height * 0.5 ** (cycle - 1)  # 0.5**k underflows to 0; 2.0**k would overflow
    if decay_bounds:
        # the paper's wording, "the boundary values decline by an exponential factor γ^iteration":
        # λ = (base + (max − base)·h)·γ^t
        return (base_lr + amplitude * height) * gamma**t
    # PyTorch CyclicLR / Keras CLR: λ = base + (max − base)·h·γ^t
    return base_lr + amplitude * height * gamma**t


def _check_cyclic(base_lr: float, max_lr: float, stepsize: int, func: str) -> tuple[float, float, int]:
    base_lr = _check_real(base_lr, "base_lr", func)
    max_lr = _check_real(max_lr, "max_lr", func)
    _check_below(base_lr, "base_lr", max_lr, "max_lr", func)
    stepsize = _check_int(stepsize, "stepsize", func)
    return base_lr, max_lr, stepsize


def triangular(base_lr: float, max_lr: float, stepsize: int) -> Schedule:
    """Smith's triangular cyclical learning rate.

    λ rises linearly from ``base_lr`` at t = 0 to ``max_lr`` at t = stepsize and falls
    back to ``base_lr`` at t = 2·stepsize; the cycle then repeats. Same values as
    PyTorch's ``CyclicLR(mode="triangular", step_size_up=step_size_down=stepsize)``.

    Returns:
        The schedule, periodic with period 2·stepsize, within [base_lr, max_lr].

    Raises:
        ValueError: if a rate is not > 0, ``base_lr`` ≥ ``max_lr`` or ``stepsize`` < 1.
    """
    base_lr, max_lr, stepsize = _check_cyclic(base_lr, max_lr, stepsize, "triangular")
    return partial(
        _cyclic_at, base_lr=base_lr, max_lr=max_lr, stepsize=stepsize, mode="triangular", gamma=1.0, decay_bounds=False
    )


def triangular2(base_lr: float, max_lr: float, stepsize: int) -> Schedule:
    """Smith's triangular2: the triangular cycle with its amplitude halved every cycle.

    λ = base + (max − base)·h / 2^(cycle − 1), so the first peak (t = stepsize) is
    ``max_lr``, the second (t = 3·stepsize) is base + (max − base)/2, and so on. Same
    values as PyTorch's ``CyclicLR(mode="triangular2")``.

    Returns:
        The schedule, within [base_lr, max_lr].

    Raises:
        ValueError: if a rate is not > 0, ``base_lr`` ≥ ``max_lr`` or ``stepsize`` < 1.
    """
    base_lr, max_lr, stepsize = _check_cyclic(base_lr, max_lr, stepsize, "triangular2")
    return partial(
        _cyclic_at, base_lr=base_lr, max_lr=max_lr, stepsize=stepsize, mode="triangular2", gamma=1.0, decay_bounds=False
    )


def exp_range(base_lr: float, max_lr: float, stepsize: int, gamma: float, decay_bounds: bool = False) -> Schedule:
    """Smith's exp_range: the triangular cycle with an exponential decay γ^t (t in iterations).

    Two readings exist:

    - ``decay_bounds=False`` (the default): only the amplitude decays,
      λ = base + (max − base)·h·γ^t. This is what PyTorch's
      ``CyclicLR(mode="exp_range")`` and the Keras CLR callback (bckenstler/CLR)
      compute, the reference implementations users compare against, and λ never
      falls below ``base_lr``, the rate the range test found safe.
    - ``decay_bounds=True``: the paper's wording, "the boundary values decline by an
      exponential factor of gamma^iteration": λ = (base + (max − base)·h)·γ^t, so at a
      cycle's base point λ = base·γ^t.

    Returns:
        The schedule; never above the :func:`triangular` one with the same bounds.

    Raises:
        ValueError: if a rate is not > 0, ``base_lr`` ≥ ``max_lr``, ``stepsize`` < 1
            or ``gamma`` is not in (0, 1].
    """
    base_lr, max_lr, stepsize = _check_cyclic(base_lr, max_lr, stepsize, "exp_range")
    gamma = _check_real(gamma, "gamma", "exp_range", 0.0, 1.0, closed="right")
    return partial(
        _cyclic_at,
        base_lr=base_lr,
        max_lr=max_lr,
        stepsize=stepsize,
        mode="exp_range",
        gamma=gamma,
        decay_bounds=bool(decay_bounds),
    )


# ------------------------------------------------------------------ one cycle


def _anneal_cos(start: float, end: float, pct: float) -> float:
    # PyTorch OneCycleLR._annealing_cos: cosine from start (pct = 0) to end (pct = 1)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _one_cycle_at(
    t: int, *, max_lr: float, initial_lr: float, min_lr: float, phase1_end: float, last_step: int
) -> float:
    _check_t(t)
    if t >= last_step:
        return min_lr  # the final value, held after the cycle
    if t <= phase1_end:
        # phase 1: initial → max over t ∈ [0, phase1_end]
        pct = t / phase1_end if phase1_end > 0 else 1.0  # a phase of one point is at its end
        return _anneal_cos(initial_lr, max_lr, pct)
    # phase 2: max → min over t ∈ [phase1_end, last_step]
    pct = (t - phase1_end) / (last_step - phase1_end)
    return _anneal_cos(max_lr, min_lr, pct)


def one_cycle(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The 1cycle policy exactly as PyTorch's ``OneCycleLR`` (cosine, two phases).

    initial = max_lr / div_factor, min = initial / final_div_factor. As in
    ``torch/optim/lr_scheduler.py``:

    - phase 1 ends at step ``float(pct_start·total_steps) − 1``: cosine from initial to max;
    - phase 2 ends at step ``total_steps − 1``: cosine from max to min.

    So λ_0 = max_lr/div_factor and λ_{total_steps−1} = min. After ``total_steps − 1``
    the final value is held (PyTorch raises instead).

    Returns:
        The one-cycle schedule.

    Raises:
        ValueError: if ``max_lr`` ≤ 0, ``total_steps`` < 1, ``pct_start`` is not in (0, 1),
            or a divisor is not > 0.
    """
    max_lr = _check_real(max_lr, "max_lr", "one_cycle")
    total_steps = _check_int(total_steps, "total_steps", "one_cycle")
    pct_start = _check_real(pct_start, "pct_start", "one_cycle", 0.0, 1.0)
    div_factor = _check_real(div_factor, "div_factor", "one_cycle")
    final_div_factor = _check_real(final_div_factor, "final_div_factor", "one_cycle")
    initial_lr = max_lr / div_factor
    return partial(
        _one_cycle_at,
        max_lr=max_lr,
        initial_lr=initial_lr,
        min_lr=initial_lr / final_div_factor,
        phase1_end=float(pct_start * total_steps) - 1,
        last_step=total_steps - 1,
    )


# --------------------------------------------------------------------- cosine


def _cosine_at(t: int, *, max_lr: float, min_lr: float, total_steps: int) -> float:
    _check_t(t)
    if t >= total_steps:
        return min_lr
    # η_t = η_min + (η_max − η_min)·(1 + cos(π·t / T_max)) / 2   (SGDR eq. 5; PyTorch CosineAnnealingLR)
    return min_lr + (max_lr - min_lr) * (1.0 + math.cos(math.pi * t / total_steps)) / 2.0


def _sgdr_at(t: int, *, max_lr: float, min_lr: float, restart_steps: int, t_mult: int) -> float:
    _check_t(t)
    # T_cur: iterations since the last restart; T_i: length of the current period
    # (T_0, T_0·T_mult, T_0·T_mult², ...), as CosineAnnealingWarmRestarts.step() tracks them.
    if t_mult == 1:
        t_cur, t_i = t % restart_steps, restart_steps
    else:
        start, t_i = 0, restart_steps
        while t - start >= t_i:  # O(log t) periods
            start += t_i
            t_i *= t_mult
        t_cur = t - start
    # η_t = η_min + (η_max − η_min)·(1 + cos(π·T_cur / T_i)) / 2
    return min_lr + (max_lr - min_lr) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0


def cosine(
    max_lr: float,
    total_steps: int | None,
    min_lr: float = 0.0,
    restart_steps: int | None = None,
    t_mult: int = 1,
) -> Schedule:
    """Cosine annealing from ``max_lr`` to ``min_lr``, optionally with SGDR warm restarts.

    Without restarts: λ_t = min + (max − min)·(1 + cos(π·t/total_steps))/2 for
    t < total_steps, as PyTorch's ``CosineAnnealingLR(T_max=total_steps)`` stepped
    every iteration; λ reaches ``min_lr`` at t = total_steps and is held there.

    With ``restart_steps``: SGDR, as ``CosineAnnealingWarmRestarts(T_0=restart_steps,
    T_mult=t_mult, eta_min=min_lr)`` stepped once per iteration. λ restarts at
    ``max_lr`` after each period; periods grow by ``t_mult``. The restarts run on,
    so ``total_steps`` is not used (it may be None).

    Returns:
        The cosine schedule, within [min_lr, max_lr].

    Raises:
        ValueError: if ``max_lr`` ≤ 0, ``min_lr`` is not in [0, max_lr), ``total_steps``
            (without restarts) or ``restart_steps`` < 1, or ``t_mult`` < 1.
    """
    max_lr = _check_real(max_lr, "max_lr", "cosine")
    min_lr = _check_real(min_lr, "min_lr", "cosine", closed="left")
    _check_below(min_lr, "min_lr", max_lr, "max_lr", "cosine")
    t_mult = _check_int(t_mult, "t_mult", "cosine")
    if restart_steps is not None:
        restart_steps = _check_int(restart_steps, "restart_steps", "cosine")
        return partial(_sgdr_at, max_lr=max_lr, min_lr=min_lr, restart_steps=restart_steps, t_mult=t_mult)
    total_steps = _check_int(total_steps, "total_steps", "cosine")
    return partial(_cosine_at, max_lr=max_lr, min_lr=min_lr, total_steps=total_steps)


# -------------------------------------------------------------------- combine


def _combined_at(t: int, *, starts: tuple[int, ...], schedules: tuple[Schedule, ...]) -> float:
    _check_t(t)
    i = bisect.bisect_right(starts, t) - 1  # the last stage that has started
    return schedules[i](t - starts[i])


def combine(stages: Sequence[tuple[int | None, Schedule]]) -> Schedule:
    """Run schedules one after another, like fastai's ``combine_scheds``.

    ``stages`` is a sequence of ``(length, schedule)``: stage k runs for ``length``
    iterations and sees its own local t, starting at 0. Only the last length may
    be None. The last stage runs on past its length (a length there only documents
    intent); give it a schedule that holds its final value (one_cycle, cosine) to
    stop changing.

    Example: 100 iterations at a constant warm-up rate, then 900 of cosine annealing,
    ``combine([(100, constant(1e-3)), (None, cosine(0.1, 900))])``.

    Returns:
        The combined schedule: λ_t = schedule_k(t − start_k), start_k = Σ_{j<k} length_j.

    Raises:
        ValueError: if ``stages`` is empty, a length other than the last is None or
            < 1, or a stage is not callable.
    """
    stages = list(stages)
    if not stages:
        raise ValueError(
            "The 'stages' parameter of combine must be a non-empty sequence of (length, schedule). Got [] instead."
        )
    starts: list[int] = []
    schedules: list[Schedule] = []
    start = 0
    for k, stage in enumerate(stages):
        try:
            length, schedule = stage
        except (TypeError, ValueError):
            raise ValueError(
                f"The 'stages[{k}]' parameter of combine must be a (length, schedule) pair. Got {stage!r} instead."
            ) from None
        if not callable(schedule):
            raise ValueError(
                f"The 'stages[{k}]' schedule of combine must be callable t -> lr. Got {schedule!r} instead."
            )
        if length is None:
            if k != len(stages) - 1:
                raise ValueError(
                    f"The 'stages[{k}]' length of combine must be an int in the range [1, inf); only the last "
                    "stage may have length None. Got None instead."
                )
        else:
            length = _check_int(length, f"stages[{k}] length", "combine")
        starts.append(start)
        schedules.append(schedule)
        if length is not None:
            start += length
    return partial(_combined_at, starts=tuple(starts), schedules=tuple(schedules))


# --------------------------------------------------------------- from the spec


def _iterations(epochs: float, steps_per_epoch: int) -> int:
    """Epochs → iterations: round(epochs·steps_per_epoch), at least 1."""
    return max(1, round(epochs * steps_per_epoch))


def _stage_length(cfg: Any, steps_per_epoch: int) -> int | None:
    """A stage's own length in iterations (``iterations`` wins over ``epochs``), or None."""
    if getattr(cfg, "iterations", None) is not None:
        return int(cfg.iterations)
    if getattr(cfg, "epochs", None) is not None:
        return _iterations(cfg.epochs, steps_per_epoch)
    return None


def _cyclic_args(cfg: Any, default_lr: float, steps_per_epoch: int) -> tuple[float, float, int]:
    max_lr = cfg.max_lr if cfg.max_lr is not None else default_lr
    base_lr = cfg.base_lr if cfg.base_lr is not None else max_lr / BASE_LR_DIVISOR
    if cfg.stepsize is not None:
        stepsize = int(cfg.stepsize)
    else:
        epochs = cfg.stepsize_epochs if cfg.stepsize_epochs is not None else DEFAULT_STEPSIZE_EPOCHS
        stepsize = _iterations(epochs, steps_per_epoch)
    return base_lr, max_lr, stepsize


def _build_stage(cfg: Any, default_lr: float, steps_per_epoch: int, span: int) -> Schedule:
    """One non-sequence schedule config → a schedule; ``span`` is the iterations it covers."""
    name = cfg.name
    if name == "constant":
        return constant(cfg.lr if cfg.lr is not None else default_lr)
    if name == "step":
        lr = cfg.lr if cfg.lr is not None else default_lr
        return step(lr, _iterations(cfg.step_epochs, steps_per_epoch), cfg.factor)
    if name == "exponential":
        return exponential(cfg.lr if cfg.lr is not None else default_lr, cfg.gamma, steps_per_epoch)
    if name == "triangular":
        return triangular(*_cyclic_args(cfg, default_lr, steps_per_epoch))
    if name == "triangular2":
        return triangular2(*_cyclic_args(cfg, default_lr, steps_per_epoch))
    if name == "exp_range":
        base_lr, max_lr, stepsize = _cyclic_args(cfg, default_lr, steps_per_epoch)
        return exp_range(base_lr, max_lr, stepsize, gamma=cfg.gamma, decay_bounds=cfg.decay_bounds)
    if name == "one_cycle":
        max_lr = cfg.max_lr if cfg.max_lr is not None else default_lr
        return one_cycle(max_lr, span, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    if name == "cosine":
        max_lr = cfg.max_lr if cfg.max_lr is not None else default_lr
        restart = _iterations(cfg.restart_epochs, steps_per_epoch) if cfg.restart_epochs is not None else None
        return cosine(max_lr, span, cfg.min_lr, restart_steps=restart, t_mult=cfg.t_mult)
    raise ValueError(
        "The 'name' of a schedule stage must be one of constant, step, exponential, triangular, "
        f"triangular2, exp_range, one_cycle, cosine. Got {name!r} instead."
    )


def build_schedule(cfg: "ScheduleConfig", *, default_lr: float, steps_per_epoch: int, total_steps: int) -> Schedule:
    """Turn the validated ``schedule`` section of a spec into a schedule.

    Rules:

    - ``lr`` / ``max_lr`` default to ``default_lr`` (``optim.lr``).
    - Cyclical ``base_lr`` defaults to max_lr/4 (Smith's rule of thumb: 1/3 to 1/4 of max).
    - ``stepsize`` is in iterations; ``stepsize_epochs`` converts with
      round(stepsize_epochs·steps_per_epoch); the default is 4 epochs (Smith: 2-10);
      at least 1. ``step_epochs`` and ``restart_epochs`` convert the same way.
    - ``one_cycle`` and ``cosine`` span ``total_steps``, or the config's own length
      (``iterations``, or ``epochs``·steps_per_epoch) when it gives one.
    - ``sequence``: each stage runs for its length; the last may have none and runs
      on; its span (for one_cycle/cosine) is what remains of ``total_steps`` (at least 1).

    Args:
        cfg: a schedule model from :mod:`bpexp.config` (only its ``name`` and fields are read).
        default_lr: ``optim.lr``.
        steps_per_epoch: optimiser steps (mini-batches) per epoch.
        total_steps: steps in the whole run, max_epochs·steps_per_epoch.

    Returns:
        The schedule t ↦ λ_t.

    Raises:
        ConfigError: when the combination is invalid in a way the spec alone cannot see,
            e.g. ``base_lr`` ≥ the default ``max_lr`` (optim.lr), or ``min_lr`` ≥ max_lr.
        ValueError: if ``default_lr``, ``steps_per_epoch`` or ``total_steps`` is out of range.
    """
    _check_real(default_lr, "default_lr", "build_schedule")
    _check_int(steps_per_epoch, "steps_per_epoch", "build_schedule")
    _check_int(total_steps, "total_steps", "build_schedule")
    try:
        if cfg.name != "sequence":
            span = _stage_length(cfg, steps_per_epoch) or total_steps
            return _build_stage(cfg, default_lr, steps_per_epoch, span)
        stages: list[tuple[int | None, Schedule]] = []
        start = 0
        for k, stage in enumerate(cfg.stages):
            length = _stage_length(stage, steps_per_epoch)
            span = length if length is not None else max(1, total_steps - start)
            try:
                stages.append((length, _build_stage(stage, default_lr, steps_per_epoch, span)))
            except ValueError as exc:
                raise ValueError(f"stages[{k}] ({stage.name}): {exc}") from None
            start += length or 0
        return combine(stages)
    except ValueError as exc:
        raise ConfigError(f"schedule: {exc}") from None


def lr_bounds(
    cfg: "ScheduleConfig",
    default_lr: float,
    *,
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
) -> tuple[float, float]:
    """The (lowest, highest) λ a schedule config produces, for reports and plot axes.

    With ``steps_per_epoch`` and ``total_steps`` the schedule is built and evaluated
    at every step of the run: the bounds are exact. Without them they are nominal:
    constant (lr, lr); step (lr·factor, lr) and exponential (lr·γ, lr), i.e. after
    one decay; cyclical (base_lr, max_lr); one_cycle (min, max_lr); cosine
    (min_lr, max_lr); a sequence takes the extremes over its stages.

    Returns:
        ``(low, high)`` with low ≤ high; low may be 0.0 (cosine with min_lr = 0).

    Raises:
        ConfigError, ValueError: as :func:`build_schedule`.
    """
    if steps_per_epoch is not None and total_steps is not None:
        schedule = build_schedule(cfg, default_lr=default_lr, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        lrs = values(schedule, total_steps)
        return float(lrs.min()), float(lrs.max())
    if cfg.name == "sequence":
        bounds = [lr_bounds(stage, default_lr) for stage in cfg.stages]
        return min(b[0] for b in bounds), max(b[1] for b in bounds)
    name = cfg.name
    if name in ("constant", "step", "exponential"):
        lr = cfg.lr if cfg.lr is not None else default_lr
        decay = {"constant": 1.0, "step": getattr(cfg, "factor", 1.0), "exponential": getattr(cfg, "gamma", 1.0)}[name]
        return lr * decay, lr
    if name in ("triangular", "triangular2", "exp_range"):
        base_lr, max_lr, _ = _cyclic_args(cfg, default_lr, 1)
        return base_lr, max_lr
    max_lr = cfg.max_lr if cfg.max_lr is not None else default_lr
    if name == "one_cycle":
        return max_lr / cfg.div_factor / cfg.final_div_factor, max_lr
    if name == "cosine":
        return cfg.min_lr, max_lr
    raise ValueError(f"lr_bounds: unknown schedule name {name!r}")


def values(schedule: Schedule, n: int) -> np.ndarray:
    """λ_t for t = 0 .. n−1.

    Returns:
        A float64 array of shape (n,).

    Raises:
        ValueError: if ``n`` < 0.
    """
    n = _check_int(n, "n", "values", low=0)
    return np.fromiter((schedule(t) for t in range(n)), dtype=np.float64, count=n)
