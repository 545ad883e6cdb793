"""Drawing: each figure's data (``bpexp.report.data``) to PNG bytes with matplotlib.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas
directly, never through pyplot, so drawing leaves the caller's backend and
global state alone and works without a display. These functions hold no logic
worth testing beyond "it drew": the tests check the data.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

from bpexp.report.data import (
    BAND_LABELS,
    CurvesData,
    HistoryData,
    ImportanceData,
    LandscapeData,
    RangeTestData,
    ReportData,
    ScheduleData,
    StopData,
    sample_evenly,
    outcome_label,
    outcome_rank,
)

# One colour per outcome, the same in every figure (matplotlib's tab10, λ modes on
# the blue → red axis so the landscape reads cold (too low) to hot (diverged)).
OUTCOME_COLORS = {
    "lr_too_low": "#1f77b4",
    "healthy": "#2ca02c",
    "overfitting": "#9467bd",
    "underfitting": "#8c564b",
    "flat_minimum": "#17becf",
    "class_imbalance": "#e377c2",
    "bad_ordering": "#7f7f7f",
    "non_convergence": "#bcbd22",
    "lr_too_high": "#ff7f0e",
    "diverged": "#d62728",
}
BAND_COLORS = {"too_low": "#1f77b4", "good": "#2ca02c", "too_high": "#ff7f0e", "diverged": "#d62728"}
OTHER_COLOR = "#444444"
DPI = 90


def color_of(outcome: str) -> str:
    """The colour of an outcome or mode."""
    return OUTCOME_COLORS.get(outcome, OTHER_COLOR)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _outcome_order(outcomes) -> list[str]:
    return sorted(set(outcomes), key=outcome_rank)


# ----------------------------------------------------------------- 1. landscape


def draw_landscape(data: LandscapeData) -> bytes:
    """Validation loss (top) and accuracy (bottom) against log λ, with bands and suggestions."""
    figure = _figure(9.5, 6.2)
    loss_ax, acc_ax = figure.subplots(2, 1, sharex=True)
    dens = data.density
    points = sample_evenly(sorted(data.points, key=lambda p: p.number), dens.drawn)
    finite_losses = [p.val_loss for p in data.points if p.val_loss is not None and p.val_loss > 0]
    top = max(finite_losses) * 1.5 if finite_losses else 10.0
    for ax in (loss_ax, acc_ax):
        for i, band in enumerate(data.bands):
            # the outer bands reach a little past their last trial, so edge points sit inside
            left = band.left / 1.3 if i == 0 else band.left
            right = band.right * 1.3 if i == len(data.bands) - 1 else band.right
            ax.axvspan(left, right, color=BAND_COLORS[band.name], alpha=0.12, lw=0)
        if data.bounds:
            ax.axvspan(*data.bounds, facecolor="none", edgecolor="#555555", hatch="//", lw=0.0, alpha=0.5)
        for mark in data.suggestions:
            if mark.name not in ("base_lr", "max_lr"):
                ax.axvline(mark.lr, color="#555555", ls="--", lw=0.8)
    for outcome in _outcome_order(p.outcome for p in points):
        group = [p for p in points if p.outcome == outcome]
        label = f"{outcome_label(outcome)} ({data.counts.get(outcome, 0)})"
        lrs = [p.lr for p in group]
        losses = [p.val_loss if p.val_loss is not None else top for p in group]
        markers = ["^" if p.val_loss is None else "o" for p in group]
        for marker in ("o", "^"):
            idx = [i for i, m in enumerate(markers) if m == marker]
            if idx:
                loss_ax.scatter(
                    [lrs[i] for i in idx], [min(losses[i], top) for i in idx], s=dens.marker_size, alpha=dens.alpha,
                    color=color_of(outcome), marker=marker, edgecolors="none", label=label if marker == "o" or len(idx) == len(group) else None,
                )
        acc_ax.scatter(
            lrs, [p.val_accuracy if p.val_accuracy is not None else 0.0 for p in group], s=dens.marker_size,
            alpha=dens.alpha, color=color_of(outcome), edgecolors="none",
        )
    loss_ax.set_xscale("log")
    if finite_losses and min(finite_losses) > 0:
        loss_ax.set_yscale("log")
    loss_ax.set_ylim(top=top * 1.2)
    loss_ax.set_ylabel("final validation loss")
    acc_ax.set_ylabel("final validation accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_xlabel("λ (log scale)")
    for band in data.bands:
        loss_ax.annotate(
            BAND_LABELS[band.name], xy=(math.sqrt(band.left * band.right), 1.0), xycoords=("data", "axes fraction"), ha="center",
            va="bottom", fontsize="small", color=BAND_COLORS[band.name],
        )
    for mark in data.suggestions:
        acc_ax.annotate(
            mark.name, xy=(mark.lr, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize="x-small",
            ha="right", va="bottom", color="#333333",
        )
    loss_ax.legend(fontsize="small", loc="upper left", ncols=2, framealpha=0.85)
    if dens.strategy != "points":
        loss_ax.set_title(f"{dens.n} trials (translucent: darker where trials pile up)", fontsize="small")
    return _png(figure)


# ---------------------------------------------------------------- 2. range test


def draw_range_test(data: RangeTestData) -> bytes:
    """Loss (raw, smoothed) and accuracy against λ on a log axis, suggestions marked."""
    figure = _figure(9.5, 4.6)
    ax = figure.subplots()
    lrs = data.lrs
    raw = [(lr, v) for lr, v in zip(lrs, data.losses) if v is not None]
    smooth = [(lr, v) for lr, v in zip(lrs, data.smoothed) if v is not None]
    if raw:
        ax.plot(*zip(*raw), color="#1f77b4", alpha=0.25, lw=0.8, label="loss (per step)")
    if smooth:
        ax.plot(*zip(*smooth), color="#1f77b4", lw=2, label="loss (smoothed)")
        values = [v for _, v in smooth]
        # Keep the interesting part on the chart: the blow-up at the end would squash it.
        low, start = min(values), values[0]
        ax.set_ylim(low * 0.9 if low > 0 else low, max(start, low) * 1.6 + 1e-12)
    ax.set_xscale("log")
    ax.set_xlabel("λ (log scale)")
    ax.set_ylabel("training loss", color="#1f77b4")
    acc = [(lr, v) for lr, v in zip(lrs, data.accuracies) if v is not None]
    if acc:
        acc_ax = ax.twinx()
        acc_ax.plot(*zip(*acc), color="#2ca02c", lw=1.2, label="held-out accuracy")
        acc_ax.set_ylabel("held-out accuracy", color="#2ca02c")
        acc_ax.set_ylim(-0.02, 1.02)
    for i, mark in enumerate(data.suggestions):
        ax.axvline(mark.lr, color="#d62728" if mark.name in ("base_lr", "max_lr") else "#555555", ls="--", lw=1)
        ax.annotate(
            f"{mark.name}\n{mark.lr:.3g}", xy=(mark.lr, 0.98 - 0.12 * (i % 3)), xycoords=("data", "axes fraction"),
            fontsize="x-small", ha="left", va="top",
        )
    ax.legend(fontsize="small", loc="lower left")
    return _png(figure)


# ----------------------------------------------------------- 3. learning curves


def draw_curves(data: CurvesData) -> bytes:
    """One panel per group: train (solid) and validation (dashed) loss per epoch."""
    n = len(data.groups)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    figure = _figure(3.4 * cols + 0.6, 2.7 * rows + 0.3)
    axes = figure.subplots(rows, cols, squeeze=False)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for ax, group in zip(axes.flat, data.groups):
        firsts = []
        for color, curve in zip(palette, group.curves):
            train = [(e, v) for e, v in zip(curve.epoch, curve.train_loss) if v is not None and v > 0]
            val = [(e, v) for e, v in zip(curve.epoch, curve.val_loss) if v is not None and v > 0]
            label = f"#{curve.number} λ={curve.lr:.3g}" if curve.lr else f"#{curve.number}"
            if train:
                ax.plot(*zip(*train), color=color, lw=1.3, label=label)
                firsts.append(train[0][1])
            if val:
                ax.plot(*zip(*val), color=color, lw=1.1, ls="--")
        ax.set_yscale("log")
        if firsts:
            # A diverging curve would stretch the axis over decades: keep it near where runs start.
            ax.set_ylim(top=max(firsts) * 3)
        ax.set_title(f"{group.label} ({group.n} trial{'s' if group.n != 1 else ''})", fontsize="small",
                     color=color_of(group.mode))
        ax.set_xlabel("epoch", fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.legend(fontsize="xx-small", loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("loss (log)", fontsize="small")
    return _png(figure)


# ------------------------------------------------------ 4. stop-threshold trade-off


def _stop_x(value: float | None, none_at: float) -> float:
    return none_at if value is None else value


def draw_stop(data: StopData) -> bytes:
    """stop_loss (log, loosest left) against epochs (top) and accuracy (bottom); medians as lines."""
    figure = _figure(9.5, 5.6)
    ep_ax, acc_ax = figure.subplots(2, 1, sharex=True)
    numeric = [lv.stop_loss for lv in data.levels if lv.stop_loss is not None]
    none_at = min(numeric) / 4 if numeric else 1e-3
    dens = data.density
    points = sample_evenly(sorted(data.points, key=lambda p: p.number), dens.drawn)
    for outcome in _outcome_order(p.outcome for p in points):
        group = [p for p in points if p.outcome == outcome]
        xs = [_stop_x(p.stop_loss, none_at) for p in group]
        ep_ax.scatter(xs, [p.epochs for p in group], s=dens.marker_size, alpha=dens.alpha, color=color_of(outcome),
                      edgecolors="none", label=outcome_label(outcome))
        acc_ax.scatter(xs, [p.accuracy if p.accuracy is not None else 0.0 for p in group], s=dens.marker_size,
                       alpha=dens.alpha, color=color_of(outcome), edgecolors="none")
    xs = [_stop_x(lv.stop_loss, none_at) for lv in data.levels]
    ep_ax.plot(xs, [lv.median_epochs for lv in data.levels], color="black", lw=1.5, label="median")
    best = [(x, lv.best_accuracy) for x, lv in zip(xs, data.levels) if lv.best_accuracy is not None]
    med = [(x, lv.median_accuracy) for x, lv in zip(xs, data.levels) if lv.median_accuracy is not None]
    if best:
        acc_ax.plot(*zip(*best), color="black", lw=1.5, label="best")
    if med:
        acc_ax.plot(*zip(*med), color="black", lw=1, ls=":", label="median")
    if any(lv.best_accuracy is not None for lv in data.levels):  # a knee exists (None: "no threshold")
        knee_x = _stop_x(data.knee, none_at)
        for ax in (ep_ax, acc_ax):
            ax.axvline(knee_x, color="#d62728", ls="--", lw=1)
        acc_ax.annotate("knee", xy=(knee_x, 0.03), xycoords=("data", "axes fraction"), color="#d62728",
                        fontsize="small", ha="left")
    ep_ax.set_xscale("log")
    ep_ax.invert_xaxis()  # loosest threshold (largest stop_loss) on the left
    ticks = sorted(set(xs))
    acc_ax.set_xticks(ticks)
    has_none = any(lv.stop_loss is None for lv in data.levels)
    acc_ax.set_xticklabels(["none" if t == none_at and has_none else f"{t:.2g}" for t in ticks], fontsize="small")
    acc_ax.minorticks_off()
    ep_ax.set_ylabel("epochs spent")
    acc_ax.set_ylabel(data.metric.replace("_", " "))
    acc_ax.set_xlabel("train.stop_loss (log; tighter to the right)")
    ep_ax.legend(fontsize="x-small", loc="upper left", ncols=3)
    acc_ax.legend(fontsize="x-small", loc="lower left")
    return _png(figure)


# ------------------------------------------------------ 5. schedule comparison


def draw_schedules(data: ScheduleData) -> bytes:
    """Validation accuracy against iterations (top) and λ per iteration (bottom), one colour per schedule."""
    figure = _figure(9.5, 5.6)
    acc_ax, lr_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    positive = True
    for color, s in zip(palette * 3, data.series):
        pts = [(i, a) for i, a in zip(s.iterations, s.accuracy) if a is not None]
        if pts:
            acc_ax.plot(*zip(*pts), color=color, lw=1.5, label=f"{s.schedule} (#{s.number})")
        if s.lr_values:
            lr_ax.plot(s.lr_iterations, s.lr_values, color=color, lw=1)
            positive = positive and min(s.lr_values) > 0
    acc_ax.set_ylabel("validation accuracy")
    acc_ax.legend(fontsize="small", loc="lower right")
    lr_ax.set_ylabel("λ")
    if positive:
        lr_ax.set_yscale("log")
    lr_ax.set_xlabel("iteration")
    return _png(figure)


# ------------------------------------------ 6. optimisation history and importances


def draw_history(data: HistoryData) -> bytes:
    """Objective per trial (dots by outcome) and the best so far (step line)."""
    figure = _figure(9.5, 3.8)
    ax = figure.subplots()
    dens = data.density
    order = list(range(len(data.numbers)))
    drawn = sample_evenly(order, dens.drawn)
    for outcome in _outcome_order(data.outcomes[i] for i in drawn):
        idx = [i for i in drawn if data.outcomes[i] == outcome]
        ax.scatter([data.numbers[i] for i in idx], [data.values[i] for i in idx], s=dens.marker_size * 0.7,
                   alpha=dens.alpha, color=color_of(outcome), edgecolors="none", label=outcome_label(outcome))
    ax.step(data.numbers, data.best_so_far, where="post", color="black", lw=1.5, label="best so far")
    values = [v for v in data.values if v is not None]
    if values and min(values) > 0 and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{data.objective} ({data.direction})")
    ax.legend(fontsize="x-small", ncols=3)
    return _png(figure)


def draw_importances(data: ImportanceData) -> bytes:
    """Horizontal bars, most important on top."""
    names = list(data.importances)[::-1]
    figure = _figure(7.5, 0.5 + 0.38 * len(names))
    ax = figure.subplots()
    ax.barh(names, [data.importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (share of the objective's variation)")
    ax.set_xlim(0, max(1.0, max(data.importances.values())))
    ax.tick_params(axis="y", labelsize="small")
    return _png(figure)


# ----------------------------------------------------------------- everything

# Section name (a ReportData attribute) → its drawing function.
FIGURES: dict[str, Callable[[Any], bytes]] = {
    "landscape": draw_landscape,
    "range_test": draw_range_test,
    "curves": draw_curves,
    "stop": draw_stop,
    "schedules": draw_schedules,
    "history": draw_history,
}


def draw_all(report: ReportData) -> dict[str, bytes]:
    """PNG bytes of every figure the report has data for, keyed by section name."""
    images: dict[str, bytes] = {}
    for key, draw in FIGURES.items():
        data = getattr(report, key)
        if data is not None:
            images[key] = draw(data)
    if report.importances.importances:
        images["importances"] = draw_importances(report.importances)
    return images

