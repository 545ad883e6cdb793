"""The data behind the report's figures, computed from real training runs on digits.

The sweep (``report_sweep`` in conftest) is a grid of real bpexp.train runs:
λ from 1e-5 to 300 with a constant schedule, five other schedules and four stop
thresholds at λ = 0.3, each diagnosed by bpexp.diagnose, plus a real range test.
The tests check the data the figures are drawn from, not pixels.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.config import config_from_dict, load_config
from bpexp.report import data as rd
from bpexp.report.build import write_report
from bpexp.report.html import spec_yaml
from bpexp.report.records import COMPLETE, FAIL, PRUNED, SweepRecord, TrialRecord
from report_helpers import GOOD_LR, LR_GRID, SCHEDULES, STOP_LOSSES, replicate, with_state


def _by_lr(sweep: SweepRecord, lr: float) -> TrialRecord:
    """The constant-schedule, no-threshold trial of the λ grid at ``lr``."""
    return next(
        t for t in sweep.trials if t.params["optim.lr"] == lr and t.schedule == "constant" and t.stop_loss is None
        and t.params["train.max_epochs"] == 20
    )


# ------------------------------------------------------------------ outcomes


def test_the_grid_spans_too_low_to_diverged(report_sweep):
    # Physics, not bookkeeping: the smallest λ leaves the loss near its start, the largest diverge.
    lowest, highest = _by_lr(report_sweep, LR_GRID[0]), _by_lr(report_sweep, LR_GRID[-1])
    assert highest.stop_reason == "diverged"
    assert "lr_too_low" in lowest.modes
    assert rd.trial_outcome(lowest) == "lr_too_low"
    assert rd.trial_outcome(highest) == "diverged"
    assert rd.trial_outcome(_by_lr(report_sweep, GOOD_LR)) == "healthy"


def test_outcome_precedence_diverged_then_lr_modes_then_confidence():
    def trial(modes, stop="max_epochs"):
        return TrialRecord(0, COMPLETE, 1.0, stop_reason=stop,
                           diagnosis=[{"mode": m, "confidence": c} for m, c in modes])

    assert rd.trial_outcome(trial([("lr_too_high", 0.9)], stop="diverged")) == "diverged"
    assert rd.trial_outcome(trial([("overfitting", 0.9), ("lr_too_high", 0.2)])) == "lr_too_high"
    assert rd.trial_outcome(trial([("overfitting", 0.4), ("flat_minimum", 0.8)])) == "flat_minimum"
    assert rd.trial_outcome(trial([])) == "healthy"
    assert rd.trial_outcome(TrialRecord(0, FAIL)) == "failed"
    assert rd.trial_outcome(TrialRecord(0, PRUNED)) == "pruned"


# ----------------------------------------------------------------- landscape


def test_landscape_has_one_point_per_completed_trial_and_counts_per_mode(report_sweep):
    land = rd.landscape_data(report_sweep)
    assert land is not None
    assert sorted(p.number for p in land.points) == [t.number for t in report_sweep.trials]
    assert sum(land.counts.values()) == len(land.points)
    diverged = [t.number for t in report_sweep.trials if t.stop_reason == "diverged"]
    assert land.counts.get("diverged", 0) == len(diverged) >= 1
    assert sorted(p.number for p in land.points if p.outcome == "diverged") == sorted(diverged)
    too_low = [t for t in report_sweep.trials if "lr_too_low" in t.modes and t.stop_reason != "diverged"
               and not {"lr_too_high", "flat_minimum"} & set(t.modes)]
    assert land.counts.get("lr_too_low", 0) == len(too_low) >= 1
    for p in land.points:
        trial = report_sweep.trials[p.number]
        assert p.outcome in trial.modes + ["healthy", "diverged"]
        assert p.lr == trial.lr
    # A diverged run's loss is off the chart; the others have a finite loss.
    assert all(p.val_loss is None or math.isfinite(p.val_loss) for p in land.points)


def test_landscape_bands_are_ordered_along_lambda(report_sweep):
    land = rd.landscape_data(report_sweep)
    names = [b.name for b in land.bands]
    assert names == list(rd.BANDS)  # the grid reaches every band, from λ = 1e-5 to 300
    centres = [b.center for b in land.bands]
    assert centres == sorted(centres), [(b.name, b.center) for b in land.bands]
    too_low, good, too_high, diverged = (land.band(n) for n in rd.BANDS)
    assert too_low.hi < good.center < too_high.lo <= too_high.hi < diverged.lo
    assert sum(b.n for b in land.bands) == len(land.points)
    for band in land.bands:
        assert band.lo <= band.center <= band.hi
        assert band.left <= band.lo and band.hi <= band.right and band.misplaced == 0
    for left, right in zip(land.bands, land.bands[1:]):
        assert left.right == right.left  # the drawn regions tile the λ axis


def test_landscape_draws_the_range_test_bounds(report_sweep):
    land = rd.landscape_data(report_sweep)
    suggestions = report_sweep.lr_find["suggestions"]
    expected = {name for name, s in suggestions.items() if s["lr"] is not None}
    assert {m.name for m in land.suggestions} == expected
    if suggestions["base_lr"]["lr"] and suggestions["max_lr"]["lr"]:
        assert land.bounds == (suggestions["base_lr"]["lr"], suggestions["max_lr"]["lr"])
    assert [m.lr for m in land.suggestions] == sorted(m.lr for m in land.suggestions)


@settings(max_examples=60, deadline=None)
@given(
    lrs=st.lists(st.floats(1e-6, 1e3), min_size=4, max_size=60),
    cuts=st.tuples(st.floats(-5.5, 2.5), st.floats(0.0, 3.0), st.floats(0.0, 3.0)),
)
def test_bands_follow_lambda_when_diagnoses_do(lrs, cuts):
    # Diagnoses that are a monotone function of λ must give bands in λ order.
    low_cut = 10 ** cuts[0]
    high_cut = low_cut * 10 ** cuts[1]
    diverge_cut = high_cut * 10 ** cuts[2]

    def outcome(lr):
        if lr < low_cut:
            return "lr_too_low"
        if lr >= diverge_cut:
            return "diverged"
        if lr >= high_cut:
            return "lr_too_high"
        return "healthy"

    points = [rd.LandscapePoint(i, lr, 1.0, 0.5, outcome(lr)) for i, lr in enumerate(lrs)]
    bands = rd.derive_bands(points)
    assert sum(b.n for b in bands) == len(points)
    for left, right in zip(bands, bands[1:]):
        assert left.hi <= right.lo
        assert left.center <= right.center
        assert left.hi <= left.right == right.left <= right.lo
    assert [b.name for b in bands] == [n for n in rd.BANDS if n in {b.name for b in bands}]
    assert all(b.misplaced == 0 for b in bands)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-6, 1e3), st.sampled_from(["lr_too_low", "healthy", "lr_too_high", "diverged"])),
                min_size=1, max_size=40))
def test_band_edges_never_cross_even_when_diagnoses_disagree_with_lambda(trials):
    bands = rd.derive_bands([rd.LandscapePoint(i, lr, 1.0, 0.5, o) for i, (lr, o) in enumerate(trials)])
    assert sum(b.n for b in bands) == len(trials)
    for band in bands:
        assert band.left <= band.right and 0 <= band.misplaced <= band.n
    for left, right in zip(bands, bands[1:]):
        assert left.right == right.left


@given(st.integers(0, 100_000))
def test_density_keeps_large_scatters_readable(n):
    d = rd.density(n)
    assert 0 < d.alpha <= 1 and d.drawn <= n and d.drawn <= rd.SAMPLE_ABOVE
    if n <= rd.ALPHA_ABOVE:
        assert d.strategy == "points" and d.drawn == n
    else:
        assert d.strategy in ("alpha", "sample") and d.alpha < rd.density(rd.ALPHA_ABOVE).alpha
        # n translucent points pile up to at most ~ALPHA_ABOVE opaque ones, never fewer than 8 % each
        assert d.alpha == pytest.approx(max(0.08, min(0.6, rd.ALPHA_ABOVE / n))) or d.strategy == "sample"


# ---------------------------------------------------------------- range test


def test_range_test_data_is_the_recorded_curve(report_sweep):
    rt = rd.range_test_data(report_sweep)
    raw = report_sweep.lr_find
    assert rt.lrs == raw["lrs"]
    assert len(rt.losses) == len(rt.smoothed) == len(rt.accuracies) == len(rt.lrs)
    assert rt.lrs == sorted(rt.lrs)
    assert all(rt.lrs[0] <= m.lr <= rt.lrs[-1] for m in rt.suggestions)
    assert rd.range_test_data(SweepRecord("none", trials=report_sweep.trials)) is None


# ----------------------------------------------------------- learning curves


def test_curves_group_by_outcome_with_a_few_representatives(report_sweep):
    curves = rd.curves_data(report_sweep)
    groups = {g.mode: g for g in curves.groups}
    assert curves.groups[0].mode == "healthy"
    assert {"lr_too_low", "diverged"} <= set(groups)
    land = rd.landscape_data(report_sweep)
    # One group per outcome of the landscape, with as many trials as it has points of that colour.
    assert {mode: g.n for mode, g in groups.items()} == land.counts
    assert [g.mode for g in curves.groups][1:] == sorted([g.mode for g in curves.groups][1:], key=rd.outcome_rank)
    seen = set()
    for group in curves.groups:
        assert 1 <= len(group.curves) == min(group.n, rd.CURVES_PER_GROUP)
        for curve in group.curves:
            trial = report_sweep.trials[curve.number]
            assert rd.trial_outcome(trial) == group.mode
            assert len(curve.epoch) == len(curve.train_loss) == len(curve.val_loss) == trial.epochs
            assert curve.number not in seen
            seen.add(curve.number)
    # The healthy group shows the best healthy trials, best first.
    healthy = rd.best_trials([t for t in report_sweep.trials if rd.trial_outcome(t) == "healthy"], "minimize")
    assert [c.number for c in groups["healthy"].curves] == [t.number for t in healthy[: rd.CURVES_PER_GROUP]]


def test_curves_of_a_mode_spread_over_lambda(report_sweep):
    groups = {g.mode: g for g in rd.curves_data(report_sweep).groups}
    members = sorted(t.lr for t in report_sweep.trials if t.stop_reason == "diverged")
    drawn = [c.lr for c in groups["diverged"].curves]
    assert min(drawn) == members[0] and max(drawn) == members[-1]


# ------------------------------------------------------- stop-threshold trade-off


def test_stop_levels_run_loosest_to_tightest(report_sweep):
    stop = rd.stop_data(report_sweep)
    assert stop.metric == "test_accuracy"
    numeric = [lv.stop_loss for lv in stop.levels if lv.stop_loss is not None]
    assert numeric == sorted(STOP_LOSSES, reverse=True)
    assert stop.levels[-1].stop_loss is None and not stop.binned
    non_diverged = [t for t in report_sweep.trials if t.stop_reason != "diverged"]
    assert sum(lv.n for lv in stop.levels) == len(stop.points) == len(non_diverged)
    for lv in stop.levels[:-1]:
        group = [t for t in non_diverged if t.stop_loss == lv.stop_loss]
        assert lv.n == len(group)
        assert lv.reached == sum(t.stop_reason == "loss_threshold" for t in group)
        assert lv.best_accuracy == max(t.final["test_accuracy"] for t in group)
    # A tighter threshold never stops a run sooner: epochs grow from left to right at λ = GOOD_LR.
    epochs = [lv.median_epochs for lv in stop.levels[:-1]]
    assert epochs == sorted(epochs)
    assert stop.knee in [lv.stop_loss for lv in stop.levels]
    top = max(lv.best_accuracy for lv in stop.levels)
    knee = next(lv for lv in stop.levels if lv.stop_loss == stop.knee)
    assert knee.best_accuracy >= top - rd.ACCURACY_TIE
    looser = stop.levels[: stop.levels.index(knee)]
    assert all(lv.best_accuracy < top - rd.ACCURACY_TIE for lv in looser)


def test_stop_data_needs_two_thresholds(report_sweep):
    one = SweepRecord("x", trials=[t for t in report_sweep.trials if t.stop_loss is None])
    assert rd.stop_data(one) is None


def test_continuous_stop_thresholds_are_binned(report_sweep):
    big = replicate(report_sweep, 200, seed=3)
    stop = rd.stop_data(big)
    assert stop.binned and len(stop.levels) <= rd.STOP_BINS + 1
    assert sum(lv.n for lv in stop.levels) == len(stop.points)
    for lv in stop.levels:
        if lv.stop_loss is not None:
            assert lv.lo <= lv.stop_loss <= lv.hi
    centres = [lv.stop_loss for lv in stop.levels if lv.stop_loss is not None]
    assert centres == sorted(centres, reverse=True)


# ------------------------------------------------------- schedule comparison


def test_schedules_show_each_schedules_best_trial(report_sweep):
    sched = rd.schedule_data(report_sweep)
    assert [s.schedule for s in sched.series] == sorted({"constant", *SCHEDULES})
    for s in sched.series:
        same = [t for t in report_sweep.trials if t.schedule == s.schedule and t.stop_reason != "diverged"]
        assert s.value == min(t.value for t in same)
        trial = report_sweep.trials[s.number]
        assert s.iterations == trial.history["iterations"]
        assert len(s.lr_iterations) == len(s.lr_values) > 0
        assert s.lr_iterations[0] == 0
        # λ at t = 0 is what the run used in its first epoch.
        assert s.lr_values[0] == pytest.approx(trial.history["lr"][0], rel=1e-9)
        assert max(s.lr_values) <= trial.lr * (1 + 1e-9)


# ------------------------------------------ optimisation history and importances


def test_history_best_so_far_is_monotone(report_sweep):
    hist = rd.history_data(report_sweep)
    assert hist.numbers == sorted(hist.numbers)
    assert all(b2 <= b1 for b1, b2 in zip(hist.best_so_far, hist.best_so_far[1:]))
    assert hist.best_so_far[-1] == min(hist.values)
    assert all(b <= v for b, v in zip(hist.best_so_far, hist.values))


def test_importances_from_optuna_rank_lambda_among_searched_params(report_sweep):
    imp = rd.importance_data(report_sweep)
    assert imp.importances, imp.sentence
    assert set(imp.importances) <= set(rd.searched_params(report_sweep))
    assert "optim.lr" in imp.importances
    assert sum(imp.importances.values()) == pytest.approx(1.0, abs=1e-6)
    # Fields that only one schedule has are not searched params of their own.
    assert not any(name in imp.importances for name in ("schedule.factor", "schedule.gamma", "schedule.pct_start"))


def test_importances_fall_back_with_a_sentence_when_too_few_trials(report_sweep):
    few = SweepRecord("few", trials=report_sweep.trials[:2])
    imp = rd.importance_data(few)
    assert imp.importances == {}
    assert "at least" in imp.sentence and "2" in imp.sentence


# ------------------------------------------------------------ failure table


def test_failure_table_counts_each_mode(report_sweep):
    table = rd.failure_table(report_sweep)
    modes = {row.mode: row for row in table.rows}
    assert {"lr_too_low", "lr_too_high"} <= set(modes)
    assert set(modes) == {m for t in report_sweep.trials for m in t.modes}
    for mode, row in modes.items():
        members = [t for t in report_sweep.trials if mode in t.modes]
        assert row.n == len(members)
        assert row.example_number in [t.number for t in members]
        assert row.example_run_id == report_sweep.trials[row.example_number].run_id
        assert row.advice
    counts = [row.n for row in table.rows]
    assert counts == sorted(counts, reverse=True)
    assert table.healthy == sum(rd.trial_outcome(t) == "healthy" for t in report_sweep.trials)


def test_failure_table_names_divergence_the_diagnosis_did_not(report_sweep):
    import copy

    diverged = [copy.deepcopy(t) for t in report_sweep.trials if t.stop_reason == "diverged"]
    for t in diverged:
        t.diagnosis = []  # as recorded by a run without a diagnosis
    table = rd.failure_table(SweepRecord("d", trials=diverged))
    assert [(row.mode, row.n) for row in table.rows] == [("diverged", len(diverged))]
    assert table.rows[0].advice


# ----------------------------------------------------------- recommendation


def test_recommendation_is_the_best_healthy_trial_and_validates(report_sweep, tmp_path):
    rec = rd.recommendation(report_sweep)
    healthy = [t for t in report_sweep.trials if rd.trial_outcome(t) == "healthy"]
    assert rec.healthy and rec.number == min(healthy, key=lambda t: t.value).number
    config = config_from_dict(rec.config)
    assert config.optim.lr == report_sweep.trials[rec.number].lr
    # The YAML the report writes reads back as the same config.
    path = tmp_path / "best.yaml"
    path.write_text(spec_yaml(rec.config, "a header\nof two lines"))
    assert load_config(path).model_dump(mode="json") == config.model_dump(mode="json")
    assert rec.next_steps


# --------------------------------------------------------- unusual sweeps


def test_one_trial_says_so_and_still_reports(report_sweep, tmp_path):
    one = SweepRecord("one", trials=[_by_lr(report_sweep, GOOD_LR)])
    data = rd.build_report_data(one)
    assert any("one trial" in note for note in data.notes)
    assert data.landscape is None and data.recommendation is not None
    assert data.importances.importances == {}
    files = write_report(one, tmp_path)
    assert "one trial" in files.html.read_text()


def test_all_failed_says_so(report_sweep, tmp_path):
    failed = with_state(report_sweep, FAIL)
    data = rd.build_report_data(failed)
    assert data.notes[0].startswith(f"All {len(failed.trials)} trials failed")
    assert "non-finite weights" in data.notes[0]
    assert (data.landscape, data.curves, data.stop, data.schedules, data.history, data.recommendation) == (None,) * 6
    files = write_report(failed, tmp_path)
    assert files.spec is None and files.figures == []
    assert f"All {len(failed.trials)} trials failed" in files.markdown.read_text()


def test_all_pruned_says_so(report_sweep, tmp_path):
    pruned = with_state(report_sweep, PRUNED, keep=5)
    data = rd.build_report_data(pruned)
    assert any(note.startswith("All 5 trials were pruned") for note in data.notes)
    assert data.recommendation is None and data.landscape is None
    files = write_report(pruned, tmp_path)
    assert "All 5 trials were pruned" in files.html.read_text()


def test_empty_study_says_so(tmp_path):
    data = rd.build_report_data(SweepRecord("empty"))
    assert data.notes == ["This study has no trials yet: there is nothing to report."]
    write_report(SweepRecord("empty"), tmp_path)


# ------------------------------------------------------------ large sweeps


def test_five_hundred_trials_use_a_density_strategy(report_sweep, tmp_path):
    big = replicate(report_sweep, 500)
    data = rd.build_report_data(big)
    assert len(data.landscape.points) == 500
    assert data.landscape.density.strategy == "alpha" and data.landscape.density.alpha < 0.5
    assert data.history.density.strategy == "alpha"
    assert data.stop.binned
    # Curve panels stay a few lines each, however many trials there are.
    assert all(len(g.curves) <= rd.CURVES_PER_GROUP for g in data.curves.groups)
    # Bands still come out in λ order with every trial counted.
    centres = [b.center for b in data.landscape.bands]
    assert centres == sorted(centres) and sum(b.n for b in data.landscape.bands) == 500
    files = write_report(big, tmp_path)
    assert set(files.figures) >= {"landscape", "curves", "stop", "schedules", "history"}
    assert files.html.stat().st_size < 3_000_000


# ------------------------------------------------------------------ records


def test_records_round_trip_through_json(report_sweep):
    import json

    raw = json.loads(json.dumps(report_sweep.to_dict(), allow_nan=False))
    again = SweepRecord.from_dict(raw)
    assert again.to_dict() == report_sweep.to_dict()
    assert again.trials[3].lr == report_sweep.trials[3].lr
