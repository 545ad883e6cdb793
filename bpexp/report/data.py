"""The data behind each figure and table of a report, as plain values.

Each builder takes a :class:`~bpexp.report.records.SweepRecord` and returns a
dataclass of numbers and labels, or None when the sweep holds nothing to show;
``figures.py`` draws them and the tests check them, as Optuna's visualization
package does (compute the data, then draw it).

Every trial gets one *outcome*: its state when it did not complete (failed,
pruned), ``diverged`` when training diverged, else its most telling diagnosis
mode (λ modes first), else ``healthy``. Outcomes fall into the four λ *bands*
the article describes in words: λ too low, good, too high (oscillating), diverged.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from bpexp.report.records import COMPLETE, FAIL, PRUNED, SweepRecord, TrialRecord, finite_number as _finite, unflatten

HEALTHY = "healthy"
DIVERGED = "diverged"
FAILED = "failed"
PRUNED_OUTCOME = "pruned"
INCOMPLETE = "incomplete"

# λ modes take precedence over the others when a trial has several findings: they
# are what the landscape is about. Order: the most severe first.
LR_MODES = ("lr_too_high", "flat_minimum", "lr_too_low")

# The bands along log λ, left to right, and the outcomes that fall into each one.
# bpexp.diagnose's lr_too_high is λ past the stability limit 2/λ_max(H), where the
# loss oscillates; past it far enough the run diverges. Its flat_minimum is the loss
# hovering on a minibatch-noise floor at a stable λ: that floor grows with λ (SGD's
# stationary covariance is proportional to λ/B: Mandt, Hoffman & Blei, "Stochastic
# Gradient Descent as Approximate Bayesian Inference", JMLR 18, 2017), so it too
# marks a λ too high for the end of the run. Every other outcome (healthy,
# overfitting, non_convergence of a stop rule, ...) is not about λ and counts as
# "good" along the λ axis.
BANDS = ("too_low", "good", "too_high", "diverged")
BAND_LABELS = {
    "too_low": "λ too low",
    "good": "good",
    "too_high": "λ too high (oscillating)",
    "diverged": "diverged",
}
BAND_OF_OUTCOME = {"lr_too_low": "too_low", "lr_too_high": "too_high", "flat_minimum": "too_high", DIVERGED: "diverged"}

OUTCOME_LABELS = {
    HEALTHY: "healthy",
    DIVERGED: "diverged",
    "lr_too_low": "λ too low",
    "lr_too_high": "λ too high",
    "non_convergence": "non-convergence",
    "overfitting": "overfitting",
    "underfitting": "underfitting",
    "flat_minimum": "flat minimum",
    "class_imbalance": "class imbalance",
    "bad_ordering": "bad ordering",
    FAILED: "failed",
    PRUNED_OUTCOME: "pruned",
    INCOMPLETE: "incomplete",
}

# Above this many points a scatter is drawn with transparency, so that dense
# regions read darker instead of merging into one blot; above SAMPLE_ABOVE only a
# deterministic sample is drawn (bands, counts and medians still use every trial).
ALPHA_ABOVE = 150
SAMPLE_ABOVE = 3000
# Trials drawn per group in the learning-curve panels: enough to show the spread.
CURVES_PER_GROUP = 3
# Test accuracies this close count as equal in the stop-threshold trade-off: one
# image of a 360-image test split (digits' 20 %), the resolution of the metric.
ACCURACY_TIE = 1.0 / 360


# Outcomes from cold to hot: λ too low, healthy, the modes that are not about λ,
# the noise floor, λ too high, diverged; then trials that did not complete.
OUTCOME_ORDER = (
    "lr_too_low",
    HEALTHY,
    "overfitting",
    "underfitting",
    "class_imbalance",
    "bad_ordering",
    "non_convergence",
    "flat_minimum",
    "lr_too_high",
    DIVERGED,
    PRUNED_OUTCOME,
    FAILED,
    INCOMPLETE,
)


def outcome_rank(outcome: str) -> tuple[int, str]:
    """A sort key placing outcomes in :data:`OUTCOME_ORDER` (unknown ones last, by name)."""
    return (OUTCOME_ORDER.index(outcome) if outcome in OUTCOME_ORDER else len(OUTCOME_ORDER), outcome)


def outcome_label(outcome: str) -> str:
    """The human name of an outcome or mode."""
    return OUTCOME_LABELS.get(outcome, outcome.replace("_", " "))


def trial_outcome(trial: TrialRecord) -> str:
    """The one outcome that colours a trial in every figure.

    Returns:
        ``failed``, ``pruned`` or ``incomplete`` for trials that did not complete;
        ``diverged`` when training diverged; else the first λ mode diagnosed
        (lr_too_high, flat_minimum, lr_too_low); else the most confident other
        mode; else ``healthy``.
    """
    if trial.state == FAIL:
        return FAILED
    if trial.state == PRUNED:
        return PRUNED_OUTCOME
    if trial.state != COMPLETE:
        return INCOMPLETE
    if trial.stop_reason == DIVERGED:
        return DIVERGED
    modes = trial.modes
    for mode in LR_MODES:
        if mode in modes:
            return mode
    return modes[0] if modes else HEALTHY


def band_of(outcome: str) -> str | None:
    """The λ band of a completed trial's outcome (None for trials that did not complete)."""
    if outcome in (FAILED, PRUNED_OUTCOME, INCOMPLETE):
        return None
    return BAND_OF_OUTCOME.get(outcome, "good")


def completed(sweep: SweepRecord) -> list[TrialRecord]:
    """The trials that completed."""
    return [t for t in sweep.trials if t.state == COMPLETE]


def _better(direction: str):
    return (lambda a, b: a < b) if direction == "minimize" else (lambda a, b: a > b)


def best_trials(trials: Sequence[TrialRecord], direction: str, k: int | None = None) -> list[TrialRecord]:
    """Trials with a value, best first (ties by trial number)."""
    scored = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    sign = 1.0 if direction == "minimize" else -1.0
    ranked = sorted(scored, key=lambda t: (sign * t.value, t.number))
    return ranked if k is None else ranked[:k]


def sample_evenly(items: list, limit: int) -> list:
    """Every item if there are at most ``limit``, else an evenly strided subset (deterministic)."""
    if len(items) <= limit:
        return list(items)
    stride = len(items) / limit
    return [items[int(i * stride)] for i in range(limit)]


@dataclass(frozen=True)
class Density:
    """How a scatter of ``n`` points is drawn so that it stays readable.

    ``strategy`` is ``points`` (opaque), ``alpha`` (translucent) or ``sample``
    (translucent, drawn from an evenly strided subset of ``drawn`` points).
    """

    n: int
    strategy: str
    alpha: float
    marker_size: float
    drawn: int


def density(n: int) -> Density:
    """The drawing strategy for ``n`` points (see :data:`ALPHA_ABOVE`, :data:`SAMPLE_ABOVE`)."""
    if n <= ALPHA_ABOVE:
        return Density(n, "points", 0.9, 36.0, n)
    # alpha ≈ ALPHA_ABOVE / n: where n points pile up, they look like ALPHA_ABOVE opaque ones.
    alpha = max(0.08, min(0.6, ALPHA_ABOVE / n))
    size = max(8.0, 36.0 * math.sqrt(ALPHA_ABOVE / n))
    if n <= SAMPLE_ABOVE:
        return Density(n, "alpha", alpha, size, n)
    return Density(n, "sample", max(0.08, ALPHA_ABOVE / SAMPLE_ABOVE), 8.0, SAMPLE_ABOVE)


# ----------------------------------------------------------------- 1. landscape


@dataclass(frozen=True)
class LandscapePoint:
    """One completed trial on the λ axis; a loss of None is off the chart (diverged)."""

    number: int
    lr: float
    val_loss: float | None
    val_accuracy: float | None
    outcome: str
    run_id: str | None = None


@dataclass(frozen=True)
class Band:
    """A λ band: the range ``[lo, hi]`` its ``n`` trials span and their geometric median ``center``.

    ``left`` and ``right`` are the edges it is drawn with: adjacent bands share an
    edge, placed where it puts the fewest trials on the wrong side (``misplaced``
    counts them, for the band's trials), so noisy diagnoses still read as regions.
    """

    name: str
    label: str
    lo: float
    hi: float
    center: float
    n: int
    left: float
    right: float
    misplaced: int = 0


@dataclass(frozen=True)
class SuggestionMark:
    """A λ the range test suggests, with its name and why."""

    name: str
    lr: float
    reason: str


@dataclass
class LandscapeData:
    """Final validation loss and accuracy against λ, per trial, with the bands and the range test's suggestions."""

    points: list[LandscapePoint]
    bands: list[Band]
    suggestions: list[SuggestionMark]
    bounds: tuple[float, float] | None
    counts: dict[str, int]
    density: Density
    sentence: str

    def band(self, name: str) -> Band | None:
        """The band called ``name``, or None when no trial fell in it."""
        return next((b for b in self.bands if b.name == name), None)


def _geometric_median(values: Sequence[float]) -> float:
    return 10 ** statistics.median(math.log10(v) for v in values)


def derive_bands(points: Sequence[LandscapePoint]) -> list[Band]:
    """The λ bands, from the trials' outcomes: for each band, the λ range its trials span.

    The drawn edge between two neighbouring bands (in :data:`BANDS` order) is the
    threshold on log λ that misplaces the fewest of their trials (a one-feature
    decision stump), at the geometric midpoint of the gap it falls in.

    Returns:
        The bands that hold at least one trial, in :data:`BANDS` order (too_low,
        good, too_high, diverged); their centres are ordered along λ when the
        diagnoses are consistent with λ.
    """
    by_band: dict[str, list[float]] = {}
    for p in points:
        name = band_of(p.outcome)
        if name is not None:
            by_band.setdefault(name, []).append(p.lr)
    names = [name for name in BANDS if by_band.get(name)]
    edges = [_edge(by_band[a], by_band[b]) for a, b in zip(names, names[1:])]
    edges = _monotone(edges)
    bands = []
    for i, name in enumerate(names):
        lrs = by_band[name]
        right = edges[i] if i < len(edges) else max(max(lrs), edges[-1] if edges else 0.0)
        left = edges[i - 1] if i > 0 else min(min(lrs), right)
        misplaced = sum(1 for lr in lrs if not left <= lr <= right)
        bands.append(
            Band(name, BAND_LABELS[name], min(lrs), max(lrs), _geometric_median(lrs), len(lrs), left, right, misplaced)
        )
    return bands


def _monotone(edges: list[float]) -> list[float]:
    """Edges made non-decreasing: out-of-order runs (diagnoses that contradict λ) meet at their geometric mean.

    Pool-adjacent-violators on log λ (the least-squares non-decreasing fit, Barlow et al. 1972).
    """
    blocks: list[list[float]] = []  # [sum of log λ, count]
    for edge in edges:
        blocks.append([math.log(edge), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [math.exp(total / count) for total, count in blocks for _ in range(int(count))]


def _edge(left: list[float], right: list[float]) -> float:
    """The λ between two groups that puts the fewest ``left`` values above it and ``right`` values below it."""
    values = sorted(set(left) | set(right))
    best_cost, best = None, None
    for lo, hi in zip(values, values[1:]):
        cut = math.sqrt(lo * hi)  # the geometric midpoint of the gap: the middle on a log axis
        cost = sum(v > cut for v in left) + sum(v < cut for v in right)
        if best_cost is None or cost < best_cost:
            best_cost, best = cost, cut
    if best is None:  # both groups sit at one λ
        return values[0]
    return best


def suggestion_marks(lr_find: dict[str, Any] | None) -> list[SuggestionMark]:
    """The range test's suggestions as marks, in increasing λ."""
    if not lr_find:
        return []
    marks = []
    for name, sug in (lr_find.get("suggestions") or {}).items():
        if isinstance(sug, dict):
            lr, reason = sug.get("lr"), sug.get("reason", "")
        elif isinstance(sug, (list, tuple)) and sug:
            lr, reason = sug[0], (sug[1] if len(sug) > 1 else "")
        else:
            lr, reason = sug, ""
        if lr is not None and math.isfinite(float(lr)) and float(lr) > 0:
            marks.append(SuggestionMark(str(name), float(lr), str(reason or "")))
    return sorted(marks, key=lambda m: m.lr)


# The range test's pair of bounds for a cyclical schedule (bpexp.lr_find's names).
BOUND_NAMES = ("base_lr", "max_lr")


def range_bounds(lr_find: dict[str, Any] | None) -> tuple[float, float] | None:
    """The range test's suggested (base_lr, max_lr), or None when it gave no such pair."""
    marks = {m.name: m.lr for m in suggestion_marks(lr_find)}
    low, high = (marks.get(name) for name in BOUND_NAMES)
    if low is None or high is None or not low < high:
        return None
    return low, high


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def landscape_data(sweep: SweepRecord) -> LandscapeData | None:
    """The λ landscape, or None when fewer than two distinct λ completed."""
    points = []
    for t in completed(sweep):
        if t.lr is None:
            continue
        points.append(
            LandscapePoint(
                t.number,
                t.lr,
                _finite(t.final.get("val_loss")),
                _finite(t.final.get("val_accuracy")),
                trial_outcome(t),
                t.run_id,
            )
        )
    if len({p.lr for p in points}) < 2:
        return None
    counts: dict[str, int] = {}
    for p in points:
        counts[p.outcome] = counts.get(p.outcome, 0) + 1
    bands = derive_bands(points)
    marks = suggestion_marks(sweep.lr_find)
    bounds = range_bounds(sweep.lr_find)
    parts = [f"{b.label}: λ {_fmt_lr(b.lo)}–{_fmt_lr(b.hi)} ({b.n} trial{'s' if b.n != 1 else ''})" for b in bands]
    misplaced = sum(b.misplaced for b in bands)
    sentence = (
        "Each dot is a trial's final validation loss (top) and accuracy (bottom) at its λ, coloured by its diagnosis; "
        "the shaded bands show where λ was too low, good, too high and diverging"
        + (", the hatched span the range test's suggested bounds" if bounds else "")
        + (", and the dashed lines its other suggestions" if marks else "")
        + ". "
        + "; ".join(parts)
        + "."
        + (
            (" 1 trial lies outside its band's shading: λ alone does not explain its diagnosis." if misplaced == 1 else
             f" {misplaced} trials lie outside their bands' shading: λ alone does not explain their diagnoses.")
            if misplaced else ""
        )
    )
    return LandscapeData(points, bands, marks, bounds, counts, density(len(points)), sentence)


# ---------------------------------------------------------------- 2. range test


@dataclass
class RangeTestData:
    """The range test: loss (raw and smoothed) and accuracy against a rising λ, with its suggestions."""

    lrs: list[float]
    losses: list[float | None]
    smoothed: list[float | None]
    accuracies: list[float | None]
    suggestions: list[SuggestionMark]
    sentence: str


def range_test_data(sweep: SweepRecord) -> RangeTestData | None:
    """The range-test curve, or None when the sweep ran no range test."""
    rt = sweep.lr_find
    if not rt or not rt.get("lrs"):
        return None
    lrs = [float(v) for v in rt["lrs"]]
    n = len(lrs)

    def series(key: str) -> list[float | None]:
        values = list(rt.get(key) or [])[:n]
        return [_finite(v) for v in values] + [None] * (n - len(values))

    marks = suggestion_marks(rt)
    described = "; ".join(f"{m.name} λ={_fmt_lr(m.lr)}" + (f" ({m.reason})" if m.reason else "") for m in marks)
    sentence = (
        "λ rises step by step from left to right: the loss falls where λ starts to help and shoots up where it is too "
        "large; the marked λ are the range test's suggestions (Smith 2017, §3.3)"
        + (f": {described}." if marks else ".")
    )
    return RangeTestData(lrs, series("losses"), series("smoothed"), series("accuracies"), marks, sentence)


# ----------------------------------------------------------- 3. learning curves


@dataclass(frozen=True)
class Curve:
    """Train and validation loss per epoch of one trial."""

    number: int
    lr: float | None
    schedule: str
    epoch: list[int]
    train_loss: list[float | None]
    val_loss: list[float | None]
    stop_reason: str | None


@dataclass
class CurveGroup:
    """A few representative trials of one mode (``n`` trials had it in all)."""

    mode: str
    label: str
    n: int
    curves: list[Curve]


@dataclass
class CurvesData:
    """Learning curves grouped by failure mode, with the best healthy trials first."""

    groups: list[CurveGroup]
    sentence: str


def _curve(t: TrialRecord) -> Curve:
    h = t.history
    epochs = [int(e) for e in h.get("epoch") or []]
    n = len(epochs)

    def series(key: str) -> list[float | None]:
        values = [_finite(v) for v in (h.get(key) or [])][:n]
        return values + [None] * (n - len(values))

    return Curve(t.number, t.lr, t.schedule, epochs, series("train_loss"), series("val_loss"), t.stop_reason)


def _spread(trials: list[TrialRecord], k: int) -> list[TrialRecord]:
    """``k`` trials spread over the group's λ range: lowest, middle, highest λ."""
    ranked = sorted(trials, key=lambda t: (t.lr or 0.0, t.number))
    if len(ranked) <= k:
        return ranked
    picks = [round(i * (len(ranked) - 1) / (k - 1)) for i in range(k)] if k > 1 else [len(ranked) // 2]
    return [ranked[i] for i in picks]


def curves_data(sweep: SweepRecord, per_group: int = CURVES_PER_GROUP) -> CurvesData | None:
    """Learning curves of the best healthy trials and of a few trials per outcome found.

    Each trial sits in the group of its outcome (:func:`trial_outcome`, the colour it
    has in the landscape), so no curve is drawn twice. Groups run from λ too low to
    diverged (:data:`OUTCOME_ORDER`). Returns None when no completed trial has a history.
    """
    trials = [t for t in completed(sweep) if t.history.get("epoch")]
    if not trials:
        return None
    groups: list[CurveGroup] = []
    healthy = [t for t in trials if trial_outcome(t) == HEALTHY]
    if healthy:
        best = best_trials(healthy, sweep.direction, per_group) or healthy[:per_group]
        groups.append(CurveGroup(HEALTHY, "best healthy", len(healthy), [_curve(t) for t in best]))
    members: dict[str, list[TrialRecord]] = {}
    for t in trials:
        outcome = trial_outcome(t)
        if outcome != HEALTHY:
            members.setdefault(outcome, []).append(t)
    for mode in sorted(members, key=outcome_rank):
        group = members[mode]
        groups.append(CurveGroup(mode, outcome_label(mode), len(group), [_curve(t) for t in _spread(group, per_group)]))
    sentence = (
        "Training (solid) and validation (dashed) loss per epoch for the best healthy trials and a few trials of each "
        "other outcome (as coloured in the landscape), spread over λ: look for where the two lines part (overfitting), where they stay flat (λ too low), "
        "zig-zag (λ too high) or leave the chart (diverged)."
    )
    return CurvesData(groups, sentence)


# ------------------------------------------------------ 4. stop-threshold trade-off


@dataclass(frozen=True)
class StopPoint:
    """One trial's threshold, epochs spent and accuracy reached."""

    number: int
    stop_loss: float | None
    epochs: int
    accuracy: float | None
    train_accuracy: float | None
    outcome: str
    stopped_by_threshold: bool


@dataclass(frozen=True)
class StopLevel:
    """Summary of the trials run with one ``stop_loss`` (None: no threshold).

    When the sweep drew stop_loss from a continuous range, a level is a bin of
    thresholds ``[lo, hi]`` on a log scale and ``stop_loss`` its geometric centre.
    """

    stop_loss: float | None
    lo: float | None
    hi: float | None
    n: int
    median_epochs: float
    median_accuracy: float | None
    best_accuracy: float | None
    median_gap: float | None
    reached: int


@dataclass
class StopData:
    """stop_loss against epochs spent and the accuracy reached (test, or validation when there is no test split).

    ``levels`` run from the loosest threshold (largest stop_loss) to the tightest,
    with "no threshold" last.
    """

    metric: str
    points: list[StopPoint]
    levels: list[StopLevel]
    knee: float | None
    binned: bool
    density: Density
    sentence: str


# Thresholds are binned when there are more distinct ones than MAX_STOP_LEVELS, or
# when they average fewer than two trials each (a sweep that samples stop_loss from
# a range gives every trial its own value): into √n log-spaced bins, between 3 and
# STOP_BINS (the square-root choice of histogram bins).
MAX_STOP_LEVELS = 10
STOP_BINS = 8


def _stop_groups(points: list[StopPoint]) -> tuple[list[tuple[float | None, float | None, float | None, list[StopPoint]]], bool]:
    """Points grouped by threshold, loosest first, "none" last: (centre, lo, hi, points)."""
    numeric = sorted({p.stop_loss for p in points if p.stop_loss is not None}, reverse=True)
    with_threshold = [p for p in points if p.stop_loss is not None]
    groups: list[tuple[float | None, float | None, float | None, list[StopPoint]]] = []
    binned = len(numeric) > MAX_STOP_LEVELS or (len(numeric) > 4 and len(with_threshold) < 2 * len(numeric))
    if not binned:
        for value in numeric:
            groups.append((value, value, value, [p for p in points if p.stop_loss == value]))
    else:
        bins = max(3, min(STOP_BINS, round(math.sqrt(len(with_threshold)))))
        low, high = math.log10(numeric[-1]), math.log10(numeric[0])
        width = (high - low) / bins
        for k in reversed(range(bins)):
            a, b = low + k * width, low + (k + 1) * width
            members = [
                p for p in with_threshold
                if a <= math.log10(p.stop_loss) and (math.log10(p.stop_loss) < b or k == bins - 1)
            ]
            if members:
                groups.append((10 ** ((a + b) / 2), 10**a, 10**b, members))
    none = [p for p in points if p.stop_loss is None]
    if none:
        groups.append((None, None, None, none))
    return groups, binned


def stop_data(sweep: SweepRecord) -> StopData | None:
    """The stop-threshold trade-off, or None when the sweep used one threshold (or none) throughout.

    Diverged trials are left out (they never get near a threshold). ``knee`` is
    the loosest threshold whose best accuracy is within :data:`ACCURACY_TIE` of
    the best over all thresholds: tighter ones buy nothing.
    """
    trials = [t for t in completed(sweep) if t.stop_reason != DIVERGED]
    has_test = any(t.final.get("test_accuracy") is not None for t in trials)
    metric = "test_accuracy" if has_test else "val_accuracy"
    points = [
        StopPoint(
            t.number,
            t.stop_loss,
            int(t.epochs or len(t.history.get("epoch") or [])),
            _finite(t.final.get(metric)),
            _finite(t.final.get("train_accuracy")),
            trial_outcome(t),
            t.stop_reason == "loss_threshold",
        )
        for t in trials
    ]
    if len({p.stop_loss for p in points}) < 2:
        return None
    groups, binned = _stop_groups(points)
    levels = []
    for centre, lo, hi, group in groups:
        accs = [p.accuracy for p in group if p.accuracy is not None]
        gaps = [p.train_accuracy - p.accuracy for p in group if p.accuracy is not None and p.train_accuracy is not None]
        levels.append(
            StopLevel(
                centre,
                lo,
                hi,
                len(group),
                statistics.median(p.epochs for p in group),
                statistics.median(accs) if accs else None,
                max(accs) if accs else None,
                statistics.median(gaps) if gaps else None,
                sum(p.stopped_by_threshold for p in group),
            )
        )
    scored = [lv for lv in levels if lv.best_accuracy is not None]
    knee = None
    metric_name = metric.replace("_", " ")
    sentence = (
        f"For each stop_loss (loosest on the left, no threshold on the right), the epochs a run spent (top) and the "
        f"{metric_name} it reached (bottom): past the knee a tighter threshold buys nothing or starts to overfit."
    )
    if scored:
        top = max(lv.best_accuracy for lv in scored)
        first = next(lv for lv in scored if lv.best_accuracy >= top - ACCURACY_TIE)
        knee = first.stop_loss
        tighter = scored[scored.index(first) + 1 :]
        name = "training without a threshold" if knee is None else f"stop_loss ≈ {knee:.3g}"
        sentence += f" Here {name} already reaches the best {metric_name} ({top:.3f}) in {first.median_epochs:g} median epochs"
        if tighter:
            worst = min(tighter, key=lambda lv: lv.best_accuracy)
            spent = max(lv.median_epochs for lv in tighter)
            if worst.best_accuracy < top - ACCURACY_TIE:
                sentence += (
                    f"; tighter thresholds spend up to {spent:g} median epochs and lose accuracy (down to "
                    f"{worst.best_accuracy:.3f}"
                    + (f", median train−test gap {worst.median_gap:.3f}" if worst.median_gap is not None else "")
                    + "): they overfit"
                )
            else:
                sentence += f"; tighter thresholds spend up to {spent:g} median epochs for no better accuracy"
        sentence += "."
    return StopData(metric, points, levels, knee, binned, density(len(points)), sentence)


# ------------------------------------------------------ 5. schedule comparison


@dataclass(frozen=True)
class ScheduleSeries:
    """The best trial of one schedule: accuracy per epoch against iterations, and λ per iteration."""

    schedule: str
    number: int
    value: float | None
    iterations: list[int]
    accuracy: list[float | None]
    lr_iterations: list[int]
    lr_values: list[float]


@dataclass
class ScheduleData:
    """Each schedule's best trial, side by side."""

    series: list[ScheduleSeries]
    sentence: str


# Most λ points drawn per schedule: a cyclical schedule's shape survives this stride.
LR_POINTS = 2000


def _lr_over_time(t: TrialRecord) -> tuple[list[int], list[float]]:
    """λ at each iteration, rebuilt from the trial's schedule config; per-epoch λ when that fails."""
    h = t.history
    iterations = [int(i) for i in h.get("iterations") or []]
    per_epoch = [float(v) for v in h.get("lr") or [] if v is not None]
    fallback = ([0] + iterations[:-1])[: len(per_epoch)], per_epoch[: len(iterations)]
    if not iterations:
        return fallback
    try:
        from bpexp.config import config_from_dict
        from bpexp.schedules import build_schedule

        cfg = config_from_dict(t.config if t.config else unflatten(t.params))
        steps_per_epoch = iterations[0]
        total = steps_per_epoch * cfg.train.max_epochs
        schedule = build_schedule(cfg.schedule, default_lr=cfg.optim.lr, steps_per_epoch=steps_per_epoch, total_steps=total)
        last = iterations[-1]
        stride = max(1, math.ceil(last / LR_POINTS))
        ts = list(range(0, last, stride))
        return ts, [float(schedule(k)) for k in ts]
    except Exception:  # a config this version cannot rebuild: the logged per-epoch λ still tells the story
        return fallback


def schedule_data(sweep: SweepRecord) -> ScheduleData | None:
    """The best completed, non-diverged trial of each schedule; None when no trial has a history."""
    trials = [t for t in completed(sweep) if t.stop_reason != DIVERGED and t.history.get("iterations")]
    if not trials:
        return None
    by_schedule: dict[str, list[TrialRecord]] = {}
    for t in trials:
        by_schedule.setdefault(t.schedule, []).append(t)
    series = []
    for name in sorted(by_schedule):
        ranked = best_trials(by_schedule[name], sweep.direction, 1)
        t = ranked[0] if ranked else by_schedule[name][0]
        lr_t, lr_v = _lr_over_time(t)
        acc = [_finite(v) for v in t.history.get("val_accuracy") or []]
        its = [int(i) for i in t.history.get("iterations") or []][: len(acc)]
        series.append(ScheduleSeries(name, t.number, t.value, its, acc[: len(its)], lr_t, lr_v))
    best = max(series, key=lambda s: max((a for a in s.accuracy if a is not None), default=-1.0))
    peak = max((a for a in best.accuracy if a is not None), default=None)
    sentence = (
        "Each schedule's best trial: validation accuracy against iterations (top) and the λ it used at each iteration "
        "(bottom), so a jump in accuracy can be matched to what λ did."
        + (f" The highest accuracy is {best.schedule}'s ({peak:.3f}, trial {best.number})." if peak is not None else "")
    )
    if len(series) == 1:
        sentence += " The sweep tried only this schedule."
    return ScheduleData(series, sentence)


# ------------------------------------------ 6. optimisation history and importances


@dataclass
class HistoryData:
    """The objective per trial in trial order, with the best value so far."""

    numbers: list[int]
    values: list[float]
    outcomes: list[str]
    best_so_far: list[float]
    direction: str
    objective: str
    density: Density
    sentence: str


def history_data(sweep: SweepRecord) -> HistoryData | None:
    """Optuna's optimisation history, or None when no trial has a value."""
    scored = sorted(
        (t for t in completed(sweep) if t.value is not None and math.isfinite(t.value)), key=lambda t: t.number
    )
    if not scored:
        return None
    better = _better(sweep.direction)
    best: list[float] = []
    for t in scored:
        best.append(t.value if not best or better(t.value, best[-1]) else best[-1])
    first_best = next(t.number for t, b in zip(scored, best) if b == best[-1])
    sentence = (
        f"The {sweep.objective} of each completed trial in the order they ran, and the best so far (line): a line that "
        f"flattens early means more trials of this search would not help. The best ({best[-1]:.4g}) came at trial "
        f"{first_best} of {len(sweep.trials)}."
    )
    return HistoryData(
        [t.number for t in scored],
        [t.value for t in scored],
        [trial_outcome(t) for t in scored],
        best,
        sweep.direction,
        sweep.objective,
        density(len(scored)),
        sentence,
    )


@dataclass
class ImportanceData:
    """Parameter importances from Optuna, most important first (empty with a note when they cannot be computed)."""

    importances: dict[str, float]
    sentence: str


# Optuna's importance evaluators need a few trials to compare; fewer than this
# gives numbers that mean nothing.
MIN_TRIALS_FOR_IMPORTANCE = 4


def searched_params(sweep: SweepRecord) -> dict[str, Any]:
    """The searched params and their Optuna distributions.

    From ``sweep.search_space`` when known, else inferred: every flattened param
    whose value varies among the completed trials (numeric ones on a log scale
    when positive and spanning more than a factor of 10).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, json_to_distribution

    if sweep.search_space:
        return {name: json_to_distribution(text) for name, text in sweep.search_space.items()}
    trials = completed(sweep)
    # Only keys every trial has: a schedule's own fields (schedule.factor, ...) exist
    # only for that schedule, and schedule.name already carries that choice.
    names = sorted(set.intersection(*(set(t.params) for t in trials))) if trials else []
    space: dict[str, Any] = {}
    for name in names:
        values = [t.params.get(name) for t in trials]
        distinct = set(map(repr, values))
        if len(distinct) < 2:
            continue
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values) and all(math.isfinite(v) for v in numbers):
            low, high = float(min(numbers)), float(max(numbers))
            space[name] = FloatDistribution(low, high, log=low > 0 and high / low > 10)
        else:
            space[name] = CategoricalDistribution(sorted(distinct))
    return space


def importance_data(sweep: SweepRecord) -> ImportanceData:
    """Parameter importances by ``optuna.importance.get_param_importances`` over the completed trials.

    An in-memory study is rebuilt from the records, so the same code serves a
    study loaded from storage and records built in memory. Falls back to an
    empty result with a sentence saying why when there are too few trials or
    nothing varied.
    """
    import optuna

    scored = [t for t in completed(sweep) if t.value is not None and math.isfinite(t.value)]
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return ImportanceData(
            {},
            f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials with a value; "
            f"this sweep has {len(scored)}.",
        )
    space = searched_params(sweep)
    if not space:
        return ImportanceData({}, "Every completed trial used the same parameters: there is no importance to compute.")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" on stderr
    try:
        study = optuna.create_study(direction=sweep.direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in scored:
        params, dists = {}, {}
        for name, dist in space.items():
            value = t.params.get(name)
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                value = value if value in dist.choices else repr(value)
                if value not in dist.choices:
                    continue
            elif not _in_range(value, dist):
                continue
            params[name], dists[name] = value, dist
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.value))
    try:
        raw = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return ImportanceData({}, f"Optuna could not compute parameter importances: {exc}")
    importances = {k: float(v) for k, v in raw.items()}
    if not importances:
        return ImportanceData({}, "No searched parameter varied among the completed trials.")
    top = next(iter(importances))
    return ImportanceData(
        importances,
        f"How much of the variation in {sweep.objective} each parameter explains (Optuna's "
        f"get_param_importances): {top} matters most ({importances[top]:.0%}).",
    )


def _in_range(value: Any, dist: Any) -> bool:
    """Whether a numeric value lies in a Float/Int distribution's [low, high]."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return dist.low <= value <= dist.high


# ---------------------------------------------------------- 7. failure-mode table


@dataclass(frozen=True)
class FailureRow:
    """One failure mode: how many trials had it, typical evidence, advice, and one example."""

    mode: str
    label: str
    n: int
    share: float
    evidence: str
    advice: str
    example_number: int
    example_run_id: str | None
    example_link: str | None


@dataclass
class FailureTable:
    """Every mode found (and divergence), most frequent first, with the counts per trial state."""

    rows: list[FailureRow]
    healthy: int
    completed: int
    failed: int
    pruned: int
    sentence: str


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def _typical_evidence(findings: list[dict[str, Any]]) -> str:
    """The median of each numeric evidence key across the findings (the rest from the most confident one)."""
    keys: dict[str, list[Any]] = {}
    for f in findings:
        for key, value in (f.get("evidence") or {}).items():
            keys.setdefault(key, []).append(value)
    parts = []
    for key, values in keys.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if numbers and len(numbers) == len(values):
            parts.append(f"{key} ≈ {_fmt_value(statistics.median(numbers))}")
        elif not isinstance(values[0], (list, dict)):
            parts.append(f"{key} = {_fmt_value(values[0])}")
    return ", ".join(parts)


def run_link(sweep: SweepRecord, run_id: str | None) -> str | None:
    """A link to a run in the MLflow UI when the tracking URI is a server, else None."""
    uri = sweep.tracking_uri or ""
    if not run_id or not uri.startswith(("http://", "https://")) or sweep.experiment_id is None:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{sweep.experiment_id}/runs/{run_id}"


def failure_table(sweep: SweepRecord) -> FailureTable:
    """The failure-mode table (rows may be empty: the sentence then says every trial was healthy)."""
    done = completed(sweep)
    members: dict[str, list[tuple[TrialRecord, dict[str, Any]]]] = {}
    for t in done:
        for f in t.diagnosis:
            mode = f.get("mode")
            if mode:
                members.setdefault(str(mode), []).append((t, f))
        if t.stop_reason == DIVERGED and not t.diagnosis:
            # a diverged run the diagnosis said nothing about (recorded without it): still a failure
            members.setdefault(DIVERGED, []).append(
                (t, {"mode": DIVERGED, "confidence": 1.0, "evidence": {"epochs": t.epochs}, "advice": _DIVERGED_ADVICE})
            )
    rows = []
    for mode, group in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        findings = [f for _, f in group]
        example_trial, example = max(group, key=lambda tf: ((tf[1].get("confidence") or 0.0), -tf[0].number))
        advices = [str(f.get("advice") or "") for f in findings if f.get("advice")]
        advice = max(set(advices), key=advices.count) if advices else ""
        rows.append(
            FailureRow(
                mode,
                outcome_label(mode),
                len({t.number for t, _ in group}),
                len({t.number for t, _ in group}) / max(len(done), 1),
                _typical_evidence(findings),
                advice,
                example_trial.number,
                example_trial.run_id,
                run_link(sweep, example_trial.run_id),
            )
        )
    healthy = sum(1 for t in done if trial_outcome(t) == HEALTHY)
    failed, pruned = len(sweep.by_state(FAIL)), len(sweep.by_state(PRUNED))
    if rows:
        sentence = (
            f"Each failure mode the diagnosis found, how many of the {len(done)} completed trials showed it, the typical "
            "evidence, what to do about it, and one example run to open."
        )
    else:
        sentence = f"No failure mode was diagnosed in any of the {len(done)} completed trials."
    return FailureTable(rows, healthy, len(done), failed, pruned, sentence)


# Numerical blow-up: the classic sign that λ exceeds 2/L for the loss's curvature L
# (gradient descent on an L-smooth function is stable for λ < 2/L).
_DIVERGED_ADVICE = "lower λ (by 3–10×) or add a warm-up; the loss grew beyond its starting value"


# ----------------------------------------------------------- 8. recommendation


@dataclass
class Recommendation:
    """The best configuration as a ready-to-run spec, and what to try next."""

    number: int
    value: float | None
    objective: str
    config: dict[str, Any]
    healthy: bool
    next_steps: list[str] = field(default_factory=list)
    sentence: str = ""


def recommendation(sweep: SweepRecord) -> Recommendation | None:
    """The best healthy completed trial's config (the best completed one when none is healthy).

    Returns None when no completed trial has a value (or none has a config that still
    validates; a better trial passed over is named in the sentence). The config validates with
    :func:`bpexp.config.config_from_dict`; it is the trial's own resolved config,
    renamed after the study.
    """
    from bpexp.config import config_from_dict
    from bpexp.errors import ConfigError

    done = completed(sweep)
    healthy = best_trials([t for t in done if trial_outcome(t) == HEALTHY], sweep.direction)
    candidates = healthy or best_trials([t for t in done if t.stop_reason != DIVERGED], sweep.direction)
    if not candidates:
        return None
    skipped = []
    for best in candidates:
        raw = dict(best.config) if best.config else unflatten(best.params)
        raw["name"] = f"{sweep.study_name}-best"
        try:
            config = config_from_dict(raw, source=f"trial {best.number}").model_dump(mode="json")
            break
        except ConfigError as exc:  # recorded by another bpexp version: say so, take the next best
            skipped.append(f"{exc}")
    else:
        return None
    steps = _next_steps(sweep, best, done)
    sentence = (
        f"Trial {best.number} is the best {'healthy ' if healthy else ''}trial ({sweep.objective} = "
        f"{best.value:.4g}, λ = {_fmt_lr(best.lr) if best.lr else '?'}, schedule {best.schedule}"
        + (f", stop_loss {best.stop_loss:g}" if best.stop_loss is not None else "")
        + "); its spec below runs as it is with `bpexp train --spec`."
    )
    if not healthy:
        sentence += " No trial was free of findings, so take it as a starting point, not an answer."
    if skipped:
        sentence += f" Better trials' configs no longer validate and were passed over ({'; '.join(skipped[:2])})."
    return Recommendation(best.number, best.value, sweep.objective, config, bool(healthy), steps, sentence)


def _next_steps(sweep: SweepRecord, best: TrialRecord, done: list[TrialRecord]) -> list[str]:
    steps = []
    lrs = sorted({t.lr for t in done if t.lr is not None})
    if best.lr is not None and len(lrs) >= 3:
        if best.lr == lrs[0]:
            steps.append(f"The best λ is the lowest one tried ({_fmt_lr(best.lr)}): extend the search below it.")
        elif best.lr == lrs[-1]:
            steps.append(f"The best λ is the highest one tried ({_fmt_lr(best.lr)}): extend the search above it.")
    for mode in best.modes:
        finding = best.finding(mode) or {}
        if finding.get("advice"):
            steps.append(f"The best trial still shows {outcome_label(mode)}: {finding['advice']}")
    bounds = range_bounds(sweep.lr_find)
    if bounds is not None and best.schedule == "constant":
        steps.append(
            f"Try a cyclical schedule between the range test's bounds: `--schedule triangular --base-lr "
            f"{bounds[0]:.3g} --max-lr {bounds[1]:.3g}` (Smith 2017, §3.3)."
        )
    stop = stop_data(sweep)
    if stop is not None and stop.knee is not None and best.stop_loss != stop.knee:
        steps.append(
            f"stop_loss ≈ {stop.knee:.3g} reached the best accuracy in fewer epochs than tighter thresholds: "
            "use it to save time."
        )
    if not steps:
        steps.append("Re-run the recommended spec with a few other seeds to see how much of its lead is noise.")
    return steps


# ------------------------------------------------------------------ everything


@dataclass
class ReportData:
    """All the data of one report, in page order; a part is None when the sweep has nothing for it."""

    title: str
    kind: str
    counts: dict[str, int]
    notes: list[str]
    landscape: LandscapeData | None
    range_test: RangeTestData | None
    curves: CurvesData | None
    stop: StopData | None
    schedules: ScheduleData | None
    history: HistoryData | None
    importances: ImportanceData
    failures: FailureTable
    recommendation: Recommendation | None


def state_counts(sweep: SweepRecord) -> dict[str, int]:
    """Trials per Optuna state, and ``total``."""
    counts = {"total": len(sweep.trials)}
    for t in sweep.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def plain_notes(sweep: SweepRecord) -> list[str]:
    """Sentences that say plainly what is unusual about the sweep: empty, one trial, all failed, all pruned."""
    n = len(sweep.trials)
    done = completed(sweep)
    failed, pruned = sweep.by_state(FAIL), sweep.by_state(PRUNED)
    notes = []
    if n == 0:
        return ["This study has no trials yet: there is nothing to report."]
    if sweep.kind == "run":
        notes.append("This report covers one run, not a sweep: the λ landscape and the comparisons need several trials.")
    elif n == 1:
        notes.append("This sweep has one trial: the λ landscape and the comparisons need several.")
    if failed and len(failed) == n:
        reason = next((t.error for t in failed if t.error), None)
        notes.append(f"All {n} trials failed, so no figure can be drawn." + (f" The first error: {reason}" if reason else ""))
    elif pruned and len(pruned) == n:
        notes.append(f"All {n} trials were pruned before they finished, so there is no final result to compare.")
    elif not done:
        notes.append(f"None of the {n} trials completed ({len(failed)} failed, {len(pruned)} pruned, the rest unfinished).")
    else:
        if failed:
            notes.append(f"{len(failed)} of {n} trials failed and are left out of the figures.")
        if pruned:
            notes.append(f"{len(pruned)} of {n} trials were pruned and are left out of the figures.")
    no_history = [t for t in done if not t.history.get("epoch")]
    if no_history:
        where = f" in {sweep.tracking_uri}" if sweep.tracking_uri else " (no MLflow tracking store was found for this sweep)"
        notes.append(
            f"{len(no_history)} of {len(done)} completed trials have no per-epoch history{where}: "
            "the learning curves and the schedule comparison leave them out."
        )
    diverged = [t for t in done if t.stop_reason == DIVERGED]
    if done and len(diverged) == len(done):
        notes.append("Every completed trial diverged: λ was too high throughout; search lower.")
    return notes


def build_report_data(sweep: SweepRecord) -> ReportData:
    """Compute every figure's and table's data for ``sweep``."""
    title = f"bpexp report: {sweep.study_name}"
    return ReportData(
        title=title,
        kind=sweep.kind,
        counts=state_counts(sweep),
        notes=plain_notes(sweep),
        landscape=landscape_data(sweep),
        range_test=range_test_data(sweep),
        curves=curves_data(sweep),
        stop=stop_data(sweep),
        schedules=schedule_data(sweep),
        history=history_data(sweep),
        importances=importance_data(sweep),
        failures=failure_table(sweep),
        recommendation=recommendation(sweep),
    )
