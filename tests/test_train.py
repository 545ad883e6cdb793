"""Tests of bpexp.train: the optimum, the example MLP, reproducibility and the stop rules.

The perceptron's optimum is checked against an external oracle: scikit-learn's
multinomial LogisticRegression minimises the same objective,
(1/n)·Σ CE + (λ₂/2)·‖W‖² with an unpenalised intercept, when C = 1/(n·λ₂).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bpexp.config import config_from_dict, load_config
from bpexp.train import History, resolve_batch_size, train

EXPERIMENTS = Path(__file__).parent.parent / "experiments"


# ------------------------------------------------------------------ the optimum

L2 = 1e-3


@pytest.fixture(scope="module")
def optimum(digits64):
    """Our full-batch perceptron and sklearn's LogisticRegression on the same standardised split."""
    from sklearn.linear_model import LogisticRegression

    cfg = config_from_dict(
        {
            "seed": 0,
            "data": {"name": "digits"},
            "model": {"kind": "perceptron", "dtype": "float64", "l2": L2},
            # full batch on a convex objective: Nesterov at λ = 1 reaches 1e-6 of the optimum in 1000 steps
            "optim": {"name": "nesterov", "lr": 1.0, "momentum": 0.9, "batch_size": "full"},
            "train": {"max_epochs": 1000},
        }
    )
    result = train(cfg, digits64)
    X, y = digits64.train.X[:, :-1], digits64.train.y  # drop our constant-1 column; sklearn fits the intercept
    n = len(y)
    clf = LogisticRegression(C=1.0 / (n * L2), tol=1e-12, max_iter=100_000, fit_intercept=True).fit(X, y)
    return result, clf


def sklearn_objective(clf, X: np.ndarray, y: np.ndarray, l2: float) -> float:
    """(1/n)·Σ CE + (λ₂/2)·‖coef‖², intercept unpenalised, from sklearn's fitted coefficients."""
    z = X @ clf.coef_.T + clf.intercept_
    z -= z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + 0.5 * l2 * np.sum(clf.coef_**2))


def test_perceptron_reaches_sklearns_optimum(optimum, digits64):
    result, clf = optimum
    X, y = digits64.train.X, digits64.train.y
    ours = result.model.objective(X, y)
    theirs = sklearn_objective(clf, X[:, :-1], y, L2)
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert result.final["objective"] == pytest.approx(ours, rel=1e-12)


def test_perceptron_validation_accuracy_matches_sklearn(optimum, digits64):
    result, clf = optimum
    theirs = clf.score(digits64.val.X[:, :-1], digits64.val.y)
    assert abs(result.final["val_accuracy"] - theirs) <= 0.005


# ---------------------------------------------------------------- the MLP spec


def test_digits_mlp_spec_reaches_95_percent():
    spec = EXPERIMENTS / "digits_mlp.yaml"
    cfg = load_config(spec)
    assert cfg.model.kind == "mlp"
    result = train(cfg)
    assert result.final["test_accuracy"] >= 0.95, result.final


def test_digits_perceptron_spec_runs():
    cfg = load_config(EXPERIMENTS / "digits_perceptron.yaml")
    result = train(cfg)
    assert result.stop_reason in ("loss_threshold", "max_epochs", "early_stopping")
    assert result.final["test_accuracy"] >= 0.9, result.final


# ------------------------------------------------------------- reproducibility


def small(kind: str, batch_size, seed: int = 1, **extra) -> dict:
    raw = {
        "seed": seed,
        "data": {"name": "iris"},
        "model": {"kind": kind, "hidden": [16], "dropout": 0.3 if kind == "mlp" else 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "batch_size": batch_size},
        "train": {"max_epochs": 4, "record_steps": True},
    }
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


@pytest.mark.parametrize("batch_size", [1, 16, "full"], ids=["online", "minibatch", "full"])
@pytest.mark.parametrize("kind", ["perceptron", "mlp"])
def test_same_seed_same_history_bit_for_bit(kind, batch_size):
    first = train(config_from_dict(small(kind, batch_size))).history.to_dict()
    second = train(config_from_dict(small(kind, batch_size))).history.to_dict()
    assert first == second
    assert json.dumps(first) == json.dumps(second)
    other = train(config_from_dict(small(kind, batch_size, seed=2))).history.to_dict()
    assert other != first


@pytest.mark.parametrize("order", ["shuffled", "fixed"])
def test_seed_changes_the_order_and_the_dropout_masks_given_the_same_data(iris64, order):
    a = train(config_from_dict(small("mlp", 8, seed=1, data={"order": order})), iris64).history.to_dict()
    b = train(config_from_dict(small("mlp", 8, seed=1, data={"order": order})), iris64).history.to_dict()
    c = train(config_from_dict(small("mlp", 8, seed=5, data={"order": order})), iris64).history.to_dict()
    assert a == b
    assert a["step_loss"] != c["step_loss"]


@pytest.fixture(scope="module")
def iris64():
    from bpexp.data import load_dataset

    return load_dataset(config_from_dict({"data": {"name": "iris"}}).data, 0, dtype="float64")


def test_history_shape_and_round_trip(iris64):
    result = train(config_from_dict(small("perceptron", 16, model={"dtype": "float64"})), iris64)
    h = result.history
    assert h.epoch == [1, 2, 3, 4]
    n = len(iris64.train)
    steps = math.ceil(n / 16)
    assert h.iterations == [steps * e for e in (1, 2, 3, 4)]
    assert len(h.step_loss) == len(h.step_lr) == 4 * steps
    for name in History.PER_EPOCH:
        assert len(getattr(h, name)) == 4, name
    assert set(h.initial) >= {"train_loss", "val_loss", "train_accuracy", "val_accuracy"}
    assert h.initial["train_loss"] == pytest.approx(math.log(3))  # zeros init: uniform softmax over 3 classes
    assert History.from_dict(h.to_dict()).to_dict() == h.to_dict()
    # ‖θ_end − θ_start‖ never exceeds the path walked
    assert all(u <= p * (1 + 1e-9) for u, p in zip(h.update_norm, h.path_length))
    assert result.epochs == 4 and result.stop_reason == "max_epochs"


def test_history_to_dict_maps_non_finite_to_none():
    h = History(epoch=[1, 2], train_loss=[1.0, math.nan], val_loss=[math.inf, 2.0], initial={"train_loss": -math.inf})
    d = h.to_dict()
    assert d["train_loss"] == [1.0, None]
    assert d["val_loss"] == [None, 2.0]
    assert d["initial"] == {"train_loss": None}
    json.dumps(d, allow_nan=False)
    assert math.isnan(History.from_dict(d).train_loss[1])


def test_resolve_batch_size():
    assert resolve_batch_size("full", 100) == 100
    assert resolve_batch_size(32, 100) == 32
    assert resolve_batch_size(500, 100) == 100


def test_on_epoch_sees_every_epoch(iris64):
    seen = []
    train(config_from_dict(small("perceptron", 16)), iris64, on_epoch=lambda e, h: seen.append((e, len(h))))
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]


# ------------------------------------------------------------------ stop rules


def test_stop_rule_max_epochs(iris64):
    result = train(config_from_dict(small("perceptron", 16, train={"max_epochs": 3})), iris64)
    assert result.stop_reason == "max_epochs"
    assert result.epochs == 3


@pytest.mark.parametrize("stop_on", ["train", "val"])
def test_stop_rule_loss_threshold(iris64, stop_on):
    threshold = 0.4
    raw = small("perceptron", 8, optim={"lr": 0.1}, train={"max_epochs": 500, "stop_loss": threshold, "stop_on": stop_on})
    result = train(config_from_dict(raw), iris64)
    watched = result.history.train_loss if stop_on == "train" else result.history.val_loss
    assert result.stop_reason == "loss_threshold"
    assert result.epochs < 500
    assert watched[-1] < threshold
    assert all(v >= threshold for v in watched[:-1])  # it stopped at the first epoch below


def test_stop_rule_early_stopping_restores_the_best_weights():
    # 10 samples per class and a wide net: validation loss turns up early
    raw = {
        "seed": 0,
        "data": {"name": "digits", "per_class": 10},
        "model": {"kind": "mlp", "hidden": [64], "dtype": "float64"},
        "optim": {"name": "adam", "lr": 0.01, "batch_size": "full"},
        "train": {"max_epochs": 300, "patience": 5},
    }
    result = train(config_from_dict(raw))
    h = result.history
    assert result.stop_reason == "early_stopping"
    best = int(np.argmin(h.val_loss)) + 1
    assert result.best_epoch == best
    assert result.epochs == best + 5  # five epochs without improvement
    assert result.final["val_loss"] == h.val_loss[best - 1]  # the best epoch's weights are back
    assert h.val_loss[-1] > result.final["val_loss"]


def test_early_stopping_without_a_finite_validation_loss_does_not_crash(tmp_path):
    # One validation row sits at 3e38: float32 logits overflow and the validation loss is NaN
    # from the first epoch on, so there are no best weights to restore.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 2))
    y = np.arange(90) % 3
    X[:, 0] += 3 * y
    X_val = X[60:].copy()
    X_val[0, 0] = 3e38
    path = tmp_path / "nanval.npz"
    np.savez(path, X_train=X[:60], y_train=y[:60], X_val=X_val, y_val=y[60:])
    raw = {
        "data": {"path": str(path), "standardize": False},
        "model": {"dtype": "float32"},
        "optim": {"lr": 5.0, "batch_size": "full"},
        "train": {"max_epochs": 20, "patience": 1},
    }
    result = train(config_from_dict(raw))
    assert math.isnan(result.history.val_loss[0])
    assert result.stop_reason == "early_stopping"
    assert result.epochs == 1
    assert math.isfinite(result.final["train_loss"])


def test_stop_rule_diverged_is_a_result(iris64):
    result = train(config_from_dict(small("perceptron", 16, optim={"lr": 1e6}, train={"max_epochs": 20})), iris64)
    assert result.stop_reason == "diverged"
    assert result.epochs < 20
    json.dumps(result.to_json(), allow_nan=False)


def test_diverged_with_non_finite_weights_maps_nan_to_none():
    result = train(config_from_dict(small("perceptron", "full", optim={"lr": 1e300}, model={"dtype": "float32"})))
    assert result.stop_reason == "diverged"
    payload = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert payload["final"]["train_loss"] is None
    assert payload["history"]["train_loss"][-1] is None


def test_to_json_has_the_documented_keys(iris64):
    result = train(config_from_dict(small("perceptron", 16)), iris64)
    payload = result.to_json()
    assert {"config", "epochs", "stop_reason", "final", "history", "diagnosis", "run_id"} <= set(payload)
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_accuracy"} <= set(payload["final"])
    assert {"epoch", "lr", "train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(payload["history"])
    assert config_from_dict(payload["config"]) == result.config
