"""Tests of bpexp.lr_find: the range test, its pure suggestion functions, and ``bpexp lr-find``.

- The suggestion functions on synthetic curves: the EMA against its closed form,
  steepest against brute force, valley against a literal transcription of fastai's
  double loop (and a hand-made curve worked out on paper), the paper's pair on
  sigmoid accuracy curves.
- The run on digits: max_lr below the λ at which training actually diverges, the
  caller's model and optimiser untouched, no trace in a later train().
- Ranges that diverge at once or never move: a message, not a crash (library and CLI).
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp import lr_find as L
from bpexp.cli import cli
from bpexp.config import config_from_dict
from bpexp.errors import ConfigError
from bpexp.model import build_model
from bpexp.optim import build_optimizer
from bpexp.train import train

finite_losses = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=200
)


# ------------------------------------------------------------------- the ramp


@pytest.mark.parametrize("mode", ["linear", "exp"])
def test_ramp_runs_from_start_to_end(mode):
    lrs = L.ramp(1e-4, 1.0, 50, mode)
    assert lrs[0] == 1e-4 and lrs[-1] == 1.0
    assert np.all(np.diff(lrs) > 0)
    steps = np.diff(lrs) if mode == "linear" else np.diff(np.log(lrs))
    assert np.allclose(steps, steps[0], rtol=1e-9)  # equal steps in λ, or in log λ


@pytest.mark.parametrize(
    "args, field",
    [
        ((1.0, 0.1, 50, "exp"), "start_lr"),
        ((0.1, 0.1, 50, "exp"), "start_lr"),
        ((0.0, 1.0, 50, "linear"), "start_lr"),
        ((1e-3, math.inf, 50, "exp"), "end_lr"),
        ((1e-3, 1.0, 3, "exp"), "iterations"),
        ((1e-3, 1.0, 50, "cosine"), "mode"),
    ],
)
def test_ramp_refuses_a_bad_range_naming_the_field(args, field):
    with pytest.raises(ConfigError, match=field):
        L.ramp(*args)


# ------------------------------------------------------------------- the EMA


@given(finite_losses, st.floats(min_value=0.0, max_value=0.999))
def test_ema_is_the_bias_corrected_weighted_mean(losses, beta):
    # closed form: s_t = Σ_k β^{t−k}·L_k / Σ_k β^{t−k}
    got = L.smooth_losses(losses, beta)
    x = np.asarray(losses)
    for t in range(len(x)):
        w = beta ** np.arange(t, -1, -1, dtype=np.float64)
        expected = float(np.dot(w, x[: t + 1]) / w.sum())
        assert math.isclose(got[t], expected, rel_tol=1e-9, abs_tol=1e-9 * (1 + np.abs(x).max()))


@given(st.floats(min_value=1e-3, max_value=1e3), st.integers(min_value=1, max_value=300))
def test_ema_of_a_constant_is_that_constant_from_the_first_point(value, n):
    got = L.smooth_losses([value] * n, L.SMOOTHING_BETA)
    assert got[0] == value  # without the correction the first point would be 0.02·value
    assert np.all(got == value)


def test_ema_rejects_beta_out_of_range():
    with pytest.raises(ValueError, match="beta"):
        L.smooth_losses([1.0], 1.0)


# ---------------------------------------------------------------- steepest


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=12, max_size=120), st.data())
def test_steepest_is_the_brute_force_argmin_after_the_first_tenth(losses, data):
    n = len(losses)
    lrs = np.logspace(-5, 1, n)
    # plant the steepest drop of all inside the first 10 %: it must be ignored
    k = data.draw(st.integers(min_value=0, max_value=max(0, int(0.1 * n) - 2)))
    curve = np.asarray(losses)
    curve[k + 1] = curve[k] - 1e4
    got = L.steepest(lrs, curve)
    skip = int(0.1 * n)
    slopes = [(curve[i + 1] - curve[i]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i])) for i in range(skip, n - 1)]
    if min(slopes) >= 0:
        assert got.lr is None and "never falls" in got.reason
    else:
        best = skip + int(np.argmin(slopes))
        assert got.lr == lrs[best]
        assert np.flatnonzero(lrs == got.lr)[0] >= skip


def test_steepest_stops_at_the_first_nan():
    lrs = np.logspace(-3, 0, 40)
    curve = np.linspace(2.0, 1.0, 40)
    curve[30] = np.nan
    curve[31] = -100.0  # a drop after the NaN: fastai cuts there, so must we
    assert L.steepest(lrs, curve).lr < lrs[30]


# ------------------------------------------------------------------ valley


def fastai_valley_index(losses) -> int:
    """fastai's ``valley`` (callback/schedule.py), transcribed loop for loop: the oracle."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_valley_on_a_hand_made_curve():
    # index:   0    1    2    3    4    5    6    7    8    9    10   11   12   13   14   15
    losses = [2.5, 2.4, 2.6, 3.0, 2.8, 2.6, 2.4, 2.2, 2.0, 1.6, 1.2, 0.9, 0.5, 0.8, 1.5, 3.0]
    # The longest strictly decreasing subsequence is 3.0 > 2.8 > ... > 0.5 (indices 3..12): lds[12] = 10,
    # and no later point reaches 11. So max_end = 12, max_start = 12 − 10 = 2,
    # sections = 10/3 and the suggestion is index 2 + ⌊3.33⌋ + ⌊1.67⌋ = 6.
    assert L.longest_valley(np.array(losses)) == (2, 12)
    assert fastai_valley_index(losses) == 6
    lrs = np.logspace(-4, 0, len(losses))
    assert L.valley(lrs, np.array(losses), num_it=9, skip_end=0).lr == lrs[6]  # 9 // 10 = 0: nothing trimmed
    # With fastai's trimming, [16 // 10 : −5] keeps indices 1..10: the valley is 3.0 .. 1.2 (indices 3..10,
    # lds 8), max_start = 10 − 8 = 2, sections = 8/3, index 2 + 2 + 1 = 5.
    assert L.valley(lrs, np.array(losses)).lr == lrs[5]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=8, max_size=80))
def test_valley_matches_fastais_loop(losses):
    n = len(losses)
    lrs = np.logspace(-5, 1, n)
    got = L.valley(lrs, np.array(losses), num_it=n)
    trimmed = losses[n // 10 : n - 5]
    if len(trimmed) < 2:
        assert got.lr is None
        return
    start, end = L.longest_valley(np.array(trimmed))
    if end == 0:
        assert got.lr is None
    else:
        index = fastai_valley_index(trimmed)
        # fastai's index −1 (a two-point valley at the start) means its last point; ours is the first
        assert got.lr == lrs[n // 10 + max(index, 0)]


# ------------------------------------------------------- the paper's pair


def sigmoid_accuracy(lrs, low=0.1, high=0.9, mid=1e-2, width=0.3):
    """Accuracy rising from `low` to `high` as a logistic curve in log10 λ."""
    return low + (high - low) / (1 + np.exp(-(np.log10(lrs) - math.log10(mid)) / width))


def level_lr(fraction, mid=1e-2, width=0.3):
    """The λ where sigmoid_accuracy has made `fraction` of its rise."""
    return 10 ** (math.log10(mid) + width * math.log(fraction / (1 - fraction)))


def test_pair_on_a_clean_sigmoid():
    lrs = np.logspace(-5, 1, 300)
    accs = sigmoid_accuracy(lrs)
    losses = np.linspace(2.3, 0.5, 300)
    base, top = L.suggest_base_lr(lrs, losses, accs), L.suggest_max_lr(lrs, losses, accs)
    # the measured rise runs from the first point to the top of the curve: ≈ the logistic's
    assert base.lr == pytest.approx(level_lr(L.RISE_START), rel=0.1)
    assert top.lr == pytest.approx(level_lr(L.RISE_SLOWS), rel=0.1)
    assert "slows" in top.reason and "starts to rise" in base.reason
    rule = L.rule_of_thumb(lrs, losses, accs)
    assert rule.lr == pytest.approx(top.lr / 4)


def test_max_lr_stops_where_the_accuracy_turns_ragged(rng):
    lrs = np.logspace(-5, 1, 400)
    accs = sigmoid_accuracy(lrs)
    ragged_from = level_lr(0.8)  # before the 90 % point
    noisy = lrs >= ragged_from
    accs[noisy] += rng.normal(0.0, 0.08, noisy.sum())
    top = L.suggest_max_lr(lrs, np.linspace(2.3, 0.5, 400), accs)
    assert "ragged" in top.reason
    # the running scatter sees the noise within half a window of where it starts
    window = max(5, 400 // 20) | 1
    first = int(np.flatnonzero(noisy)[0])
    assert lrs[first - window // 2] <= top.lr <= lrs[first + window // 2]
    assert top.lr < level_lr(L.RISE_SLOWS)


def test_the_fall_is_reported_after_the_peak():
    lrs = np.logspace(-5, 1, 300)
    accs = np.where(lrs < 0.3, sigmoid_accuracy(lrs), sigmoid_accuracy(0.3) - 2 * (np.log10(lrs) - math.log10(0.3)))
    top = L.suggest_max_lr(lrs, np.linspace(2.3, 0.5, 300), accs)
    assert "then falls" in top.reason and "slows" in top.reason


def test_accuracy_that_never_rises_gives_no_pair():
    lrs = np.logspace(-5, 1, 100)
    accs = np.full(100, 0.1)
    for func in (L.suggest_base_lr, L.suggest_max_lr, L.rule_of_thumb):
        got = func(lrs, np.linspace(2.3, 1.0, 100), accs)
        assert got.lr is None and got.reason


def test_base_falls_back_on_the_rule_of_thumb_when_the_rise_is_already_under_way():
    lrs = np.logspace(-2, 1, 200)  # starts at the logistic's midpoint
    accs = sigmoid_accuracy(lrs)
    base = L.suggest_base_lr(lrs, np.linspace(2.3, 0.5, 200), accs)
    top = L.suggest_max_lr(lrs, np.linspace(2.3, 0.5, 200), accs)
    assert base.lr == pytest.approx(top.lr / 4)
    assert "rule of thumb" in base.reason


def test_measured_points_only(rng):
    # accuracies measured every 3rd step (NaN between) read the same as the measured points alone
    lrs = np.logspace(-5, 1, 300)
    accs = sigmoid_accuracy(lrs) + rng.normal(0, 0.01, 300)
    sparse = np.full(300, np.nan)
    sparse[::3] = accs[::3]
    losses = np.linspace(2.3, 0.5, 300)
    assert L.suggest_max_lr(lrs, losses, sparse) == L.suggest_max_lr(lrs[::3], losses[::3], accs[::3])


# ----------------------------------------------------- unreadable curves


def test_curve_problem_names_the_three_cases():
    lrs = np.logspace(-5, 1, 100)
    assert "diverged at once" in L.curve_problem(lrs[:3], np.array([2.3, 5.0, 40.0]))
    rising = np.linspace(2.3, 9.0, 100)
    assert "diverged at once" in L.curve_problem(lrs, rising)
    assert "never moves" in L.curve_problem(lrs, np.full(100, 2.3) + 0.01 * np.sin(np.arange(100)))
    assert L.curve_problem(lrs, np.linspace(2.3, 0.4, 100)) is None


def test_suggest_gives_every_name_and_the_problem_as_reason():
    lrs = np.logspace(-9, -8, 60)
    out = L.suggest(lrs, np.full(60, 2.3), np.full(60, 0.1))
    assert list(out) == list(L.SUGGESTION_NAMES)
    assert all(s.lr is None and "never moves" in s.reason for s in out.values())


# --------------------------------------------------------- the run, on digits


@pytest.fixture(scope="module")
def perceptron_cfg():
    return config_from_dict({"seed": 0, "model": {"kind": "perceptron", "l2": 0.001}})


@pytest.fixture(scope="module")
def mlp_cfg():
    return config_from_dict({"seed": 0, "model": {"kind": "mlp", "hidden": [64]}})


def diverging_lr(cfg, dataset, start: float) -> float:
    """The first λ of start·2^k at which 10 epochs of real training diverge."""
    lr = start
    while lr < 1e5:
        run = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": lr})})
        run = run.model_copy(update={"train": run.train.model_copy(update={"max_epochs": 10})})
        if train(run, dataset).stop_reason == "diverged":
            return lr
        lr *= 2
    pytest.fail("training never diverged up to λ = 1e5")


@pytest.mark.parametrize("which", ["perceptron_cfg", "mlp_cfg"])
def test_max_lr_lies_below_where_training_diverges(which, request, digits32):
    cfg = request.getfixturevalue(which)
    result = L.range_test(cfg, digits32)
    base, top = result.suggestions["base_lr"].lr, result.suggestions["max_lr"].lr
    assert base is not None and top is not None, result.suggestions
    assert base < top
    # walk up from a λ the test calls safe, doubling, until training really diverges
    assert diverging_lr(cfg, digits32, start=base) > top


def test_range_test_records_what_it_says(perceptron_cfg, digits32):
    result = L.range_test(perceptron_cfg, digits32, start_lr=1e-4, end_lr=1.0, num_iterations=120, mode="linear")
    assert result.iterations == 120 and result.stop_reason == "end_of_range" and result.diverged_at is None
    assert np.array_equal(result.lrs, L.ramp(1e-4, 1.0, 120, "linear"))
    assert np.array_equal(result.smoothed, L.smooth_losses(result.losses))  # the loop's EMA is the function's
    measured = np.isfinite(result.accuracies)
    assert measured[0] and measured[-1] and measured.sum() >= 100
    assert set(result.suggestions) == set(L.SUGGESTION_NAMES)


def test_range_test_stops_at_four_times_the_minimum(mlp_cfg, digits32):
    result = L.range_test(mlp_cfg, digits32, start_lr=1e-3, end_lr=100.0)
    assert result.stop_reason == "diverged"
    assert result.iterations < result.num_iterations
    s = result.smoothed
    last = s[-1]
    assert (not math.isfinite(last)) or last > L.STOP_FACTOR * np.min(s)
    assert np.all(s[:-1] <= L.STOP_FACTOR * np.minimum.accumulate(s)[:-1])  # not a step earlier
    assert result.diverged_at == result.lrs[-1]


def same(a, b) -> bool:
    """Deep equality over the nested lists, tuples, dicts and arrays of an object's state."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("optimizer_name", ["momentum", "adam"])
def test_the_callers_model_and_optimiser_are_untouched(optimizer_name, digits32):
    cfg = config_from_dict({"seed": 3, "model": {"kind": "mlp", "hidden": [32]}, "optim": {"name": optimizer_name, "lr": 0.01},
                            "train": {"max_epochs": 2}})

    def trained_pair():
        model = build_model(cfg.model, digits32.n_features, digits32.n_classes, cfg.seed)
        optimizer = build_optimizer(cfg.optim)
        train(cfg, digits32, model=model, optimizer=optimizer)  # non-zero weights and optimiser state
        return model, optimizer

    model, optimizer = trained_pair()
    twin_model, twin_optimizer = trained_pair()  # the same state, never shown to the range test
    weights = model.get_weights()

    def optimiser_state(opt):
        # public attributes: velocities, moments, step count, hyperparameters; the private ones
        # cache views of the model's parameter and gradient arrays (gradients are scratch)
        return copy.deepcopy({k: v for k, v in vars(opt).items() if not k.startswith("_")})

    state = optimiser_state(optimizer)
    assert any(isinstance(v, list) and v for v in state.values())  # there is state to disturb

    result = L.range_test(cfg, digits32, model=model, num_iterations=60, end_lr=1.0)

    assert result.iterations > 10 and np.nanmax(result.losses) != np.nanmin(result.losses)  # it did train
    assert same(weights, model.get_weights())
    assert same(state, optimiser_state(optimizer))
    # training goes on exactly as if the test had never run
    after = train(cfg, digits32, model=model, optimizer=optimizer)
    twin = train(cfg, digits32, model=twin_model, optimizer=twin_optimizer)
    assert after.history.to_dict() == twin.history.to_dict()
    assert same(model.get_weights(), twin_model.get_weights())


def test_weights_come_back_even_when_the_test_fails(digits32, perceptron_cfg):
    model = build_model(perceptron_cfg.model, digits32.n_features, digits32.n_classes, 0)
    train(perceptron_cfg.model_copy(update={"train": perceptron_cfg.train.model_copy(update={"max_epochs": 1})}), digits32, model=model)
    weights = model.get_weights()

    def interrupt(step, total, lr, smooth):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        L.range_test(perceptron_cfg, digits32, model=model, on_step=interrupt)
    assert same(weights, model.get_weights())


def test_a_later_train_sees_no_trace(mlp_cfg, digits32):
    cfg = mlp_cfg.model_copy(update={"train": mlp_cfg.train.model_copy(update={"max_epochs": 3})})
    before = train(cfg, digits32).history.to_dict()
    L.range_test(cfg, digits32, num_iterations=50)
    after = train(cfg, digits32).history.to_dict()
    assert before == after


def test_a_range_that_diverges_at_once_is_a_message(perceptron_cfg, digits32):
    result = L.range_test(perceptron_cfg, digits32, start_lr=200.0, end_lr=1e4)
    assert result.stop_reason == "diverged"
    assert all(s.lr is None for s in result.suggestions.values())
    assert result.warnings and "diverged at once" in result.warnings[0]


def test_a_range_that_never_moves_is_a_message(perceptron_cfg, digits32):
    result = L.range_test(perceptron_cfg, digits32, start_lr=1e-9, end_lr=1e-8)
    assert result.stop_reason == "end_of_range"
    assert all(s.lr is None for s in result.suggestions.values())
    assert result.warnings and "never moves" in result.warnings[0]


def test_length_arguments(perceptron_cfg, digits32):
    with pytest.raises(ConfigError, match="iterations or epochs"):
        L.range_test(perceptron_cfg, digits32, num_iterations=50, epochs=2)
    steps_per_epoch = math.ceil(len(digits32.train) / 32)
    result = L.range_test(perceptron_cfg, digits32, epochs=4)
    assert result.num_iterations == 4 * steps_per_epoch
    assert L.range_test(perceptron_cfg, digits32).num_iterations == max(100, 8 * steps_per_epoch)


def test_to_dict_is_plain_json(mlp_cfg, digits32):
    result = L.range_test(mlp_cfg, digits32, start_lr=1e-3, end_lr=100.0)
    payload = result.to_dict()
    json.dumps(payload, allow_nan=False)  # NaN and inf were mapped to None
    assert payload["run_id"] is None
    assert set(payload["suggestions"]["max_lr"]) == {"lr", "reason"}
    assert len(payload["lrs"]) == len(payload["losses"]) == len(payload["smoothed"]) == len(payload["accuracies"])


def test_plot_marks_every_suggestion(mlp_cfg, digits32, tmp_path):
    result = L.range_test(mlp_cfg, digits32)
    data = L.plot_data(result)
    names = [m.name for m in data.markers]
    assert names == [n for n, s in result.suggestions.items() if s.lr is not None]
    for marker in data.markers:
        i = int(np.argmin(np.abs(np.log10(result.lrs) - math.log10(marker.lr))))
        assert marker.loss == result.smoothed[i]
    path = L.plot(result, tmp_path / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(args):
    """``bpexp lr-find ...`` without MLflow (``--no-track`` where the command records runs)."""
    command = cli.get_command(None, "lr-find")
    if any(p.name == "no_track" for p in command.params):
        args = [args[0], "--no-track", *args[1:]]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_json_is_one_object(workdir):
    result = invoke(["lr-find", "--model", "mlp", "--hidden", "32", "--iterations", "150", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) >= {"config", "lrs", "losses", "smoothed", "accuracies", "suggestions", "stop_reason", "plot", "run_id"}
    assert payload["run_id"] is None
    assert payload["plot"] == "lr_find.png" and (workdir / "lr_find.png").exists()
    assert payload["config"]["model"]["hidden"] == [32]


def test_cli_human_output_and_no_plot(workdir):
    result = invoke(["lr-find", "--iterations", "120", "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "max_lr" in result.stdout and "valley" in result.stdout
    assert not list(workdir.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start-lr", "200", "--end-lr", "10000"], "diverged at once"),
        (["--start-lr", "1e-9", "--end-lr", "1e-8"], "never moves"),
    ],
)
def test_cli_unreadable_range_exits_0_with_a_warning(workdir, args, message):
    result = invoke(["lr-find", "--no-plot", *args])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stdout and message in " ".join(result.stdout.split())
    as_json = invoke(["lr-find", "--no-plot", "--json", *args])
    payload = json.loads(as_json.stdout)
    assert all(s["lr"] is None for s in payload["suggestions"].values())
    assert message in payload["warnings"][0]


@pytest.mark.parametrize(
    "args, field",
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "start_lr"),
        (["--start-lr", "0.1", "--end-lr", "0.1"], "start_lr"),
        (["--start-lr", "-1"], "start_lr"),
        (["--iterations", "2"], "iterations"),
        (["--iterations", "50", "--epochs", "2"], "iterations or epochs"),
    ],
)
def test_cli_invalid_range_exits_2_naming_the_field(workdir, args, field):
    result = invoke(["lr-find", "--no-plot", *args])
    assert result.exit_code == 2
    assert field in result.stderr
    assert result.stdout == ""


def test_cli_bad_data_exits_2_and_writes_nothing(workdir, monkeypatch):
    # tracking on (no --no-track): the default store must not be created for a test that cannot start
    from click.testing import CliRunner

    from bpexp.cli import cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(cli, ["lr-find", "--data-path", "missing.npz"])
    assert result.exit_code == 2 and "missing.npz: no such file" in result.stderr
    assert list(workdir.iterdir()) == []
