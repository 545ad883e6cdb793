"""Named numbers read off a History: what the detectors reason about.

Everything here is a pure function of arrays and tolerates short, diverged and
NaN-filled histories: a statistic that cannot be computed is NaN, never an error.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LATE_START = 0.3
"""Loss checks look at the epochs after the first 30 % of the run: AutoTrainer (Zhang et al.,
"AUTOTRAINER: An Automatic DNN Training Problem Detection and Repair System", ICSE 2021)
starts its loss checks after 30 % of the training budget, when the start-up transient is over."""
MIN_FALL = 0.01
"""A loss that fell by less than 1 % of its starting value has made no fall worth sharing out
(a linear model on circles sits at log 2 from the first epoch)."""
MIN_LATE_POINTS = 6
"""Fewer late epochs than this leave no trend or oscillation to read."""
DIVERGE_RATIO = 2.0
DIVERGE_WINDOW = 5
"""TheDeepChecker: divergence when the loss grows to ≥ 2× its minimum over a window of 5 checks."""


class _Series:
    """A History series as a float64 array of length ``view.n``, converted on first use.

    Most detectors return after reading one or two series (a diverged run is decided
    from its loss alone); converting all ten up front was a third of such a run's
    diagnosis. A non-data descriptor: the array, once made, is the instance's attribute.
    """

    def __init__(self, source: str) -> None:
        self.source = source

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, view: "RunView | None", owner: type | None = None) -> Any:
        if view is None:
            return self
        value = _series(getattr(view.history, self.source, None), view.n)
        view.__dict__[self.name] = value
        return value


@dataclass
class RunView:
    """One finished run as diagnosis sees it: float64 series of equal length ``n``, the
    config, the data summary, the stop reason and the final metrics (after any restore).

    The series (``loss``, ``val_loss``, ``acc``, ``val_acc``, ``lr``, ``iterations``,
    ``update_norm``, ``path_length``, ``weight_norm``, ``batch_loss``, ``steps``) are
    read from ``history`` when first used.
    """

    config: Any
    summary: dict
    stop_reason: str
    n: int
    history: Any
    initial: dict[str, float]
    final: dict[str, float]
    n_train: int
    batch: int
    lr_find: Any = None
    memo: dict = field(default_factory=dict)
    """Values several detectors derive from the view, computed once (e.g. the divergence epoch)."""

    loss = _Series("train_loss")
    val_loss = _Series("val_loss")
    acc = _Series("train_accuracy")
    val_acc = _Series("val_accuracy")
    lr = _Series("lr")
    iterations = _Series("iterations")
    update_norm = _Series("update_norm")
    path_length = _Series("path_length")
    weight_norm = _Series("weight_norm")
    batch_loss = _Series("batch_loss")

    @functools.cached_property
    def steps(self) -> np.ndarray:
        """Minibatch steps per epoch (from ``iterations``; one epoch's worth where it is missing)."""
        steps = np.diff(np.concatenate([[0.0], self.iterations])) if self.n else np.zeros(0)
        bad_steps = ~np.isfinite(steps) | (steps <= 0)
        steps[bad_steps] = math.ceil(self.n_train / self.batch)
        return steps

    @property
    def loss_init(self) -> float:
        """The training loss before the first update (the first epoch's if not recorded)."""
        value = _num(self.initial.get("train_loss"))
        if math.isfinite(value):
            return value
        finite = self.loss[np.isfinite(self.loss)]
        return float(finite[0]) if len(finite) else math.nan

    @property
    def full_batch(self) -> bool:
        """Every step sees the whole training split, so there is no minibatch noise."""
        return self.batch >= self.n_train

    @property
    def watched(self) -> np.ndarray:
        """The loss ``train.stop_loss`` watches."""
        return self.val_loss if self.config.train.stop_on == "val" else self.loss


def _num(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _series(values: Any, n: int) -> np.ndarray:
    """A float64 array of length n: non-numbers become NaN, a short list is NaN-padded."""
    if values is None:
        return np.full(n, np.nan)
    # a History's own lists are used as they are: copying them first cost more than converting
    items = values if type(values) is list and len(values) == n else list(values)[:n]
    if len(items) == n:
        try:  # the common case, n numbers, in one conversion (float() is the rule either way)
            full = np.array(items, dtype=np.float64)
        except (TypeError, ValueError):
            full = None
        if full is not None and full.shape == (n,):
            return full
    out = np.full(n, np.nan)
    try:  # a short list of numbers, NaN-padded; float() is the rule for both
        out[: len(items)] = np.asarray(items, dtype=np.float64)
    except (TypeError, ValueError):
        out[: len(items)] = [_num(v) for v in items]
    return out


def view_of(history, config, data_summary: dict | None, *, stop_reason: str | None = None,
            final: dict | None = None) -> RunView:
    """Build the :class:`RunView` of a History.

    ``stop_reason`` is inferred from the history and the stop rules when not given;
    ``final`` defaults to the last epoch's metrics, or the best epoch's when early
    stopping restored the best weights.
    """
    summary = dict(data_summary or {})
    n = len(getattr(history, "train_loss", []) or [])
    initial = {k: _num(v) for k, v in (getattr(history, "initial", None) or {}).items()}
    n_train = int(summary.get("n_train") or 0)
    if n_train <= 0:
        n_train = max(1, int(sum(summary.get("train_class_counts") or [0])))
    batch_cfg = config.optim.batch_size
    batch = n_train if batch_cfg == "full" else min(int(batch_cfg), n_train)
    view = RunView(
        config=config,
        summary=summary,
        stop_reason=stop_reason or "max_epochs",
        n=n,
        history=history,
        initial=initial,
        final={},
        n_train=n_train,
        batch=max(1, batch),
    )
    if stop_reason is None:
        view.stop_reason = infer_stop_reason(view)
    view.final = _final(view, final)
    return view


def infer_stop_reason(view: RunView) -> str:
    """Replay train.py's stop rules on the recorded series (most severe first).

    Returns:
        ``diverged``, ``loss_threshold``, ``early_stopping`` or ``max_epochs``.
    """
    if view.n == 0:
        return "max_epochs"
    tcfg = view.config.train
    last = view.loss[-1]
    init = view.loss_init
    if not math.isfinite(last) or (math.isfinite(init) and last > tcfg.diverge_factor * init):
        return "diverged"
    if tcfg.stop_loss is not None and math.isfinite(view.watched[-1]) and view.watched[-1] < tcfg.stop_loss:
        return "loss_threshold"
    if tcfg.patience is not None:
        best, bad = math.inf, 0
        for epoch, value in enumerate(view.val_loss, start=1):
            if value < best:
                best, bad = value, 0
            else:
                bad += 1
                if bad >= tcfg.patience:
                    return "early_stopping" if epoch == view.n else "max_epochs"
    return "max_epochs"


def _final(view: RunView, final: dict | None) -> dict[str, float]:
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    if final is not None:
        return {k: _num(final.get(k)) for k in keys}
    if view.n == 0:
        return {k: _num(view.initial.get(k)) for k in keys}
    at = view.n - 1
    if view.stop_reason == "early_stopping" and np.isfinite(view.val_loss).any():
        at = int(np.nanargmin(view.val_loss))  # train.py restores the first best epoch
    return {
        "train_loss": float(view.loss[at]),
        "train_accuracy": float(view.acc[at]),
        "val_loss": float(view.val_loss[at]),
        "val_accuracy": float(view.val_acc[at]),
    }


# ------------------------------------------------------------------ statistics


def late_start(n: int) -> int:
    """Index of the first epoch :data:`LATE_START` checks look at."""
    return int(math.floor(LATE_START * n))


@dataclass
class Oscillation:
    """How a series moves epoch to epoch in a window.

    ``rise_share``: share of steps where it went up (AutoTrainer's oscillation count);
    ``rise_size``: mean rise relative to ``ref``; ``decay``: mean |Δ| of the window's
    second half over its first half (below 1: dying out); ``alternation``: share of
    consecutive steps that change sign (1 for a period-2 orbit, ~2/3 for noise).
    """

    points: int
    rise_share: float
    rise_size: float
    decay: float
    alternation: float


def oscillation(series: np.ndarray, ref: float) -> Oscillation:
    """:class:`Oscillation` statistics of the finite tail of ``series``, sizes relative to ``ref``."""
    s = series[np.isfinite(series)]
    if len(s) < 3 or not math.isfinite(ref) or ref <= 0:
        return Oscillation(len(s), math.nan, math.nan, math.nan, math.nan)
    d = np.diff(s)
    tol = 1e-9 * max(abs(ref), 1e-12)
    up = d > tol
    rise_share = float(np.mean(up))
    rise_size = float(np.mean(d[up]) / ref) if up.any() else 0.0
    half = len(d) // 2
    first, second = np.mean(np.abs(d[:half])) if half else math.nan, np.mean(np.abs(d[half:]))
    decay = float(second / first) if half and first > 0 else math.nan
    signs = np.sign(d[np.abs(d) > tol])
    alternation = float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else math.nan
    return Oscillation(len(s), rise_share, rise_size, decay, alternation)


def level(series: np.ndarray, index: int, width: int = 3) -> float:
    """The median of ``series`` over ``width`` epochs ending at ``index`` (finite values only)."""
    lo = max(0, index - width + 1)
    window = series[lo : index + 1]
    window = window[np.isfinite(window)]
    return float(np.median(window)) if len(window) else math.nan


def tail_share(series: np.ndarray, start: float, first: float, min_fall: float = MIN_FALL) -> float:
    """Share of the total fall (from ``first`` to the end) made after fraction ``start`` of the run.

    Near 0 when the curve has flattened; about 1 − start for a straight line. NaN when the
    whole fall is under ``min_fall`` of ``first``: a share of nothing is noise.
    """
    n = len(series)
    if n < 4 or not math.isfinite(first):
        return math.nan
    q = max(0, int(math.floor(start * n)) - 1)
    end = level(series, n - 1)
    mid = level(series, q)
    total = first - end
    if not (math.isfinite(end) and math.isfinite(mid)) or total <= min_fall * abs(first):
        return math.nan
    return (mid - end) / total


def trend_t(series: np.ndarray, start: float) -> float:
    """t-statistic of the least-squares slope of ``series`` over its last (1 − start) share.

    Below −3 the series is falling beyond doubt (a three-sigma rule); a flat curve that
    only wobbles stays near 0. A perfectly straight decrease gives −inf.
    """
    n = len(series)
    lo = int(math.floor(start * n))
    y = series[lo:]
    x = np.arange(lo, n, dtype=np.float64)[np.isfinite(y)]
    y = y[np.isfinite(y)]
    if len(y) < 4:
        return math.nan
    x = x - x.mean()
    sxx = float(x @ x)
    slope = float(x @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * x
    dof = len(y) - 2
    s2 = float(resid @ resid) / dof
    se = math.sqrt(s2 / sxx)
    if se == 0.0:
        return -math.inf if slope < 0 else (math.inf if slope > 0 else 0.0)
    return slope / se


def first_of_final_run(flags: np.ndarray) -> int | None:
    """Index where the last unbroken run of True values (ending at the last index) begins."""
    if len(flags) == 0 or not flags[-1]:
        return None
    false_at = np.flatnonzero(~flags)
    return int(false_at[-1] + 1) if len(false_at) else 0


def window_divergence(loss: np.ndarray, floor: float) -> bool:
    """TheDeepChecker's window rule at the last epoch: the loss is ≥ 2× its minimum over the
    previous 5 epochs, and above that minimum by at least ``floor`` (so a loss near 0 that
    doubles from 0.002 to 0.004 does not count)."""
    if len(loss) < DIVERGE_WINDOW + 1 or not math.isfinite(loss[-1]):
        return False
    window = loss[-DIVERGE_WINDOW - 1 : -1]
    window = window[np.isfinite(window)]
    if not len(window):
        return False
    low = float(window.min())
    return low > 0 and loss[-1] >= DIVERGE_RATIO * low and loss[-1] - low >= floor


def forgetting_ratio(view: RunView) -> float:
    """Median over the late epochs of (mean minibatch loss during the epoch) / (loss at its end).

    About 1 when what a batch teaches is kept (a little above, since each minibatch loss is
    measured before its update); far below 1 when each batch is fit and then undone by the
    next, the mark of consecutive updates that cancel. NaN without ``batch_loss``.
    """
    start = late_start(view.n)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = view.batch_loss[start:] / view.loss[start:]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if len(ratio) else math.nan


def label_perplexity(counts: list[int] | np.ndarray) -> float:
    """exp(entropy of the label distribution) / number of classes: 1 balanced, 1/K one class.

    TheDeepChecker flags label imbalance below 0.5.
    """
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    k = len(np.asarray(counts))
    if k < 2 or c.sum() <= 0:
        return math.nan
    p = c / c.sum()
    return float(math.exp(-np.sum(p * np.log(p))) / k)


def lr_exposure(view: RunView) -> float:
    """Σ_t λ_t over every step of the run, from the per-epoch λ and step counts."""
    lr = np.where(np.isfinite(view.lr), view.lr, 0.0)
    return float(np.sum(lr * view.steps))


def update_ratio(view: RunView) -> float:
    """TheDeepChecker's update ratio log10(mean per-step ‖Δθ‖ / ‖θ‖) over the late epochs.

    Below −4 the weights barely move; above −1 they are rewritten every step.
    """
    start = late_start(view.n)
    per_step = view.path_length[start:] / view.steps[start:]
    w = view.weight_norm[start:]
    ok = np.isfinite(per_step) & np.isfinite(w) & (w > 0) & (per_step > 0)
    if not ok.any():
        return math.nan
    return float(np.log10(np.mean(per_step[ok] / w[ok])))


def summary_numbers(view: RunView) -> dict[str, float]:
    """The History statistics the detectors read, in one flat dict (for reports and calibration).

    Returns:
        ``late_rise_share``, ``late_rise_size`` (relative to the late loss level, floored at
        1 % of the initial loss), ``late_decay``, ``late_alternation``, ``forgetting_ratio``,
        ``last_quarter_share``, ``last_quarter_trend_t``, ``loss_fall``, ``update_ratio`` and
        ``label_perplexity``; NaN where a value cannot be computed.
    """
    start = late_start(view.n)
    late = view.loss[start:]
    finite = late[np.isfinite(late)]
    init = view.loss_init
    ref = max(float(np.median(finite)) if len(finite) else math.nan, 0.01 * init if math.isfinite(init) else 0.0)
    osc = oscillation(late, ref) if len(finite) >= MIN_LATE_POINTS else Oscillation(len(finite), *(math.nan,) * 4)
    end = float(finite[-1]) if len(finite) else math.nan
    return {
        "late_rise_share": osc.rise_share,
        "late_rise_size": osc.rise_size,
        "late_decay": osc.decay,
        "late_alternation": osc.alternation,
        "forgetting_ratio": forgetting_ratio(view),
        "last_quarter_share": tail_share(view.loss, 0.75, init),
        "last_quarter_trend_t": trend_t(view.loss, 0.75),
        "loss_fall": (init - end) / init if math.isfinite(init) and init > 0 else math.nan,
        "update_ratio": update_ratio(view),
        "label_perplexity": label_perplexity(view.summary.get("train_class_counts") or []),
    }
