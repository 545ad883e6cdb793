"""One detector per failure mode: (run view, physics or None, findings so far) -> Finding | None.

Each starts from a published rule read off the History, then, where the model is in
hand (``phys`` is a :class:`~bpexp.diagnose.physics.RunPhysics`), confirms or rejects
the candidate with a physical measurement. Without the model (``phys is None``) a
detector either stays silent or reports a lower confidence. Every threshold below
names its source; "calibrated" ones were set on the labelled suite
(bpexp/labelled_suite.py; benchmarks/diagnosis_eval.py prints the margins).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from bpexp.diagnose import advice as adv
from bpexp.diagnose.findings import Finding
from bpexp.diagnose.physics import KNN_VAL, RunPhysics, stability_limit, step_multiplier
from bpexp.diagnose.signals import (
    MIN_LATE_POINTS,
    RunView,
    first_of_final_run,
    forgetting_ratio,
    label_perplexity,
    late_start,
    level,
    lr_exposure,
    oscillation,
    tail_share,
    trend_t,
    update_ratio,
    window_divergence,
)

# ------------------------------------------------------------------ thresholds

OSC_RISE_SHARE = 0.20
"""AutoTrainer (ICSE 2021): oscillation when ≥ 20 % of the checked epochs go the wrong way
(its rule counts accuracy swings of ≥ 0.03; we count rises of the training loss)."""
OSC_RISE_SIZE = 0.01
"""A rise counts towards oscillation when the mean rise is ≥ 1 % of the late loss level. The
suite's unstable and noisy runs rise by ≥ 4 %; but healthy minibatch runs near a loss of 0 can
too (up to 30 %, see the margins table of benchmarks/diagnosis_eval.py), so these two History
rules only nominate candidates: the Hessian, the polish steps or a full batch decide."""
OSC_DECAY = 0.5
"""Oscillations whose mean |Δloss| halves from the first to the second half of the late window
are dying out: a stable optimum approached with λ·λ_max between 1 and 2 (|1 − λh| < 1)."""
LOSS_REF_FLOOR = 0.01
"""Relative sizes are taken against the late loss level, but never against less than 1 % of the
initial loss: a loss near 0 (separable data) makes any wobble look huge in relative terms."""
JUMP_FLOOR = 0.1
"""TheDeepChecker's window rule (loss ≥ 2× its minimum of the last 5 epochs) also counts as a
sign of instability when the jump is ≥ 10 % of the initial loss (calibrated: minibatch noise
on a loss near 0 doubles it by amounts far below that)."""
UNSTABLE = 1.0
"""λ·λ_max / limit > 1: the optimum is unstable (limit 2 for SGD, see physics.stability_limit)."""
MIN_EFOLDS = 3.0
"""lr_too_low when the stiffest direction of the initial Hessian is given fewer than 3 e-folds
over the whole run, Σ_t λ_t·λ_max < 3: gradient descent shrinks the error along an eigenvector
of curvature h by (1 − λh) per step, so after Σλ_t·h e-folds e^-3 = 5 % of it is left even in
the fastest direction. Healthy suite runs give ≥ 50 e-folds, the λ/1000 runs ≤ 0.3."""
STILL_FALLING = 0.10
"""The last quarter of the run made ≥ 10 % of the loss's total fall: not settled (an exponential
or 1/t approach makes < 3 % of its fall in its last quarter once it has converged)."""
CLOSING_PACE = 0.1
"""non_convergence needs a loss that has stopped closing the gap to stop_loss: the last quarter
of the run closed < 10 % of the gap that remains, so at that pace (which only slows) the
threshold is more than 2.5 budgets away. Calibrated: the suite's settled floors close ≤ 1 % per
quarter, runs that merely need a few more epochs close ≥ 100 %."""
TREND_T = -3.0
"""…and "falling" also needs the last quarter's least-squares slope to be ≥ 3 standard errors
below 0 (a three-sigma rule), so a flat loss that only wobbles (a linear model on circles,
whose whole fall is noise) is never read as still falling."""
SLOW_FALL = 0.5
"""Without the model: a loss still falling steadily that has not yet lost half its starting value
(calibrated: the λ/1000 suite runs have lost ≤ 25 % of it; healthy runs whose loss still falls
at the end have lost ≥ 80 %)."""
UPDATE_RATIO_SLOW = -4.0
UPDATE_RATIO_FAST = -1.0
"""TheDeepChecker: the update ratio log10(mean|ΔW| / mean|W|) below −4 means too slow, above −1
too fast (used only without the model, where no Hessian can decide; we take norms per step)."""
POLISH_GAIN = 0.10
"""10 safe full-batch steps from the final weights lower the loss by ≥ 10 %: the run hovered
above a minimum it could reach (noise floor). Calibrated: converged runs gain < 1 %, the suite's
batch-1 runs ≥ 25 %."""
OVERFIT_GAP = 0.10
"""AutoTrainer (ICSE 2021): overfitting needs a train − validation accuracy gap ≥ 0.10."""
GAP_SE = 3.0
"""…and the gap must be ≥ 3 binomial standard errors √(p(1−p)/n_val) of the validation accuracy
(a three-sigma rule), so that a 36-sample validation split (wine) cannot produce it by chance."""
GL_ALPHA = 5.0
"""Prechelt (1998), criterion GL_α: the validation loss ≥ α % above its minimum so far; α = 5 is
the most tolerant member of the GL class he evaluated (GL1 … GL5)."""
IMBALANCE_PERPLEXITY = 0.5
"""TheDeepChecker: label imbalance when the normalised label perplexity exp(H)/K < 0.5."""
RECALL_GAP = 0.10
"""The majority class's validation recall ≥ 0.10 above the others' mean: the skew biased the
weights (AutoTrainer's 0.10 accuracy gap, applied per class)."""
KNN_MARGIN = 0.10
"""Underfitting when a 5-NN vote beats the model's validation accuracy by ≥ 0.10 (the same
0.10 gap AutoTrainer uses between train and validation accuracy)."""
UNDERFIT_TRAIN_ACC = 0.95
"""Only a model with training accuracy below 0.95 is checked for underfitting, so the 5-NN
reference is computed only then: a model that fits ≥ 95 % of its training data does not fit it
"far worse than the data allows", whatever its validation accuracy (that gap is overfitting's)."""
PRIOR_GAIN = 0.3
"""Without the model: underfitting when the settled loss removes < 30 % of the loss of
predicting the class priors (1 − L/H(prior)). Calibrated: a linear model on circles removes 0 %,
healthy runs on separable data ≥ 55 %; overlapping classes (the Bayes rate, not the model)
also remove little, which only the 5-NN reference of diagnose() can tell apart."""
FORGET_RATIO = 0.7
"""bad_ordering needs batches that are fit and then forgotten: the mean minibatch loss met during
an epoch below 0.7 × the loss at the epoch's end. Calibrated: sorted labels on overlapping blobs
give 0.28-0.35; shuffled, fixed-order and full-batch runs ≥ 0.99 (each minibatch loss is taken
before its update, so it sits a little above the epoch's end); dropout runs ≈ 2."""
TWIN_SHARE = 0.05
TWIN_MAX_EPOCHS = 3
"""The shuffled twin runs 5 % of the run's epochs, at least 1 and at most 3: one epoch of
shuffled SGD already pulls ahead of a sorted one, and the twin stays near 5 % of the run's cost."""
TWIN_RATIO = 0.8
"""bad_ordering when the short shuffled twin ends ≥ 20 % below the loss the whole run ended with:
the order cost more than the entire budget. A run that starts slower but catches up (sorted
digits in batches of 8) is not a failure."""
SHORT_RUN = 5
"""Findings of runs shorter than this many epochs get their confidence scaled by epochs/5: one
epoch says little about a trend, so a one-epoch run only ever gets low-confidence findings."""

Detector = Callable[[RunView, "RunPhysics | None", dict], "Finding | None"]


# -------------------------------------------------------------------- helpers


def _conf(base: float, strength: float, top: float = 0.97) -> float:
    """base + (top − base)·(1 − e^−strength): confidence grows with how far past its threshold
    the evidence is (strength 0 at the threshold)."""
    strength = max(0.0, strength) if math.isfinite(strength) else 0.0
    return float(min(top, base + (top - base) * (1.0 - math.exp(-strength))))


def _short(view: RunView, confidence: float) -> float:
    """Scale the confidence of a run shorter than :data:`SHORT_RUN` epochs by epochs/5."""
    if view.n >= SHORT_RUN:
        return confidence
    return confidence * max(view.n, 0) / SHORT_RUN


def _still_falling(
    series: np.ndarray, first: float, threshold: float = STILL_FALLING, *, crawl: bool = False
) -> tuple[bool, float]:
    """(falling?, share of the fall in the last quarter): the share ≥ ``threshold`` and a
    slope ≥ 3 standard errors below 0.

    With ``crawl``, a fall under MIN_FALL that is steady beyond doubt counts too: the
    slowest of descents (λ = 1e-5 on digits: 0.6 % in 20 epochs, t ≈ −10⁴). Only
    lr_too_low asks for it, where the Hessian's e-fold count then decides; for the
    other detectors such a crawl is a model settling at its floor (a linear model on
    circles creeping towards log 2).
    """
    share = tail_share(series, 0.75, first)
    t = trend_t(series, 0.75)
    if crawl and not math.isfinite(share) and t <= TREND_T:
        share = tail_share(series, 0.75, first, min_fall=0.0)
    falling = math.isfinite(share) and share >= threshold and t <= TREND_T  # NaN compares False
    return falling, share


def _late_oscillation(view: RunView):
    start = late_start(view.n)
    late = view.loss[start:]
    finite = late[np.isfinite(late)]
    if len(finite) < MIN_LATE_POINTS:
        return None, start
    ref = max(float(np.median(finite)), LOSS_REF_FLOOR * view.loss_init if math.isfinite(view.loss_init) else 0.0)
    return oscillation(late, ref), start


def _oscillating(osc) -> bool:
    return (
        osc is not None
        and osc.rise_share >= OSC_RISE_SHARE
        and osc.rise_size >= OSC_RISE_SIZE
        and not (math.isfinite(osc.decay) and osc.decay < OSC_DECAY)
    )


def _rolling_rise_start(view: RunView, width: int = 10) -> int:
    """1-based epoch where the final stretch of oscillation begins (rolling rise share ≥ 20 %)."""
    d = np.diff(view.loss)
    if len(d) < width:
        return max(1, late_start(view.n) + 1)
    # rises in the window d[max(0, i − width + 1) : i + 1], by differences of a running count
    counts = np.cumsum(np.concatenate([[0], d > 0]))
    ends = np.arange(1, len(d) + 1)
    starts = np.maximum(0, ends - width)
    flags = (counts[ends] - counts[starts]) / (ends - starts) >= OSC_RISE_SHARE
    first = first_of_final_run(flags)
    return (first if first is not None else late_start(view.n)) + 2  # diff index i ends at epoch i+2


def _late_lr(view: RunView) -> float:
    start = late_start(view.n)
    lr = view.lr[start:]
    lr = lr[np.isfinite(lr)]
    return float(lr.max()) if len(lr) else adv.peak_lr(view.config)


def _diverged_at(view: RunView) -> int | None:
    if "diverged_at" not in view.memo:
        view.memo["diverged_at"] = _first_diverged_epoch(view)
    return view.memo["diverged_at"]


def _first_diverged_epoch(view: RunView) -> int | None:
    init = view.loss_init
    above = view.config.train.diverge_factor * init if math.isfinite(init) else math.inf
    bad = np.flatnonzero(~np.isfinite(view.loss) | (view.loss > above))  # NaN > x is False, caught by isfinite
    if len(bad):
        return int(bad[0]) + 1
    if view.stop_reason == "diverged":
        return max(view.n, 1)
    return None


def _plateau_epoch(series: np.ndarray, band: float = 0.05) -> int:
    """First epoch (1-based) from which the series stays within ``band`` (relative) of its end level."""
    end = level(series, len(series) - 1)
    if not math.isfinite(end) or len(series) == 0:
        return 1
    flags = np.isfinite(series) & (np.abs(series - end) <= band * max(abs(end), 1e-12))
    first = first_of_final_run(flags)
    return (first if first is not None else len(series) - 1) + 1


# ----------------------------------------------------------------- lr_too_high


def lr_too_high(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """λ past the stability limit: the loss diverges, or keeps oscillating late in the run.

    Divergence (train.py's rule: not finite, or above diverge_factor × the initial loss)
    is enough on its own. A late oscillation must not be dying out and, with the model,
    λ·λ_max(H at the final weights) must exceed the optimiser's stability limit; without
    the model, only a full-batch run (no noise to blame) or a period-2 pattern counts.
    """
    config = view.config
    lr = adv.peak_lr(config)
    limit = stability_limit(config)
    key = adv.lr_key(config)
    diverged = _diverged_at(view)
    if diverged is not None:
        evidence = {"lr": lr, "diverged_epoch": diverged, "initial_loss": view.loss_init,
                    "last_finite_loss": _last_finite(view.loss)}
        safe = None
        confidence = 0.9
        if phys is not None and limit is not None:
            h0 = phys.h_init
            evidence["lambda_max_init"] = h0
            if math.isfinite(h0) and h0 > 0:
                ratio = lr * h0 / limit
                evidence["stability_ratio"] = ratio
                safe = 0.5 * limit / h0
                confidence = 0.97 if ratio > UNSTABLE else 0.8
        new_lr, source = adv.lower_lr(lr, safe, view.lr_find, fallback_divisor=10.0)
        reason = f"λ·λ_max = {adv.fmt(evidence['stability_ratio'] * limit)} > {adv.fmt(limit)}, " if "stability_ratio" in evidence and evidence["stability_ratio"] > UNSTABLE else ""
        text = (f"λ = {adv.fmt(lr)} diverges ({reason}the loss left any finite track at epoch {diverged}); "
                f"try λ ≤ {adv.fmt(new_lr)} ({source}), or run `bpexp lr-find`")
        return Finding("lr_too_high", _short(view, confidence), diverged, evidence, text, {key: new_lr})

    osc, start = _late_oscillation(view)
    jump = window_divergence(view.loss, JUMP_FLOOR * view.loss_init) if math.isfinite(view.loss_init) else False
    if not (_oscillating(osc) or (jump and osc is not None)):
        return None
    late_lr = _late_lr(view)
    evidence = {"lr": late_lr, "late_rise_share": osc.rise_share, "late_rise_size": osc.rise_size,
                "oscillation_decay": osc.decay, "alternation": osc.alternation, "final_jump": jump}
    safe = None
    if phys is not None and limit is not None:
        # λ_max is only needed to decide λ·λ_max > limit and to set a safe λ: a Lanczos lower
        # bound that already passes the limit decides it (the advice then halves λ at least)
        ritz = phys.h_end_reaching(UNSTABLE * limit / late_lr if late_lr > 0 else math.inf)
        h = ritz.value
        evidence["lambda_max" if ritz.converged else "lambda_max_at_least"] = h
        if not (math.isfinite(h) and h > 0):
            return None
        ratio = late_lr * h / limit
        evidence["stability_ratio"] = ratio
        if ratio <= UNSTABLE:
            return None  # stable curvature: the wobble is minibatch noise (see flat_minimum)
        safe = 0.5 * limit / h
        confidence = _conf(0.8, (ratio - UNSTABLE) / 0.25 + (osc.rise_share - OSC_RISE_SHARE) / 0.2)
        why = f"λ·λ_max {'=' if ritz.converged else '≥'} {adv.fmt(late_lr * h)} > {adv.fmt(limit)}"
    elif view.full_batch:
        confidence = _conf(0.6, (osc.rise_share - OSC_RISE_SHARE) / 0.2, top=0.8)
        why = "full batch, so no minibatch noise to blame"
    elif math.isfinite(osc.alternation) and osc.alternation >= 0.8:
        confidence = 0.5
        why = f"the loss alternates up and down in {adv.pct(osc.alternation)} of epochs"
    elif (ratio := update_ratio(view)) > UPDATE_RATIO_FAST:
        evidence["update_ratio"] = ratio
        confidence = 0.5
        why = f"each step rewrites the weights: log10(step/‖W‖) = {adv.fmt(ratio)} > {UPDATE_RATIO_FAST:g}"
    else:
        return None
    new_lr, source = adv.lower_lr(late_lr, safe, view.lr_find, fallback_divisor=4.0)
    what = "jumps" if jump and not _oscillating(osc) else "oscillates"
    text = (f"λ = {adv.fmt(late_lr)} {what} ({adv.pct(osc.rise_share)} of late epochs raise the loss; {why}); "
            f"try λ ≤ {adv.fmt(new_lr)} ({source}), or run `bpexp lr-find`")
    return Finding("lr_too_high", _short(view, confidence), _rolling_rise_start(view), evidence, text,
                   {key: new_lr})


def _last_finite(series: np.ndarray) -> float:
    finite = series[np.isfinite(series)]
    return float(finite[-1]) if len(finite) else math.nan


# ------------------------------------------------------------- non_convergence


def non_convergence(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """The run cannot meet its stop rule as configured.

    Either it diverged (the loss does not converge at all), or ``stop_loss`` is set, the
    run used its whole budget, and the watched loss settled on a floor above the
    threshold. With the model, the floor must be real: safe full-batch steps from the
    final weights do not lower it (otherwise it is a noise floor: flat_minimum). A
    validation floor above a training loss that already meets ``stop_loss`` needs no
    such check: it is the generalisation gap.
    """
    tcfg = view.config.train
    diverged = _diverged_at(view)
    if diverged is not None:
        evidence = {"diverged_epoch": diverged, "initial_loss": view.loss_init, "last_finite_loss": _last_finite(view.loss)}
        patch = dict(found["lr_too_high"].suggested_config) if "lr_too_high" in found else {}
        text = f"the loss does not converge: it left any finite track at epoch {diverged}; lower λ (see lr_too_high)"
        return Finding("non_convergence", _short(view, 0.9), diverged, evidence, text, patch)
    if tcfg.stop_loss is None or view.stop_reason != "max_epochs" or view.n < MIN_LATE_POINTS:
        return None
    watched = view.watched
    floor = float(np.nanmin(watched)) if np.isfinite(watched).any() else math.nan
    if not (math.isfinite(floor) and floor > tcfg.stop_loss):
        return None
    quarter = level(watched, max(0, int(0.75 * view.n) - 1)) - level(watched, view.n - 1)
    pace = quarter / (floor - tcfg.stop_loss)
    if not math.isfinite(pace) or pace >= CLOSING_PACE:
        return None  # still closing the gap to stop_loss: a budget question, not a floor
    evidence = {"stop_loss": tcfg.stop_loss, "loss_floor": floor, "last_quarter_fall_over_gap": pace,
                "full_batch": view.full_batch}
    generalisation = False
    if tcfg.stop_on == "val":
        train_end = level(view.loss, view.n - 1)
        evidence["train_loss_end"] = train_end
        generalisation = train_end <= tcfg.stop_loss
    if view.full_batch or generalisation:
        # No minibatch noise can hold a full-batch loss up: a settled loss is the floor. And a
        # validation floor above a training loss that already meets stop_loss is the
        # generalisation gap: no optimisation of the training loss (noisy or not) can close it,
        # so the polish steps below would measure the wrong loss.
        confidence = _conf(0.8, math.log(floor / tcfg.stop_loss) / math.log(2.0))
    elif phys is not None:
        h = phys.h_end
        gain = phys.polish(h).gain
        evidence["polish_gain"] = gain
        if not math.isfinite(gain) or gain >= POLISH_GAIN:
            return None  # a lower loss is within reach: a noise floor (flat_minimum)
        confidence = _conf(0.8, math.log(floor / tcfg.stop_loss) / math.log(2.0))
    else:
        osc, _ = _late_oscillation(view)
        if osc is not None and osc.rise_size >= OSC_RISE_SIZE:
            return None
        confidence = _conf(0.5, math.log(floor / tcfg.stop_loss) / math.log(2.0), top=0.75)
    new_stop = adv.round_up(1.1 * floor)
    which = "validation" if tcfg.stop_on == "val" else "training"
    if generalisation:
        remedy = (f"the training loss is already {adv.fmt(evidence['train_loss_end'])}, so the gap is generalisation; "
                  f"raise it to {adv.fmt(new_stop)} or regularise (model.l2, model.dropout)")
    else:
        remedy = f"raise it to {adv.fmt(new_stop)} or change the model"
    text = f"stop_loss {adv.fmt(tcfg.stop_loss)} is below the {which} loss floor {adv.fmt(floor)} this model reaches; {remedy}"
    return Finding("non_convergence", _short(view, confidence), _plateau_epoch(watched), evidence, text,
                   {"train.stop_loss": new_stop})


# ------------------------------------------------------------------ lr_too_low


def lr_too_low(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """λ so small that the loss is still falling steadily when the budget runs out.

    With the model: the run gave the stiffest direction of the initial Hessian fewer
    than :data:`MIN_EFOLDS` e-folds, Σ_t λ_t·λ_max(H₀) < 3. Without it: TheDeepChecker's
    update ratio below −4.
    """
    if view.stop_reason != "max_epochs" or view.n < MIN_LATE_POINTS or "lr_too_high" in found:
        return None
    init = view.loss_init
    falling, share = _still_falling(view.loss, init, crawl=True)
    osc, _ = _late_oscillation(view)
    if not falling or (osc is not None and osc.rise_share >= OSC_RISE_SHARE):
        return None
    config = view.config
    lr = adv.peak_lr(config)
    key = adv.lr_key(config)
    exposure = lr_exposure(view) * step_multiplier(config)
    evidence = {"lr": lr, "last_quarter_share_of_fall": share, "loss_fall": (init - _last_finite(view.loss)) / init if init else math.nan}
    limit = stability_limit(config)
    safe = None
    if phys is not None and limit is not None:
        h0 = phys.h_init
        if not (math.isfinite(h0) and h0 > 0):
            return None
        efolds = exposure * h0
        evidence.update({"lambda_max_init": h0, "efolds": efolds})
        if efolds >= MIN_EFOLDS:
            return None
        safe = 0.5 * limit / h0 / step_multiplier(config)
        confidence = _conf(0.8, math.log(MIN_EFOLDS / max(efolds, 1e-12)) / math.log(10.0))
        why = f"Σλ·λ_max = {adv.fmt(efolds)} e-folds in the stiffest direction, < {MIN_EFOLDS:g}"
    else:
        ratio = update_ratio(view)
        fell = evidence["loss_fall"]
        evidence["update_ratio"] = ratio
        if math.isfinite(ratio) and ratio < UPDATE_RATIO_SLOW:
            confidence = _conf(0.5, (UPDATE_RATIO_SLOW - ratio), top=0.7)
            why = f"log10(step/‖W‖) = {adv.fmt(ratio)} < {UPDATE_RATIO_SLOW:g}"
        elif math.isfinite(fell) and fell < SLOW_FALL:
            confidence = 0.45
            why = f"the loss has fallen only {adv.pct(fell)} from where it started"
        else:
            return None
    new_lr, source = adv.higher_lr(lr, safe, view.lr_find, fallback_factor=10.0)
    text = (f"λ = {adv.fmt(lr)} is too small: the loss is still falling steadily at epoch {view.n} "
            f"({adv.pct(share)} of its fall came in the last quarter; {why}); try λ = {adv.fmt(new_lr)} ({source})")
    return Finding("lr_too_low", _short(view, confidence), 1, evidence, text, {key: new_lr})


# ---------------------------------------------------------------- flat_minimum


def flat_minimum(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """The loss hovers above a minimum it never reaches: minibatch noise at a constant λ.

    History: a minibatch run whose late loss keeps rising and falling without net
    progress. With the model: the curvature is stable (λ·λ_max below the limit, so it
    is not lr_too_high) and safe full-batch steps from the final weights lower the loss
    by ≥ 10 %, so a lower loss was within reach.
    """
    if view.full_batch or view.stop_reason in ("diverged", "loss_threshold", "early_stopping") or "lr_too_high" in found:
        return None
    osc, start = _late_oscillation(view)
    if osc is None or osc.rise_share < OSC_RISE_SHARE or osc.rise_size < OSC_RISE_SIZE:
        return None
    t = trend_t(view.loss, 0.5)
    if t <= TREND_T:
        return None  # the level still sinks: a slow descent (separable data), not a floor
    late = view.loss[start:]
    hover = float(np.nanmedian(late))
    spread = float(np.nanstd(late))
    evidence = {"late_rise_share": osc.rise_share, "late_rise_size": osc.rise_size, "hover_loss": hover,
                "hover_spread": spread, "batch_size": view.batch, "late_trend_t": t}
    config = view.config
    if phys is not None:
        h = phys.h_end
        limit = stability_limit(config)
        if limit is not None and math.isfinite(h) and h > 0:
            evidence["stability_ratio"] = _late_lr(view) * h / limit
        gain = phys.polish(h).gain
        evidence["polish_gain"] = gain
        evidence["polished_loss"] = phys.polish(h).after
        if not (math.isfinite(gain) and gain >= POLISH_GAIN):
            return None
        confidence = _conf(0.75, (gain - POLISH_GAIN) / 0.2 + (osc.rise_share - OSC_RISE_SHARE) / 0.2)
        reach = f"{phys.polish(h).steps} full-batch steps from the final weights reach {adv.fmt(phys.polish(h).after)}"
    else:
        if math.isfinite(osc.alternation) and osc.alternation >= 0.8:
            return None  # a period-2 pattern is instability, not noise
        confidence = _conf(0.4, (osc.rise_size - OSC_RISE_SIZE) / 0.05, top=0.6)
        reach = "its minimum lies lower"
    if config.schedule.name in adv.DECAYING_SCHEDULES:
        patch = {"optim.batch_size": min(view.n_train, max(4 * view.batch, 32))}
        change = f"use larger batches (optim.batch_size: {patch['optim.batch_size']})"
    else:
        patch = {"schedule.name": "cosine"}
        change = "decay λ (schedule: cosine) or use larger batches"
    stop = config.train.stop_loss
    goal = f", above stop_loss {adv.fmt(stop)}" if stop is not None else ""
    text = (f"the loss hovers at {adv.fmt(hover)} ± {adv.fmt(spread)}{goal} (it rises in {adv.pct(osc.rise_share)} of late "
            f"epochs) while {reach}: {change}")
    return Finding("flat_minimum", _short(view, confidence), _rolling_rise_start(view), evidence, text, patch)


# ------------------------------------------------------------- class_imbalance


def class_imbalance(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """A skewed training set that biased the weights.

    TheDeepChecker's label perplexity < 0.5 on the training counts; with the model, the
    majority class's validation recall must also stand ≥ 0.10 above the others' mean.
    """
    counts = np.asarray(view.summary.get("train_class_counts") or [], dtype=np.float64)
    total = float(counts.sum())
    if len(counts) < 2 or total <= 0:
        return None
    # entropy ≥ min-entropy −log(max p), so perplexity exp(H)/K ≥ 1/(K·max p): while
    # K·max p ≤ 1/0.5 it cannot fall below the threshold (the 1e-9 margin keeps rounding out)
    if float(counts.max()) * len(counts) <= total / IMBALANCE_PERPLEXITY * (1.0 - 1e-9):
        return None
    ppl = label_perplexity(counts)
    if not (math.isfinite(ppl) and ppl < IMBALANCE_PERPLEXITY):
        return None
    majority = int(np.argmax(counts))
    others = np.delete(counts, majority)
    ratio = float(counts[majority] / max(np.mean(others[others > 0]) if (others > 0).any() else 1.0, 1.0))
    evidence = {"label_perplexity": ppl, "majority_class": majority, "majority_ratio": ratio}
    if phys is not None:
        recall, share = phys.recall
        rest = np.delete(recall, majority)
        rest = rest[np.isfinite(rest)]
        if not len(rest) or not math.isfinite(recall[majority]):
            return None
        gap = float(recall[majority] - rest.mean())
        evidence.update({"majority_recall": float(recall[majority]), "minority_recall": float(rest.mean()),
                         "majority_prediction_share": float(share[majority])})
        if gap < RECALL_GAP:
            return None
        confidence = _conf(0.8, (gap - RECALL_GAP) / 0.1 + (IMBALANCE_PERPLEXITY - ppl) / 0.2)
        effect = (f"validation recall {adv.fmt(float(recall[majority]))} for class {majority} against "
                  f"{adv.fmt(float(rest.mean()))} for the others")
    else:
        confidence = _conf(0.4, (IMBALANCE_PERPLEXITY - ppl) / 0.2, top=0.6)
        effect = "the model sees the minority classes rarely"
    patch = {"data.imbalance": 1.0} if view.config.data.imbalance is not None else {}
    fix = "balance the training set (data.imbalance: 1)" if patch else "oversample the minority classes or collect more of them"
    text = (f"class {majority} outnumbers the others {adv.fmt(ratio)}:1 (label perplexity {adv.fmt(ppl)} < "
            f"{IMBALANCE_PERPLEXITY:g}), giving {effect}; {fix}")
    return Finding("class_imbalance", _short(view, confidence), 1, evidence, text, patch)


# ---------------------------------------------------------------- bad_ordering


def bad_ordering(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """A sample order that makes consecutive updates cancel: a shuffled twin does better.

    Cheap signals first: the order is not shuffled, batches are smaller than the data
    (full batches see every order alike), and each batch is fit then forgotten: the mean
    minibatch loss met during an epoch is below :data:`FORGET_RATIO` × the loss at its end
    (without ``batch_loss`` in the History, ``sorted`` alone qualifies). Then a short
    shuffled twin (:data:`TWIN_SHARE` of the epochs) must end ≤ 80 % of the loss the whole
    run ended with. Without the model, the forgetting ratio alone, at lower confidence.
    """
    config = view.config
    order = config.data.order
    if order == "shuffled" or view.full_batch or view.n == 0 or "lr_too_high" in found:
        return None
    forget = forgetting_ratio(view)
    with np.errstate(invalid="ignore", divide="ignore"):
        cancel = view.update_norm / view.path_length
    cancel = cancel[late_start(view.n):]
    cancel = float(np.nanmedian(cancel)) if np.isfinite(cancel).any() else math.nan
    evidence = {"order": order, "batch_over_epoch_loss": forget, "net_over_path": cancel}
    if math.isfinite(forget):
        if forget >= FORGET_RATIO:
            return None  # what each batch teaches is kept: the order does no harm
        forgets = f"the loss met during an epoch is {adv.fmt(forget)}× the loss it ends with"
    elif order != "sorted":
        return None
    else:
        forgets = f"each epoch's updates undo each other (net ‖ΔW‖ / path = {adv.fmt(cancel)})"
    twin = phys.twin(max(1, min(TWIN_MAX_EPOCHS, int(TWIN_SHARE * view.n)))) if phys is not None else None
    if twin is not None:
        final = view.final.get("train_loss", math.nan)
        evidence.update({"twin_epochs": twin.epoch, "twin_loss": twin.twin_loss, "run_loss_same_epoch": twin.run_loss,
                         "run_final_loss": final, "twin_seconds": twin.seconds})
        if not (math.isfinite(twin.twin_loss) and math.isfinite(final)) or final <= 0:
            return None
        ratio = twin.twin_loss / final
        evidence["twin_ratio"] = ratio
        if ratio > TWIN_RATIO:
            return None  # order may slow the start, but the run caught up: not a failure
        confidence = _conf(0.8, (TWIN_RATIO - ratio) / 0.2)
        why = (f"{forgets}, and a shuffled twin reaches loss {adv.fmt(twin.twin_loss)} in {twin.epoch} epoch(s), "
               f"below the {adv.fmt(final)} this run ended with after {view.n}")
    elif math.isfinite(forget):
        confidence = _conf(0.5, (FORGET_RATIO - forget) / 0.2, top=0.7)
        why = forgets
    elif math.isfinite(cancel) and cancel < 0.01:
        confidence = 0.4
        why = forgets
    else:
        return None
    what = "labels sorted" if order == "sorted" else "one fixed order"
    text = f"with {what}, consecutive updates pull against each other: {why}; shuffle every epoch (data.order: shuffled)"
    return Finding("bad_ordering", _short(view, confidence), 1, evidence, text, {"data.order": "shuffled"})


# ----------------------------------------------------------------- overfitting


def overfitting(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """A model that fits its training data much better than data it has not seen.

    At the final model (after any best-weight restore): AutoTrainer's train − validation
    accuracy gap ≥ 0.10, and at least :data:`GAP_SE` binomial standard errors of the
    validation accuracy, so a handful of validation samples cannot fake it. Not reported
    when class imbalance already explains the gap. Prechelt's GL (validation loss above
    its minimum) raises the confidence and decides the advice: early stopping where the
    validation loss turned, more data or regularisation where it never did.
    """
    if view.n < 2 or view.stop_reason == "diverged" or any(m in found for m in ("class_imbalance", "lr_too_high", "underfitting")):
        return None
    train_acc = view.final.get("train_accuracy", math.nan)
    val_acc = view.final.get("val_accuracy", math.nan)
    gap = train_acc - val_acc
    n_val = int(view.summary.get("n_val") or sum(view.summary.get("val_class_counts") or []) or 0)
    if not (math.isfinite(gap) and gap >= OVERFIT_GAP) or n_val <= 0:
        return None
    se = math.sqrt(max(val_acc * (1.0 - val_acc), 1.0 / n_val) / n_val)  # binomial standard error
    if gap < GAP_SE * se:
        return None
    val = view.val_loss
    gl = math.nan
    best_at = None
    if np.isfinite(val).any():
        best_at = int(np.nanargmin(val))
        best = float(val[best_at])
        final_val = view.final.get("val_loss", math.nan)
        if best > 0 and math.isfinite(final_val):
            gl = 100.0 * (final_val / best - 1.0)
    with np.errstate(invalid="ignore"):
        gaps = view.acc - view.val_acc
    first = first_of_final_run(np.nan_to_num(gaps, nan=0.0) >= OVERFIT_GAP)
    epoch = (first if first is not None else view.n - 1) + 1
    evidence = {"train_accuracy": train_acc, "val_accuracy": val_acc, "accuracy_gap": gap, "gap_in_standard_errors": gap / se,
                "generalization_loss": gl, "best_val_epoch": None if best_at is None else best_at + 1,
                "n_train": view.n_train}
    turned = math.isfinite(gl) and gl >= GL_ALPHA
    confidence = _conf(0.75, (gap - OVERFIT_GAP) / 0.1 + (gl / 20.0 if turned else 0.0))
    config = view.config
    tcfg = config.train
    patience = max(3, min(10, int(round(0.1 * tcfg.max_epochs))))
    if config.data.per_class is not None:
        more = config.data.per_class * 10
        patch = {"data.per_class": more}
        fix = f"train on more of the data (data.per_class: {more}; {view.n_train} samples now)"
    elif turned and (tcfg.patience is None or tcfg.patience > patience):
        patch = {"train.patience": patience}
        fix = f"stop early (train.patience: {patience}, best weights restored)"
    else:
        patch = {"model.l2": adv.round_up(max(10 * config.model.l2, 1e-3))}
        fix = f"add weight decay (model.l2: {adv.fmt(patch['model.l2'])}) or get more data"
    turn = (f"; validation loss ends {adv.fmt(gl)}% above its minimum at epoch {best_at + 1}" if turned else "")
    text = (f"accuracy {adv.fmt(train_acc)} on training data against {adv.fmt(val_acc)} on validation data "
            f"(gap {adv.fmt(gap)}){turn}; {fix}")
    return Finding("overfitting", _short(view, confidence), epoch, evidence, text, patch)


# ---------------------------------------------------------------- underfitting


def underfitting(view: RunView, phys: RunPhysics | None, found: dict) -> Finding | None:
    """A model that fits the training data far worse than the data allows.

    Checked only when no other finding explains the misfit and training accuracy is
    below 0.9, after the loss has settled. With the model: a 5-NN vote on the same
    features beats its validation accuracy by ≥ 0.10. Without: the settled loss removes
    < 30 % of the loss of predicting the class priors.
    """
    explained = ("lr_too_high", "lr_too_low", "bad_ordering", "class_imbalance", "non_convergence", "flat_minimum")
    if view.n < MIN_LATE_POINTS or any(mode in found for mode in explained):
        return None
    train_acc = view.final.get("train_accuracy", math.nan)
    val_acc = view.final.get("val_accuracy", math.nan)
    if not (math.isfinite(train_acc) and math.isfinite(val_acc)) or train_acc >= UNDERFIT_TRAIN_ACC:
        return None
    falling, _ = _still_falling(view.loss, view.loss_init)
    if falling:
        return None  # still learning: slow, not incapable
    evidence = {"train_accuracy": train_acc, "val_accuracy": val_acc}
    counts = np.asarray(view.summary.get("train_class_counts") or [], dtype=np.float64)
    config = view.config
    if phys is not None:
        knn = phys.knn
        evidence["knn_val_accuracy"] = knn
        n_val = int(view.summary.get("n_val") or 0) or KNN_VAL
        se = math.sqrt(max(val_acc * (1.0 - val_acc), 1.0 / n_val) / min(n_val, KNN_VAL))
        evidence["margin_in_standard_errors"] = (knn - val_acc) / se
        if not (math.isfinite(knn) and knn - val_acc >= KNN_MARGIN and knn - val_acc >= GAP_SE * se):
            return None
        confidence = _conf(0.75, (knn - val_acc - KNN_MARGIN) / 0.1)
        why = f"a 5-nearest-neighbour vote on the same features gets {adv.fmt(knn)}"
    else:
        if counts.sum() <= 0:
            return None
        p = counts[counts > 0] / counts.sum()
        prior_loss = float(-np.sum(p * np.log(p)))
        end = level(view.loss, view.n - 1)
        gain = 1.0 - end / prior_loss if prior_loss > 0 else math.nan
        evidence["prior_gain"] = gain
        if not (math.isfinite(gain) and gain < PRIOR_GAIN):
            return None
        confidence = _conf(0.35, (PRIOR_GAIN - gain) / 0.2, top=0.6)
        why = f"the loss removed only {adv.pct(gain)} of the loss of guessing the class priors"
    if config.model.kind == "perceptron":
        patch = {"model.kind": "mlp", "model.hidden": [64], "model.init": "he"}
        fix = "use a model that can bend its boundary (model.kind: mlp, model.hidden: [64])"
    else:
        wider = [min(4 * w, 1024) for w in config.model.hidden]
        patch = {"model.hidden": wider}
        fix = f"widen the network (model.hidden: {wider})"
    text = (f"the model reaches {adv.fmt(train_acc)} training and {adv.fmt(val_acc)} validation accuracy where {why}; {fix}")
    return Finding("underfitting", _short(view, confidence), _plateau_epoch(view.loss), evidence, text, patch)


DETECTORS: tuple[tuple[str, Detector], ...] = (
    ("lr_too_high", lr_too_high),
    ("non_convergence", non_convergence),
    ("lr_too_low", lr_too_low),
    ("bad_ordering", bad_ordering),
    ("class_imbalance", class_imbalance),
    ("flat_minimum", flat_minimum),
    ("underfitting", underfitting),
    ("overfitting", overfitting),
)
"""Detectors in the order they run: causes that explain others come first."""
