"""The learning-rate range test (Smith 2017, §3.3) and its suggestions.

One short run in which λ rises from ``start_lr`` to ``end_lr``, linearly as in
the paper or exponentially as in fastai's ``LRFinder``. Each step records λ, the
raw minibatch loss, its bias-corrected moving average, and the accuracy on a
fixed held-out subset of the validation split, because the paper reads the
bounds of a cyclical schedule off the accuracy curve:

    "Note the learning rate value when the accuracy starts to increase and when
    the accuracy slows, becomes ragged, or starts to fall. These two learning
    rates are good choices for bounds." (Smith 2017, §3.3)

The test leaves no trace in what training uses afterwards: it runs a fresh
optimiser (a caller's optimiser is never touched), a model passed in gets its
weights back exactly, and no random stream of :func:`bpexp.train.train` is consumed.

Two halves, kept apart:

- :func:`range_test` runs the test and returns an :class:`LRFindResult`.
- Pure suggestion functions ``(lrs, losses, accs) -> Suggestion(lr, reason)``
  read a recorded curve, in the style of fastai's ``callback/schedule.py``:
  :func:`suggest_base_lr` and :func:`suggest_max_lr` (the paper's pair),
  :func:`rule_of_thumb` (base = max/4), :func:`steepest` and :func:`valley`
  (fastai's). :func:`suggest` runs all of them.

Stable API for other modules (sweep's ``lr: auto``, diagnosis):
``range_test(config, dataset, ...) -> LRFindResult`` and
``result.suggestions["base_lr" | "max_lr" | "rule_of_thumb" | "steepest" | "valley"]``,
each a :class:`Suggestion` whose ``lr`` is None when the curve cannot support it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np

from bpexp.config import ExperimentConfig
from bpexp.data import Dataset, batches, epoch_order, load_dataset
from bpexp.errors import ConfigError
from bpexp.model import Model, build_model
from bpexp.optim import Optimizer, build_optimizer
from bpexp.schedules import BASE_LR_DIVISOR
from bpexp.train import resolve_batch_size

__all__ = [
    "Suggestion",
    "LRFindResult",
    "range_test",
    "ramp",
    "smooth_losses",
    "steepest",
    "valley",
    "longest_valley",
    "suggest_base_lr",
    "suggest_max_lr",
    "rule_of_thumb",
    "suggest",
    "read_accuracy",
    "AccuracyReading",
    "curve_problem",
    "default_iterations",
    "default_eval_every",
    "plot_data",
    "plot",
    "SUGGESTION_NAMES",
    "DEFAULT_START_LR",
    "DEFAULT_END_LR",
    "DEFAULT_EPOCHS",
    "MIN_ITERATIONS",
    "SMOOTHING_BETA",
    "STOP_FACTOR",
]

DEFAULT_START_LR = 1e-5
"""Lowest λ of the default range: far below any useful rate for our models."""
DEFAULT_END_LR = 10.0
"""Highest λ of the default range, fastai's default ``end_lr``."""
DEFAULT_EPOCHS = 8
"""Default length in epochs: Smith's CIFAR-10 range test ran for 8 epochs (Fig. 3)."""
MIN_ITERATIONS = 100
"""The default length is never below fastai's default ``num_it`` (100 points on the curve)."""
SMOOTHING_BETA = 0.98
"""β of the loss's moving average, fastai's ``AvgSmoothLoss`` default."""
STOP_FACTOR = 4.0
"""Stop once the smoothed loss exceeds this multiple of its minimum (fastai's ``LRFinder``)."""
FEWEST_ITERATIONS = 5
"""Fewer steps than this cannot make a curve worth reading."""
EVAL_SAMPLES = 1000
"""Accuracy is measured on at most this many fixed validation samples: ±1.5 points of
binomial standard error at 80 % accuracy, cheap enough to measure after every step."""

SUGGESTION_NAMES = ("base_lr", "max_lr", "rule_of_thumb", "steepest", "valley")
"""The keys of :attr:`LRFindResult.suggestions`, in display order."""


class Suggestion(NamedTuple):
    """One suggested learning rate and the one-line reason for it.

    ``lr`` is None when the curve cannot support this suggestion; the reason says why.
    It unpacks as a pair: ``lr, reason = suggestion``.
    """

    lr: float | None
    reason: str

    def to_dict(self) -> dict:
        """``{"lr": float | None, "reason": str}``."""
        return {"lr": self.lr, "reason": self.reason}


# ------------------------------------------------------------------ the curves


def ramp(start_lr: float, end_lr: float, num_iterations: int, mode: str) -> np.ndarray:
    """λ for each step of the range test, from ``start_lr`` (step 0) to ``end_lr`` (last step).

    linear: λ_t = start + (end − start)·t/(N−1)     (Smith 2017, §3.3)
    exp:    λ_t = start·(end/start)^(t/(N−1))        (fastai's ``SchedExp``, reaching end at the last step)

    Returns:
        A float64 array of shape (num_iterations,).

    Raises:
        ConfigError: naming the field, for a rate ≤ 0 or not finite, start ≥ end,
            fewer than :data:`FEWEST_ITERATIONS` steps, or an unknown mode.
    """
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"lr-find: {name} must be a finite number > 0; got {value!r}")
    if start_lr >= end_lr:
        raise ConfigError(f"lr-find: start_lr must be < end_lr; got start_lr={start_lr:g} >= end_lr={end_lr:g}")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, (int, np.integer)) or num_iterations < FEWEST_ITERATIONS:
        raise ConfigError(f"lr-find: iterations must be an integer >= {FEWEST_ITERATIONS}; got {num_iterations!r}")
    if mode not in ("linear", "exp"):
        raise ConfigError(f"lr-find: mode must be 'linear' or 'exp'; got {mode!r}")
    pos = np.arange(num_iterations, dtype=np.float64) / (num_iterations - 1)
    if mode == "linear":
        lrs = start_lr + (end_lr - start_lr) * pos
    else:
        lrs = start_lr * (end_lr / start_lr) ** pos
    lrs[-1] = end_lr  # exact, whatever the rounding of the power
    return lrs


def smooth_losses(losses: np.ndarray, beta: float = SMOOTHING_BETA) -> np.ndarray:
    """The bias-corrected exponential moving average of a loss curve (fastai's ``AvgSmoothLoss``).

    m_t = β·m_{t−1} + (1 − β)·L_t with m_{−1} = 0, and  s_t = m_t / (1 − β^{t+1}).
    The correction makes s_t the weighted mean Σ_k β^{t−k}·L_k / Σ_k β^{t−k} exactly,
    so a constant curve stays constant from its first point (Kingma & Ba 2015, §3).
    It is computed as the equivalent running-mean update
    s_t = s_{t−1} + (L_t − s_{t−1})·(1 − β)/(1 − β^{t+1}), whose first weight is exactly 1:
    s_0 = L_0 and a constant stays constant bit for bit.

    Returns:
        A float64 array the shape of ``losses``.

    Raises:
        ValueError: if ``beta`` is not in [0, 1).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta!r}")
    losses = np.asarray(losses, dtype=np.float64)
    out = np.empty_like(losses)
    s = 0.0
    power = 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        for t, loss in enumerate(losses):
            s, power = _ema_step(s, power, loss, beta)
            out[t] = s
    return out


def _ema_step(s: float, power: float, loss: float, beta: float) -> tuple[float, float]:
    """One step of :func:`smooth_losses`: (s_{t−1}, β^t) → (s_t, β^{t+1})."""
    power *= beta
    return s + (loss - s) * ((1.0 - beta) / (1.0 - power)), power


# --------------------------------------------------------------- the run


@dataclass
class LRFindResult:
    """What a range test recorded, and what it suggests.

    Per step t (one minibatch): ``lrs[t]`` the λ used, ``losses[t]`` the raw minibatch
    loss before the update, ``smoothed[t]`` its bias-corrected moving average, and
    ``accuracies[t]`` the held-out accuracy after the update (NaN where not measured).
    ``stop_reason`` is ``end_of_range`` or ``diverged`` (the smoothed loss passed
    ``stop_factor`` × its minimum, or the loss stopped being finite); ``diverged_at``
    is the λ of that step.
    """

    config: ExperimentConfig
    start_lr: float
    end_lr: float
    mode: str
    num_iterations: int
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    accuracies: np.ndarray
    suggestions: dict[str, Suggestion]
    stop_reason: str
    diverged_at: float | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def iterations(self) -> int:
        """Steps actually run (fewer than ``num_iterations`` when it stopped early)."""
        return len(self.lrs)

    def to_dict(self) -> dict:
        """Plain JSON values (NaN and inf become None); ``run_id`` and ``plot`` are the caller's."""
        return {
            "config": self.config.model_dump(mode="json"),
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "mode": self.mode,
            "num_iterations": self.num_iterations,
            "iterations": self.iterations,
            "lrs": _json_list(self.lrs),
            "losses": _json_list(self.losses),
            "smoothed": _json_list(self.smoothed),
            "accuracies": _json_list(self.accuracies),
            "suggestions": {name: s.to_dict() for name, s in self.suggestions.items()},
            "stop_reason": self.stop_reason,
            "diverged_at": self.diverged_at,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 4),
            "plot": None,
            "run_id": None,
        }


def _json_list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


StepCallback = Callable[[int, int, float, float], None]
"""Called after every step with (step, planned steps, λ, smoothed loss), e.g. for a progress bar."""


def default_iterations(steps_per_epoch: int) -> int:
    """The default length: :data:`DEFAULT_EPOCHS` epochs, and at least :data:`MIN_ITERATIONS` steps."""
    return max(MIN_ITERATIONS, DEFAULT_EPOCHS * steps_per_epoch)


def default_eval_every(eval_samples: int, batch: int, num_iterations: int) -> int:
    """How often to measure the accuracy by default: as often as keeps its cost near the training's.

    A step costs about 3 passes over ``batch`` samples (forward, backward, update), an
    evaluation one pass over ``eval_samples``: every ⌈eval_samples/(3·batch)⌉ steps
    balances them. Never fewer than 100 measurements over the run (every step when
    the run is short).
    """
    balanced = math.ceil(eval_samples / (3 * batch))
    return max(1, min(balanced, num_iterations // MIN_ITERATIONS))


def range_test(
    config: ExperimentConfig,
    dataset: Dataset | None = None,
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    num_iterations: int | None = None,
    epochs: float | None = None,
    mode: Literal["linear", "exp"] = "exp",
    model: Model | None = None,
    beta: float = SMOOTHING_BETA,
    stop_factor: float = STOP_FACTOR,
    eval_every: int | None = None,
    eval_samples: int = EVAL_SAMPLES,
    on_step: StepCallback | None = None,
) -> LRFindResult:
    """Run the LR range test: one run with λ rising from ``start_lr`` to ``end_lr``.

    The loop is :func:`bpexp.train.train`'s step (set λ → forward/backward → update →
    record) with the λ of :func:`ramp`; data, batch size and sample order come from
    ``config``, and the optimiser is always a fresh one built from ``config.optim``
    (a caller's optimiser is never seen, so its state cannot change). It stops early
    once the smoothed loss passes ``stop_factor`` × its minimum, or the loss stops
    being finite.

    Args:
        config: the experiment whose model, optimiser and data are tested; its
            schedule and stop rules are ignored.
        dataset: the data; loaded from ``config.data`` when omitted.
        start_lr, end_lr: the range, 0 < start_lr < end_lr.
        num_iterations, epochs: the length (give at most one); default
            :func:`default_iterations`.
        mode: ``linear`` (the paper) or ``exp`` (fastai).
        model: a model to test from its current weights (e.g. one trained for a while);
            its weights are saved before and restored after the test, whatever happens,
            so training goes on from exactly where it was. Only its gradient buffers,
            which every step overwrites anyway, keep the test's last values. A fresh
            model is built from ``config`` when omitted.
        beta: the smoothing factor of :func:`smooth_losses`.
        stop_factor: the divergence threshold on the smoothed loss.
        eval_every: measure the held-out accuracy every this many steps; default
            :func:`default_eval_every`.
        eval_samples: the held-out subset's size (a fixed random subset of the validation split).
        on_step: progress callback, see :data:`StepCallback`.

    Returns:
        An :class:`LRFindResult` with the curves and :func:`suggest`'s suggestions.

    Raises:
        ConfigError: for an invalid range or length, naming the field.
        DataError: when the dataset cannot be loaded.
    """
    if num_iterations is not None and epochs is not None:
        raise ConfigError("lr-find: give iterations or epochs, not both")
    if epochs is not None and (not math.isfinite(epochs) or epochs <= 0):
        raise ConfigError(f"lr-find: epochs must be > 0; got {epochs!r}")
    if eval_every is not None and not (isinstance(eval_every, int) and eval_every >= 1):
        raise ConfigError(f"lr-find: eval_every must be an integer >= 1; got {eval_every!r}")
    if not (isinstance(eval_samples, int) and eval_samples >= 1):
        raise ConfigError(f"lr-find: eval_samples must be an integer >= 1; got {eval_samples!r}")
    if not stop_factor > 1.0:
        raise ConfigError(f"lr-find: stop_factor must be > 1; got {stop_factor!r}")
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"lr-find: beta must be in [0, 1); got {beta!r}")
    ramp(start_lr, end_lr, max(num_iterations or 0, FEWEST_ITERATIONS), mode)  # validate the range before loading data

    seed = config.seed
    if dataset is None:
        dataset = load_dataset(config.data, seed, dtype=config.model.dtype)
    started = time.perf_counter()
    n = len(dataset.train)
    batch = resolve_batch_size(config.optim.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    if num_iterations is None:
        num_iterations = (
            max(FEWEST_ITERATIONS, round(epochs * steps_per_epoch)) if epochs is not None else default_iterations(steps_per_epoch)
        )
    lrs_planned = ramp(start_lr, end_lr, num_iterations, mode)
    if eval_every is None:
        eval_every = default_eval_every(min(eval_samples, len(dataset.val)), batch, num_iterations)

    if model is None:
        model, saved = build_model(config.model, dataset.n_features, dataset.n_classes, seed), None
    else:
        saved = model.get_weights()  # the caller's weights, put back below whatever happens
    optimizer = build_optimizer(config.optim)  # fresh: no momentum or moments carried in or out
    try:
        curves, stop_reason, diverged_at = _run_ramp(
            model, optimizer, dataset, config, lrs_planned, beta, stop_factor, eval_every, eval_samples, on_step
        )
    finally:
        if saved is not None:
            model.set_weights(saved)

    arrays = {name: np.asarray(values, dtype=np.float64) for name, values in curves.items()}
    suggestions = suggest(arrays["lrs"], arrays["smoothed"], arrays["accuracies"], num_it=num_iterations)
    warnings = _warnings(arrays, suggestions)
    return LRFindResult(
        config=config,
        start_lr=float(start_lr),
        end_lr=float(end_lr),
        mode=mode,
        num_iterations=num_iterations,
        suggestions=suggestions,
        stop_reason=stop_reason,
        diverged_at=diverged_at,
        warnings=warnings,
        seconds=time.perf_counter() - started,
        **arrays,
    )


def _run_ramp(
    model: Model,
    optimizer: Optimizer,
    dataset: Dataset,
    config: ExperimentConfig,
    lrs_planned: np.ndarray,
    beta: float,
    stop_factor: float,
    eval_every: int,
    eval_samples: int,
    on_step: StepCallback | None,
) -> tuple[dict[str, list[float]], str, float | None]:
    """The range test's loop: (curves by name, stop reason, λ where it diverged or None)."""
    seed = config.seed
    X, y = dataset.train.X, dataset.train.y
    n = len(y)
    batch = resolve_batch_size(config.optim.batch_size, n)
    num_iterations = len(lrs_planned)
    # Streams of their own (train() uses [seed, 1..3]): the test consumes nothing of a later run.
    order_rng = np.random.default_rng([seed, 4])
    dropout_rng = np.random.default_rng([seed, 5])
    eval_rng = np.random.default_rng([seed, 6])
    fixed = order_rng.permutation(n) if config.data.order == "fixed" else None
    keep = np.sort(eval_rng.permutation(len(dataset.val))[:eval_samples])
    X_eval, y_eval = dataset.val.X[keep], dataset.val.y[keep]

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    accuracies: list[float] = []
    smooth, power, best = 0.0, 1.0, math.inf
    stop_reason, diverged_at = "end_of_range", None
    t = 0
    xbuf = np.empty((batch, X.shape[1]), dtype=X.dtype)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        epoch = 0
        while t < num_iterations and stop_reason == "end_of_range":
            epoch += 1
            order = epoch_order(n, config.data.order, epoch, y, order_rng, fixed)
            for lo, hi in batches(n, batch):
                lr = float(lrs_planned[t])  # 1. set λ
                if order is not None:
                    idx = order[lo:hi]
                    Xb = np.take(X, idx, axis=0, out=xbuf[: hi - lo])
                    yb = y[idx]
                else:
                    Xb, yb = X[lo:hi], y[lo:hi]
                loss = model.loss_and_grad(Xb, yb, dropout_rng)  # 2. forward + backward
                _, u2 = optimizer.step(model.params, model.grads, lr)  # 3. update
                # 4. record: the bias-corrected moving average, as smooth_losses() computes it
                smooth, power = _ema_step(smooth, power, loss, beta)
                if t % eval_every == 0 or t == num_iterations - 1:
                    accuracy = model.evaluate(X_eval, y_eval)[1]
                else:
                    accuracy = math.nan
                lrs.append(lr)
                losses.append(loss)
                smoothed.append(smooth)
                accuracies.append(accuracy)
                t += 1
                if on_step is not None:
                    on_step(t, num_iterations, lr, smooth)
                # 5. stop: divergence first, then the end of the range
                best = min(best, smooth)
                if not (math.isfinite(loss) and math.isfinite(u2)) or smooth > stop_factor * best:
                    stop_reason, diverged_at = "diverged", lr
                    break
                if t >= num_iterations:
                    break

    curves = {"lrs": lrs, "losses": losses, "smoothed": smoothed, "accuracies": accuracies}
    return curves, stop_reason, diverged_at


# ------------------------------------------------------------- suggestions
# Every suggestion function is pure: it reads (lrs, losses, accs) and returns a
# Suggestion. ``losses`` is the curve to read; range_test passes the smoothed loss,
# as fastai's suggestion functions receive Recorder.losses (the smoothed loss).

MIN_POINTS = 10
"""Fewer finite points than this leave nothing to read."""
FLAT_DROP = 0.1
"""A loss whose smoothed curve never falls 10 % below its starting level "never moves":
minibatch noise alone moves the smoothed loss by a few percent (about ±2 % on digits)."""
STEEPEST_SKIP = 0.1
""":func:`steepest` ignores the first 10 % of points, where the moving average still settles."""
VALLEY_SKIP_END = 5
"""fastai's ``lr_find`` drops the last 5 points before suggesting (``losses[num_it//10:-5]``)."""
MIN_RISE = 0.05
"""Accuracy must rise by 5 points over the range before its bounds are read."""
RISE_START = 0.1
"""base_lr: where the smoothed accuracy has made 10 % of its rise, for good."""
RISE_SLOWS = 0.9
"""max_lr (slows): where the smoothed accuracy has made 90 % of its rise."""
RISE_RAGGED = 0.75
"""Raggedness is looked for once 75 % of the rise is made, near the top where the paper
reads it: lower down, the residuals of the running mean are the curve's bends (a steep
rise, or a zero-initialised perceptron's jump in its first steps), not scatter."""
RAGGED_FACTOR = 3.0
"""max_lr (ragged): local step-to-step scatter of the accuracy above 3× its quiet level."""
RAGGED_FLOOR = 0.01
"""...and above one point of accuracy: a smooth curve's bends leave residuals of a few
thousandths around its running mean, which no reader would call ragged."""
FALL_FACTOR = 3.0
"""The accuracy falls when it drops 3× its quiet scatter below its peak."""


def _finite(lrs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points where both λ and the value are finite: (indices, lrs, values)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(lrs) & np.isfinite(values))
    return idx, lrs[idx], values[idx]


def steepest(
    lrs: np.ndarray, losses: np.ndarray, accs: np.ndarray | None = None, *, skip_start: float = STEEPEST_SKIP
) -> Suggestion:
    """The λ where the loss falls fastest against log10(λ), after the first ``skip_start`` of the points.

    slope_i = (L_{i+1} − L_i) / (log10 λ_{i+1} − log10 λ_i); the suggestion is λ_i at the most
    negative slope, as fastai's ``steep`` (which uses ln λ: the same argmin). Points from the
    first non-finite loss on are dropped.

    Returns:
        A :class:`Suggestion`; ``lr`` is None when too few points remain or the loss never falls.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    n = _finite_prefix(lrs, losses)
    start = int(skip_start * n)
    x, y = np.log10(lrs[start:n]), losses[start:n]
    if len(y) < 2:
        return Suggestion(None, f"steepest: only {len(y)} points after skipping the first {skip_start:.0%}")
    dx = np.diff(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(dx > 0, np.diff(y) / dx, np.nan)
    if not np.isfinite(slopes).any() or np.nanmin(slopes) >= 0:
        return Suggestion(None, "steepest: the loss never falls as λ rises")
    i = int(np.nanargmin(slopes))
    lr = float(lrs[start + i])
    return Suggestion(
        lr, f"steepest fall of the loss, {slopes[i]:.3g} per decade, at λ={lr:.3g} (first {skip_start:.0%} of points skipped)"
    )


def _finite_prefix(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Length of the prefix before the first non-finite value (fastai cuts at the first NaN)."""
    bad = np.flatnonzero(~(np.isfinite(lrs) & np.isfinite(losses)))
    return int(bad[0]) if len(bad) else len(losses)


def longest_valley(losses: np.ndarray) -> tuple[int, int]:
    """fastai's longest valley: (max_start, max_end) of the longest decreasing run of the curve.

    lds[i] is the length of the longest strictly decreasing subsequence ending at i
    (lds[i] = 1 + max lds[j] over j < i with L_j > L_i). ``max_end`` is the first i with
    the largest lds, and ``max_start = max_end − lds[max_end]``, as fastai's ``valley``
    computes them (its double loop, vectorised over j; same result).

    Returns:
        ``(max_start, max_end)``; ``(0, 0)`` for fewer than two points. ``max_start``
        may be −1 when the valley starts at the first point, as in fastai.
    """
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    lds = np.ones(n, dtype=np.int64)
    max_start = max_end = 0
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = 1 + int(lds[:i][higher].max())
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - int(lds[max_end])
    return max_start, max_end


def valley(
    lrs: np.ndarray,
    losses: np.ndarray,
    accs: np.ndarray | None = None,
    *,
    num_it: int | None = None,
    skip_end: int = VALLEY_SKIP_END,
) -> Suggestion:
    """fastai's ``valley``: 2/3 of the way into the longest valley of the loss curve.

    As fastai's ``Learner.lr_find`` prepares the curve: keep ``[num_it//10 : −skip_end]``
    (``num_it`` is the planned length, default the curve's), cut at the first NaN; then
    sections = (max_end − max_start)/3 and the index is max_start + ⌊sections⌋ + ⌊sections/2⌋
    (see :func:`longest_valley`). One deliberate difference: where that index is −1
    (a two-point valley at the very start) fastai suggests the last λ of the curve; we
    suggest the first.

    Returns:
        A :class:`Suggestion`; ``lr`` is None when fewer than two points remain or the loss never falls.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    num_it = len(losses) if num_it is None else int(num_it)
    stop = len(losses) - skip_end if skip_end > 0 else len(losses)
    lrs, losses = lrs[num_it // 10 : stop], losses[num_it // 10 : stop]
    n = _finite_prefix(lrs, losses)
    lrs, losses = lrs[:n], losses[:n]
    if n < 2:
        return Suggestion(None, f"valley: only {n} points left once fastai's trimming is done")
    max_start, max_end = longest_valley(losses)
    if max_end == 0:
        return Suggestion(None, "valley: the loss never falls, so there is no valley")
    sections = (max_end - max_start) / 3
    # A two-point valley from the first point gives max_start = −1 and idx = −1, which fastai
    # reads as the LAST point of the curve (Python's negative index); take the first instead.
    idx = max(max_start + int(sections) + int(sections / 2), 0)
    lr = float(lrs[idx])
    lo, hi = float(lrs[max(max_start, 0)]), float(lrs[max_end])
    return Suggestion(lr, f"2/3 of the way into the longest valley of the loss, λ={lo:.3g}..{hi:.3g} (fastai's valley)")


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean; the window shrinks at the ends (no padding, no lag)."""
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


class AccuracyReading(NamedTuple):
    """The smoothed accuracy curve and the landmarks the paper's bounds are read from.

    Indices refer to the finite-accuracy points ``lrs``. ``base``/``slows``/``ragged``/``peak``
    are None where the curve shows no such landmark; ``problem`` says why nothing can be read.
    """

    lrs: np.ndarray
    raw: np.ndarray
    smooth: np.ndarray
    scatter: np.ndarray
    window: int
    start: float
    peak_value: float
    peak: int | None
    base: int | None
    slows: int | None
    ragged: int | None
    falls: int | None
    problem: str | None


def read_accuracy(lrs: np.ndarray, accs: np.ndarray) -> AccuracyReading:
    """Find where the held-out accuracy starts to rise, slows, turns ragged and falls.

    On the finite points, with a centred running mean over w = max(5, n/20) points:

    - start level a₀ = the smoothed accuracy at the first point; peak a* = its maximum
      (at index p); rise = a* − a₀ (at least :data:`MIN_RISE`, or nothing is read);
    - base: one past the last index before p where the smoothed accuracy is below
      a₀ + :data:`RISE_START`·rise (where the rise starts for good);
    - slows: the first index after base where it reaches a₀ + :data:`RISE_SLOWS`·rise;
    - ragged: the first index after :data:`RISE_RAGGED` of the rise is made (and after the
      first window) where the scatter (centred RMS of raw − smoothed over w points) exceeds :data:`RAGGED_FACTOR` × its quiet level
      (the median scatter between base and that point), one sample's worth of accuracy, and
      :data:`RAGGED_FLOOR`;
    - falls: p, if the smoothed accuracy later drops :data:`FALL_FACTOR` × the quiet
      scatter below a*. The 90 % point comes at or before p, so a fall never sets
      max_lr by itself; it is reported for the plot and the reason.

    Returns:
        An :class:`AccuracyReading`.
    """
    _, x, a = _finite(lrs, accs)
    n = len(a)
    empty = np.array([])
    if n < MIN_POINTS:
        return AccuracyReading(x, a, empty, empty, 0, math.nan, math.nan, None, None, None, None, None,
                               f"only {n} accuracy points")
    window = max(5, n // 20) | 1  # odd, so the mean is centred
    s = _running_mean(a, window)
    scatter = np.sqrt(np.maximum(_running_mean((a - s) ** 2, window), 0.0))
    a0 = float(s[0])
    p = int(np.argmax(s))
    peak = float(s[p])
    rise = peak - a0
    if rise < MIN_RISE:
        return AccuracyReading(x, a, s, scatter, window, a0, peak, p, None, None, None, None,
                               f"the accuracy never rises (from {a0:.3f} to at most {peak:.3f})")
    below = np.flatnonzero(s[: p + 1] < a0 + RISE_START * rise)
    base = int(below[-1]) + 1 if len(below) else 0  # ≤ p, since s[p] is above the level
    slows = base + int(np.flatnonzero(s[base:] >= a0 + RISE_SLOWS * rise)[0])  # s[p] qualifies
    top_quarter = base + int(np.flatnonzero(s[base:] >= a0 + RISE_RAGGED * rise)[0])
    # The quiet level: the scatter of the rise itself, below the top quarter where raggedness is sought.
    quiet = float(np.median(scatter[base : top_quarter + 1]))
    # The accuracy of m samples moves in steps of 1/m; scatter below that is no scatter.
    resolution = _resolution(a)
    threshold = max(RAGGED_FACTOR * quiet, resolution, RAGGED_FLOOR)
    upper = max(top_quarter, window)
    rough = np.flatnonzero(scatter[upper:] > threshold)
    ragged = upper + int(rough[0]) if len(rough) else None
    dropped = np.flatnonzero(s[p:] < peak - max(FALL_FACTOR * quiet, resolution, RAGGED_FLOOR))
    falls = p if len(dropped) else None
    return AccuracyReading(x, a, s, scatter, window, a0, peak, p, base, slows, ragged, falls, None)


def _resolution(accs: np.ndarray) -> float:
    """The smallest step between distinct accuracy values (1/m for m held-out samples)."""
    values = np.unique(np.round(accs, 12))
    steps = np.diff(values)
    return float(steps.min()) if len(steps) else 0.0


def suggest_max_lr(lrs: np.ndarray, losses: np.ndarray, accs: np.ndarray) -> Suggestion:
    """The paper's max_lr: where the held-out accuracy slows, turns ragged or falls, whichever is first.

    Reads :func:`read_accuracy`'s landmarks; the reason names the one used.

    Returns:
        A :class:`Suggestion`; ``lr`` is None when the accuracy never rises.
    """
    r = read_accuracy(lrs, accs)
    if r.problem is not None:
        return Suggestion(None, f"max_lr: {r.problem}; read the loss (steepest, valley) or widen the range")
    # slows always exists once the rise is large enough (the peak itself reaches 90 %).
    i, why = r.slows, f"the accuracy slows: {RISE_SLOWS:.0%} of its rise ({r.start:.3f} → {r.peak_value:.3f}) made"
    if r.ragged is not None and r.ragged < i:
        i, why = r.ragged, "the accuracy turns ragged: its step-to-step scatter triples"
    lr = float(r.lrs[i])
    after = f"; it peaks at λ={r.lrs[r.peak]:.3g} and then falls" if r.falls is not None else ""
    return Suggestion(lr, f"{why}, at λ={lr:.3g} (Smith 2017, §3.3){after}")


def suggest_base_lr(lrs: np.ndarray, losses: np.ndarray, accs: np.ndarray) -> Suggestion:
    """The paper's base_lr: where the held-out accuracy starts to rise.

    When the rise starts within the first smoothing window (the range began too high
    to see it) or not below max_lr, falls back on :func:`rule_of_thumb`.

    Returns:
        A :class:`Suggestion`; ``lr`` is None when max_lr is None too.
    """
    top = suggest_max_lr(lrs, losses, accs)
    if top.lr is None:
        return Suggestion(None, top.reason.replace("max_lr:", "base_lr:", 1))
    r = read_accuracy(lrs, accs)
    lr = float(r.lrs[r.base])
    if r.base < r.window:  # the first window already climbs: no floor to rise from
        fallback = rule_of_thumb(lrs, losses, accs)
        return Suggestion(fallback.lr, f"the accuracy rises from the first steps (start the range lower to read it); {fallback.reason}")
    if lr >= top.lr:
        fallback = rule_of_thumb(lrs, losses, accs)
        return Suggestion(fallback.lr, f"the rise starts at λ={lr:.3g}, not below max_lr; {fallback.reason}")
    return Suggestion(lr, f"the accuracy starts to rise ({RISE_START:.0%} of its rise made) at λ={lr:.3g} (Smith 2017, §3.3)")


def rule_of_thumb(lrs: np.ndarray, losses: np.ndarray, accs: np.ndarray) -> Suggestion:
    """Smith's rule of thumb: base_lr = max_lr / 4 (§3.3: "1/3 or 1/4 of the maximum").

    Returns:
        A :class:`Suggestion`; ``lr`` is None when max_lr is None.
    """
    top = suggest_max_lr(lrs, losses, accs)
    if top.lr is None:
        return Suggestion(None, "rule of thumb: no max_lr to divide")
    lr = top.lr / BASE_LR_DIVISOR
    return Suggestion(lr, f"max_lr/{BASE_LR_DIVISOR:g} = {lr:.3g} (Smith's rule of thumb: 1/3 to 1/4 of max_lr)")


def curve_problem(lrs: np.ndarray, losses: np.ndarray) -> str | None:
    """Why a loss curve cannot be read at all, or None when it can.

    Three cases: too few points; the loss rose from the start (its minimum lies in the
    first :data:`MIN_POINTS` points and it ends above twice that: the range starts too
    high); the loss never fell :data:`FLAT_DROP` below its starting level, the median of
    the first 10 % of points (the range ends too low, or the model cannot learn).
    """
    n = _finite_prefix(np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64))
    losses = np.asarray(losses, dtype=np.float64)[:n]
    lrs = np.asarray(lrs, dtype=np.float64)[:n]
    if n < MIN_POINTS:
        where = f" (the loss stopped being finite at λ={lrs[n - 1]:.3g})" if 0 < n < len(np.asarray(lrs)) else ""
        return f"the loss diverged at once: only {n} usable points{where}; lower the start of the range"
    first = float(np.median(losses[: max(MIN_POINTS // 2, n // 10)]))
    lowest = float(losses.min())
    if lowest >= first * (1.0 - FLAT_DROP):
        return (
            f"the loss never moves (from {first:.4g}, never below {lowest:.4g} up to λ={lrs[-1]:.3g}); "
            "raise the end of the range"
        )
    if int(np.argmin(losses)) < MIN_POINTS and losses[-1] > 2.0 * lowest:
        return (
            f"the loss diverged at once: it rose from the first steps (λ={lrs[0]:.3g}) and never came back; "
            "lower the start of the range"
        )
    return None


SuggestionFunc = Callable[[np.ndarray, np.ndarray, np.ndarray], Suggestion]
SUGGESTERS: dict[str, SuggestionFunc] = {
    "base_lr": suggest_base_lr,
    "max_lr": suggest_max_lr,
    "rule_of_thumb": rule_of_thumb,
    "steepest": steepest,
    "valley": valley,
}


def suggest(lrs: np.ndarray, losses: np.ndarray, accs: np.ndarray, *, num_it: int | None = None) -> dict[str, Suggestion]:
    """Every suggestion of :data:`SUGGESTION_NAMES` for one recorded curve.

    When :func:`curve_problem` finds the loss diverged at once or never moved, every
    suggestion is None with that reason.

    Returns:
        ``{name: Suggestion}`` in the order of :data:`SUGGESTION_NAMES`.
    """
    problem = curve_problem(lrs, losses)
    if problem is not None:
        return {name: Suggestion(None, problem) for name in SUGGESTION_NAMES}
    out = {}
    for name, func in SUGGESTERS.items():
        out[name] = func(lrs, losses, accs, num_it=num_it) if name == "valley" else func(lrs, losses, accs)
    return out


def _warnings(arrays: dict, suggestions: dict[str, Suggestion]) -> list[str]:
    """The lines a person must see: a curve that cannot be read, or no pair from the accuracy."""
    problem = curve_problem(arrays["lrs"], arrays["smoothed"])
    if problem is not None:
        return [problem]
    top = suggestions["max_lr"]  # base_lr is None exactly when max_lr is, for the same reason
    if top.lr is None:
        return [f"no base_lr or max_lr: {top.reason.split(': ', 1)[-1]}"]
    return []


# --------------------------------------------------------------------- figure


class Marker(NamedTuple):
    """One suggestion drawn on the figure: its name, λ, and the smoothed loss there."""

    name: str
    lr: float
    loss: float


class PlotData(NamedTuple):
    """What :func:`plot` draws: the curves against λ (log axis) and the suggestions."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    accuracy_lrs: np.ndarray
    accuracies: np.ndarray
    markers: list[Marker]
    title: str


def plot_data(result: LRFindResult) -> PlotData:
    """The figure's data: the loss curves, the measured accuracies, and one marker per suggestion with an lr.

    A marker's loss is the smoothed loss at the recorded λ nearest (in log10) to the suggestion.
    """
    _, acc_lrs, accs = _finite(result.lrs, result.accuracies)
    markers = []
    for name, suggestion in result.suggestions.items():
        if suggestion.lr is None or len(result.lrs) == 0:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            i = int(np.nanargmin(np.abs(np.log10(result.lrs) - math.log10(suggestion.lr))))
        markers.append(Marker(name, float(suggestion.lr), float(result.smoothed[i])))
    cfg = result.config
    title = (
        f"LR range test: {cfg.model.kind} on {cfg.data.name or cfg.data.path}, {cfg.optim.name}, "
        f"{result.mode} {result.start_lr:g}..{result.end_lr:g}, {result.iterations} steps ({result.stop_reason})"
    )
    return PlotData(result.lrs, result.losses, result.smoothed, acc_lrs, accs, markers, title)


def plot(result: LRFindResult, path: str | Path) -> Path:
    """Write a PNG: loss (raw and smoothed) and accuracy against λ on a log axis, suggestions marked.

    matplotlib is imported here, with the Agg canvas (no display, no global backend change).

    Returns:
        The path written.

    Raises:
        ConfigError: when the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = plot_data(result)
    path = Path(path)
    # fixed margins: constrained layout measured every label's box and took half the drawing time
    fig = Figure(figsize=(8, 5))
    fig.subplots_adjust(left=0.09, right=0.91, bottom=0.11, top=0.93)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(data.lrs, data.losses, color="0.75", lw=0.8, label="loss (minibatch)")
    ax.plot(data.lrs, data.smoothed, color="C0", lw=1.6, label=f"loss (smoothed, β={SMOOTHING_BETA})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate λ")
    ax.set_ylabel("training loss")
    finite = data.smoothed[np.isfinite(data.smoothed)]
    if len(finite):  # keep the exploding tail from flattening the curve
        top = min(float(finite.max()), STOP_FACTOR * float(finite.min()) * 1.2)
        ax.set_ylim(max(0.0, float(finite.min()) * 0.9), max(top, float(finite.min()) * 1.1 + 1e-12))
    acc_ax = ax.twinx()
    acc_ax.plot(data.accuracy_lrs, data.accuracies, color="C1", lw=1.0, label="held-out accuracy")
    acc_ax.set_ylabel("held-out accuracy", color="C1")
    acc_ax.set_ylim(0.0, 1.0)
    for k, marker in enumerate(data.markers):
        color = f"C{k + 2}"
        ax.axvline(marker.lr, color=color, ls="--", lw=1.0)
        ax.plot([marker.lr], [marker.loss], "o", color=color, label=f"{marker.name} {marker.lr:.3g}")
    lines = ax.get_legend_handles_labels()
    acc_lines = acc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + acc_lines[0], lines[1] + acc_lines[1], loc="best", fontsize=8)
    ax.set_title(data.title, fontsize=9)
    try:
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise ConfigError(f"lr-find: cannot write the plot {path} ({exc.strerror or exc})") from None
    return path
