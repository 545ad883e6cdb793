"""Tests of bpexp.diagnose: the vocabulary, the physical measurements, the History
statistics, each detector on both sides of each of its thresholds, and robustness on
arbitrary (short, diverged, NaN-filled) histories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpexp.config import apply_overrides, config_from_dict
from bpexp.diagnose import MODES, Finding, diagnose, diagnose_history, merge_suggestions
from bpexp.diagnose import advice as adv
from bpexp.diagnose import detectors as det
from bpexp.diagnose import physics as phy
from bpexp.diagnose import signals as sig
from bpexp.model import MLP, Perceptron
from bpexp.optim import SGD, Momentum
from bpexp.train import History, train

# ---------------------------------------------------------------- helpers


def make_history(loss, *, val_loss=None, acc=None, val_acc=None, lr=0.1, steps=32, initial_loss=None,
                 update_norm=None, path_length=None, weight_norm=None, batch_loss=None) -> History:
    """A History with the given per-epoch series (constants broadcast)."""
    loss = [float(v) for v in loss]
    n = len(loss)

    def series(value, default):
        if value is None:
            value = default
        if np.isscalar(value):
            return [float(value)] * n
        return [float(v) for v in value]

    h = History()
    h.epoch = list(range(1, n + 1))
    h.lr = series(lr, 0.1)
    h.train_loss = loss
    h.val_loss = series(val_loss, loss)
    h.train_accuracy = series(acc, 0.9)
    h.val_accuracy = series(val_acc, 0.9)
    h.weight_norm = series(weight_norm, 1.0)
    h.update_norm = series(update_norm, 0.1)
    h.path_length = series(path_length, 0.2)
    h.grad_norm = [1.0] * n
    h.iterations = [steps * (i + 1) for i in range(n)]
    h.batch_loss = [] if batch_loss is None else [float(b) * v for b, v in zip(np.broadcast_to(batch_loss, n), loss)]
    first = loss[0] if n else 2.3
    h.initial = {"train_loss": first if initial_loss is None else initial_loss, "val_loss": first,
                 "train_accuracy": 0.1, "val_accuracy": 0.1, "weight_norm": 0.0}
    return h


def summary(n_train=1000, n_val=1000, counts=None, n_classes=10):
    counts = counts if counts is not None else [n_train // n_classes] * n_classes
    return {"n_train": n_train, "n_val": n_val, "n_classes": len(counts), "train_class_counts": list(counts),
            "val_class_counts": [n_val // len(counts)] * len(counts)}


def cfg(**overrides):
    return config_from_dict(apply_overrides({}, overrides))


class FakePhysics:
    """Stands in for RunPhysics with chosen measurements, to put a detector on a threshold."""

    def __init__(self, h_end=math.nan, h_init=math.nan, recall=None, knn=math.nan, polish_gain=math.nan, twin=None):
        self.h_end = h_end
        self.h_init = h_init
        self.recall = recall
        self.knn = knn
        self._gain = polish_gain
        self._twin = twin
        self.seconds = {}

    def polish(self, h_max):
        return phy.Polish(before=1.0 + self._gain, after=1.0, steps=30)

    def h_end_reaching(self, threshold):
        return phy.Ritz(self.h_end, 0.0, 0)  # converged: the threshold changes nothing

    def twin(self, epochs):
        return self._twin


def view(history, config, summ=None, stop_reason=None, final=None):
    return sig.view_of(history, config, summ or summary(), stop_reason=stop_reason, final=final)


def sawtooth(n, period, level=0.5, rise=0.1, start=None):
    """A loss that rises once every ``period`` epochs by ``rise`` (relative) and falls back."""
    out = []
    for t in range(n):
        out.append(level * (1 + rise) if t % period == period - 1 else level)
    return out


# ----------------------------------------------------------- vocabulary


def test_modes_are_the_shared_vocabulary_in_order():
    assert MODES == ("overfitting", "underfitting", "non_convergence", "flat_minimum", "lr_too_high", "lr_too_low",
                     "class_imbalance", "bad_ordering")


def test_finding_rejects_unknown_modes_and_out_of_range_confidence():
    with pytest.raises(ValueError, match="mode"):
        Finding("exploding", 0.5, 1, {}, "")
    with pytest.raises(ValueError, match="confidence"):
        Finding("overfitting", 1.5, 1, {}, "")


def test_finding_to_dict_is_plain_json():
    f = Finding("lr_too_high", np.float64(0.91234), np.int64(3), {"ratio": np.float32(2.5), "nan": math.nan,
                "flag": np.bool_(True), "seq": np.array([1.0, math.inf])}, "lower λ", {"optim.lr": 0.5})
    d = f.to_dict()
    assert set(d) == {"mode", "confidence", "epoch", "evidence", "advice", "suggested_config"}
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["evidence"] == {"ratio": 2.5, "nan": None, "flag": True, "seq": [1.0, None]}
    assert d["confidence"] == 0.912 and d["epoch"] == 3


def test_merge_suggestions_lets_the_more_confident_finding_win():
    a = Finding("lr_too_high", 0.9, 1, {}, "", {"optim.lr": 0.5})
    b = Finding("non_convergence", 0.6, 1, {}, "", {"optim.lr": 1.0, "train.stop_loss": 0.2})
    assert merge_suggestions([a, b]) == {"optim.lr": 0.5, "train.stop_loss": 0.2}
    assert merge_suggestions([b, a]) == {"optim.lr": 0.5, "train.stop_loss": 0.2}


# ------------------------------------------------------------- advice


def test_rounding_goes_in_the_safe_direction():
    assert adv.round_down(0.0347) == 0.034
    assert adv.round_up(0.0341) == 0.035
    assert adv.round_down(1.0) == 1.0 and adv.round_up(1.0) == 1.0
    assert adv.round_down(6.1749) == 6.1


class _Sugg:
    def __init__(self, lr, reason="r"):
        self.lr, self.reason = lr, reason


class _LRFind:
    def __init__(self, **lrs):
        self.suggestions = {k: _Sugg(v) for k, v in lrs.items()}


def test_lower_lr_prefers_the_range_test_then_the_hessian_then_a_decade():
    lr_find = _LRFind(base_lr=0.3, max_lr=1.2, steepest=None, valley=5.0)
    assert adv.lower_lr(3.2, safe=2.0, lr_find=lr_find) == (1.2, "the range test's max_lr")
    assert adv.lower_lr(3.2, safe=1.0, lr_find=lr_find) == (0.3, "the range test's base_lr")  # capped by 1/λ_max
    assert adv.lower_lr(3.2, safe=1.0) == (1.0, "1/λ_max")
    assert adv.lower_lr(3.2, safe=None) == (0.32, "λ/10")


def test_higher_lr_stays_below_the_stability_limit():
    lr_find = _LRFind(base_lr=0.02, max_lr=5.0)
    assert adv.higher_lr(1e-4, safe=1.3, lr_find=lr_find) == (0.02, "the range test's base_lr")
    assert adv.higher_lr(1e-4, safe=1.3) == (1.3, "1/λ_max")
    assert adv.higher_lr(1e-4, safe=None) == (0.001, "λ×10")


def test_lr_key_points_at_the_value_that_sets_the_peak():
    assert adv.lr_key(cfg()) == "optim.lr"
    assert adv.lr_key(cfg(**{"schedule.name": "constant", "schedule.lr": 0.5})) == "schedule.lr"
    assert adv.lr_key(cfg(**{"schedule.name": "triangular", "schedule.max_lr": 0.5, "optim.lr": 1.0})) == "schedule.max_lr"


# ------------------------------------------------------------ physics


def test_lanczos_finds_the_top_eigenvalue_of_a_symmetric_matrix(rng):
    M = rng.standard_normal((60, 60))
    S = M @ M.T / 60
    top = phy.lanczos_top(lambda v: S @ v, 60, rng, steps=40, tol=1e-12)
    assert top == pytest.approx(np.linalg.eigvalsh(S)[-1], rel=1e-8)


def test_lanczos_returns_nan_on_non_finite_products(rng):
    assert math.isnan(phy.lanczos_top(lambda v: v * math.nan, 5, rng))


def test_lanczos_stops_on_the_residual_of_the_top_ritz_pair():
    # a close second eigenvalue (0.97) and a start that leans away from the top eigenvector:
    # the run may only stop once the top Ritz pair's residual is within LANCZOS_TOL
    values = np.concatenate([[1.0, 0.97], np.linspace(0.0, 0.9, 198)])
    start = np.ones(200)
    start[0] = 0.0
    for seed in range(5):
        ritz = phy.lanczos(lambda v: values * v, 200, np.random.default_rng(seed), start=start, steps=60)
        assert ritz.converged and ritz.residual <= phy.LANCZOS_TOL * ritz.value
        assert ritz.value == pytest.approx(1.0, rel=1e-4)
        assert 3 <= ritz.steps < 60


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 1.5))
def test_lanczos_lower_bound_stop_is_a_certain_bound(seed, threshold):
    # Ritz values never exceed λ_max (Cauchy interlacing): a run stopped on stop_above proves
    # λ_max ≥ stop_above; one that did not stop there converged to λ_max
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((80, 80))
    S = M @ M.T / 80
    top = float(np.linalg.eigvalsh(S)[-1])
    threshold *= top
    ritz = phy.lanczos(lambda v: S @ v, 80, rng, stop_above=threshold, steps=80)
    assert ritz.value <= top * (1 + 1e-9)
    if ritz.converged:
        assert ritz.value == pytest.approx(top, rel=1e-4)
    else:
        assert threshold <= ritz.value and ritz.residual <= 0.15 * ritz.value


def test_float32_hessian_products_agree_with_float64(digits32, rng):
    X = digits32.train.X
    A = rng.standard_normal((10, X.shape[1])) * 0.3
    v = rng.standard_normal(A.size)
    exact = phy.perceptron_hvp(A, X.astype(np.float64), 0.01)(v)
    fast = phy.perceptron_hvp(A, *phy.hessian_rows(X, dtype=np.float32)[:1], 0.01)(v)
    assert fast.dtype == np.float64
    assert np.linalg.norm(fast - exact) <= 1e-5 * np.linalg.norm(exact)
    assert phy.hessian_rows(X, dtype=np.float32)[0].dtype == np.float32
    assert phy.hessian_rows(X)[0].dtype == np.float64  # cached apart


def test_hessian_top_of_a_trained_perceptron_is_the_dense_eigenvalue(digits32, make_config):
    # the last gradient starts the run; whatever it points at, the value is the dense λ_max
    config = make_config(data={"name": "digits"}, optim={"lr": 5.0, "batch_size": "full"}, train={"max_epochs": 30})
    result = train(config, digits32)
    X, y = digits32.train.X, digits32.train.y
    hvp = phy.perceptron_hvp(result.model.A, X.astype(np.float64), result.model.l2)
    H = np.column_stack([hvp(e) for e in np.eye(result.model.A.size)])
    dense = float(np.linalg.eigvalsh((H + H.T) / 2)[-1])
    ritz = phy.hessian_top(result.model, config, X, y, config.seed)
    assert ritz.converged and ritz.value == pytest.approx(dense, rel=1e-4)
    # the physics object: a bound that passes the threshold is a certain lower bound, and
    # a threshold above λ_max leaves the converged value
    run = phy.RunPhysics(result, twin=False)
    bound = run.h_end_reaching(0.5 * dense)
    assert 0.5 * dense <= bound.value <= dense * (1 + 1e-5)
    assert phy.RunPhysics(result, twin=False).h_end_reaching(2 * dense).value == pytest.approx(dense, rel=1e-4)
    assert run.h_end == pytest.approx(dense, rel=1e-4)


def _tiny_problem(rng, n=40, d=5, k=3):
    X = np.hstack([rng.standard_normal((n, d)), np.ones((n, 1))])
    y = rng.integers(0, k, n)
    return X, y


def test_perceptron_hvp_matches_finite_differences_of_the_gradient(rng):
    X, y = _tiny_problem(rng)
    model = Perceptron(5, 3, init="small_random", init_scale=0.5, l2=0.3, dtype="float64", rng=rng)
    hvp = phy.perceptron_hvp(model.A, X, model.l2)
    dim = model.A.size
    H = np.column_stack([hvp(e) for e in np.eye(dim)])
    # the oracle: central differences of the model's own analytic gradient, column by column
    A0 = model.A.copy()
    H_fd = np.empty((dim, dim))
    eps = 1e-6
    for j in range(dim):
        e = np.zeros(dim)
        e[j] = eps
        model.A[...] = A0 + e.reshape(A0.shape)
        model.loss_and_grad(X, y)
        g_plus = model.dA.ravel().copy()
        model.A[...] = A0 - e.reshape(A0.shape)
        model.loss_and_grad(X, y)
        H_fd[:, j] = (g_plus - model.dA.ravel()) / (2 * eps)
    model.A[...] = A0
    np.testing.assert_allclose(H, H_fd, atol=1e-7)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


def test_finite_difference_hvp_of_an_mlp_is_symmetric_and_matches_the_loss_curvature(rng):
    X, y = _tiny_problem(rng)
    model = MLP(5, [7], 3, l2=0.01, dtype="float64", rng=rng)
    hvp = phy.finite_difference_hvp(model, X, y)
    dim = sum(p.size for p in model.params)
    v, w = rng.standard_normal(dim), rng.standard_normal(dim)
    # a forward difference: each product is off by O(ε) = FD_EPSILON relative, so the two
    # sides of the symmetry may differ by twice that, no more
    assert v @ hvp(w) == pytest.approx(w @ hvp(v), rel=2 * phy.FD_EPSILON)
    # vᵀHv against the second difference of the objective along v
    theta = [p.copy() for p in model.params]
    flat = np.concatenate([p.ravel() for p in theta])

    def J(x):
        parts = np.split(x, np.cumsum([p.size for p in theta])[:-1])
        model.set_weights([q.reshape(p.shape) for q, p in zip(parts, theta)])
        return model.objective(X, y)

    u = v / np.linalg.norm(v)
    eps = 1e-4
    second = (J(flat + eps * u) - 2 * J(flat) + J(flat - eps * u)) / eps**2
    model.set_weights(theta)
    assert u @ hvp(u) == pytest.approx(second, rel=1e-3)
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in model.params]), flat)  # weights restored


def test_top_hessian_eigenvalue_of_the_perceptron_at_zero_has_a_closed_form(digits32, make_config):
    # at A = 0 every p is uniform, so H = (I/K − 11ᵀ/K²) ⊗ XᵀX/n (+ λ₂ on the weights)
    X = digits32.train.X.astype(np.float64)
    zeros = np.zeros((10, X.shape[1]))
    rng = np.random.default_rng(0)
    for l2 in (0.0, 0.01):
        lanczos = phy.lanczos_top(phy.perceptron_hvp(zeros, X, l2), zeros.size, rng, steps=60, tol=1e-12)
        closed = phy.zero_perceptron_top(X, 10, l2)
        assert lanczos <= closed + 1e-9 and closed - l2 <= lanczos + 1e-9
        if l2 == 0.0:
            assert closed == pytest.approx(lanczos, rel=1e-9)
    config = make_config(data={"name": "digits"})
    model = Perceptron(digits32.n_features, 10)
    assert phy.top_hessian_eigenvalue(model, config, X, digits32.train.y, seed=0) == phy.zero_perceptron_top(X, 10, 0.0)


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_h_init_of_a_zero_perceptron_skips_the_model_but_not_the_value(digits32, make_config, l2):
    from types import SimpleNamespace

    config = make_config(data={"name": "digits"}, model={"l2": l2})
    run = SimpleNamespace(config=config, model=None, dataset=digits32)
    model = phy.initial_model(config, digits32.n_features, digits32.n_classes)
    assert not np.any(model.A)
    expected = phy.top_hessian_eigenvalue(model, config, digits32.train.X, digits32.train.y, config.seed)
    assert phy.RunPhysics(run, twin=False).h_init == pytest.approx(expected, rel=1e-12)


def test_hessian_rows_are_the_float64_subset_and_its_transpose(digits32, rng):
    X = digits32.train.X
    Xs, XsT = phy.hessian_rows(X, limit=200, seed=5)
    expected = X[phy._subset(len(X), 200, 5)].astype(np.float64)
    assert np.array_equal(Xs, expected) and np.array_equal(XsT, expected.T)
    assert Xs.flags.c_contiguous and XsT.flags.c_contiguous
    assert phy.hessian_rows(X, limit=200, seed=5)[0] is Xs  # cached for the same array
    for seed in range(phy.ROWS_CACHED + 2):  # other subsets push it out: the cache stays bounded
        phy.hessian_rows(X, limit=200, seed=100 + seed)
    assert len(phy._ROWS) <= phy.ROWS_CACHED
    assert phy.hessian_rows(X, limit=200, seed=5)[0] is not Xs
    assert np.array_equal(phy.hessian_rows(X, limit=200, seed=5)[0], Xs)
    # the product with the cached transpose is the product without it
    A = rng.standard_normal((10, X.shape[1]))
    v = rng.standard_normal(A.size)
    cached = phy.perceptron_hvp(A, Xs, 0.01, XT=XsT)(v)
    assert np.allclose(cached, phy.perceptron_hvp(A, expected, 0.01)(v), rtol=1e-12, atol=1e-14)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=30))
def test_class_imbalance_shortcut_skips_only_counts_whose_perplexity_cannot_flag(counts):
    # class_imbalance skips label_perplexity while K·max p ≤ 1/IMBALANCE_PERPLEXITY (min-entropy bound)
    total = sum(counts)
    if total > 0 and max(counts) * len(counts) <= total / det.IMBALANCE_PERPLEXITY * (1.0 - 1e-9):
        assert sig.label_perplexity(counts) >= det.IMBALANCE_PERPLEXITY


def test_gram_top_is_the_dense_eigenvalue_of_its_own_array_and_of_no_other(digits32):
    # the cache keys on the array's identity: a hit must equal the dense eigvalsh of that
    # array, and another array (even of the same shape) gets its own eigenvalue
    X = digits32.train.X
    dense = float(np.linalg.eigvalsh(X.astype(np.float64).T @ X.astype(np.float64) / len(X))[-1])
    assert phy.gram_top(X) == pytest.approx(dense, rel=1e-12)
    assert phy.gram_top(X) == phy.gram_top(X)
    scaled = 2.0 * X
    assert phy.gram_top(scaled) == pytest.approx(4.0 * dense, rel=1e-9)
    sub = phy.gram_top(X, limit=100, seed=3)
    idx = phy._subset(len(X), 100, 3)
    Xs = X[idx].astype(np.float64)
    assert sub == pytest.approx(float(np.linalg.eigvalsh(Xs.T @ Xs / len(Xs))[-1]), rel=1e-12)
    assert sub != pytest.approx(dense, rel=1e-6)


@pytest.mark.parametrize("name,momentum", [("sgd", 0.0), ("momentum", 0.9), ("momentum", 0.5), ("nesterov", 0.9), ("nesterov", 0.5)])
def test_stability_limit_separates_converging_from_diverging_steps(name, momentum):
    # a 1-D quadratic J = h·θ²/2 run by bpexp's own optimisers, just below and just above the limit
    limit = phy.stability_limit(cfg(**{"optim.name": name, "optim.momentum": momentum}))
    h = 2.0

    def run(lr):
        opt = SGD() if name == "sgd" else Momentum(momentum, nesterov=name == "nesterov")
        theta = np.array([1.0])
        grad = np.zeros(1)
        with np.errstate(all="ignore"):
            for _ in range(3000):
                grad[:] = h * theta
                opt.step([theta], [grad], lr)
        return abs(theta[0])

    assert run(0.97 * limit / h) < 1e-3
    assert not run(1.03 * limit / h) < 1.0  # grew, possibly to inf or NaN
    assert phy.stability_limit(cfg(**{"optim.name": "adam"})) is None


def test_polish_gains_nothing_at_the_optimum_and_much_above_it(make_config):
    config = make_config(data={"name": "iris"}, model={"l2": 0.05, "dtype": "float64"},
                         optim={"batch_size": "full", "lr": 1.0}, train={"max_epochs": 2000})
    result = train(config)
    X, y = result.dataset.train.X, result.dataset.train.y
    h = phy.top_hessian_eigenvalue(result.model, config, X, y, 0)
    assert phy.polish(result.model, config, X, y, h, 0).gain < 0.01
    shaken = Perceptron(result.dataset.n_features, 3, l2=0.05, dtype="float64")
    shaken.set_weights([result.model.A + np.random.default_rng(0).normal(0, 1.0, result.model.A.shape)])
    assert phy.polish(shaken, config, X, y, h, 0).gain > 0.5
    assert math.isnan(phy.polish(result.model, config, X, y, math.nan, 0).gain)
    # it stops once the gain settles every detector's question, and safe steps only lower the
    # loss, so the full run gains at least as much
    early = phy.polish(shaken, config, X, y, h, 0)
    full = phy.polish(shaken, config, X, y, h, 0, enough=math.inf)
    assert full.steps == phy.POLISH_STEPS and 1 <= early.steps < full.steps
    assert phy.POLISH_ENOUGH <= early.gain <= full.gain


def test_knn_accuracy_matches_scikit_learn(rng):
    from sklearn.neighbors import KNeighborsClassifier

    X = np.hstack([rng.standard_normal((300, 3)), np.ones((300, 1))])
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    Xv = np.hstack([rng.standard_normal((200, 3)), np.ones((200, 1))])
    yv = (Xv[:, 0] * Xv[:, 1] > 0).astype(np.int64)
    ours = phy.knn_accuracy(X, y, Xv, yv, seed=0)
    theirs = KNeighborsClassifier(5).fit(X[:, :-1], y).score(Xv[:, :-1], yv)
    assert ours == pytest.approx(theirs, abs=0.011)  # tie-breaking may differ on a sample or two


def test_per_class_recall_counts_hits_per_class():
    model = Perceptron(1, 3, dtype="float64")
    model.A[:] = [[0, 1.0], [0, 0.0], [0, -1.0]]  # always predicts class 0
    X = np.array([[0.0, 1.0]] * 4)
    recall, share = phy.per_class_recall(model, X, np.array([0, 0, 1, 2]), 3)
    np.testing.assert_array_equal(recall, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(share, [1.0, 0.0, 0.0])


def test_shuffled_twin_runs_the_same_config_shuffled_and_times_itself(make_config):
    config = make_config(data={"name": "iris", "order": "sorted"}, optim={"batch_size": 1}, train={"max_epochs": 10})
    result = train(config)
    twin = phy.shuffled_twin(result, 2)
    assert twin.epoch == 2 and twin.run_loss == result.history.train_loss[1] and twin.seconds > 0
    shuffled = train(apply_overrides_config(config, {"data.order": "shuffled", "train.max_epochs": 2}), result.dataset)
    assert twin.twin_loss == shuffled.history.train_loss[-1]


def apply_overrides_config(config, patch):
    return config_from_dict(apply_overrides(config.model_dump(mode="json"), patch))


# ------------------------------------------------------------ signals


def test_oscillation_statistics_of_known_series():
    osc = sig.oscillation(np.array(sawtooth(41, 4, level=1.0, rise=0.1)), ref=1.0)
    assert osc.rise_share == pytest.approx(10 / 40)
    assert osc.rise_size == pytest.approx(0.1)
    assert osc.decay == pytest.approx(1.0, abs=0.1)
    alternating = sig.oscillation(np.array([1.0, 1.1] * 10), ref=1.0)
    assert alternating.alternation == 1.0
    dying = sig.oscillation(np.array([1 + 0.5 * (-0.8) ** t for t in range(40)]), ref=1.0)
    assert dying.decay < 0.1
    assert math.isnan(sig.oscillation(np.array([1.0, math.nan]), ref=1.0).rise_share)


def test_trend_t_separates_a_steady_fall_from_a_wobble(rng):
    assert sig.trend_t(np.linspace(2, 1, 40), 0.75) < -1e6  # a straight line: no residual at all
    flat = 1 + 0.01 * rng.standard_normal(200)
    assert abs(sig.trend_t(flat, 0.75)) < 3.5
    assert sig.trend_t(np.linspace(2, 1, 40) + 0.001 * rng.standard_normal(40), 0.75) < -3


def test_tail_share_is_small_once_a_curve_has_settled():
    t = np.arange(1, 101, dtype=float)
    assert sig.tail_share(np.exp(-t / 5), 0.75, 1.0) < 0.01
    assert sig.tail_share(2 - t / 100, 0.75, 2.0) == pytest.approx(0.25, abs=0.02)


def test_label_perplexity():
    assert sig.label_perplexity([50, 50, 50]) == pytest.approx(1.0)
    p = np.array([20, 1, 1]) / 22
    assert sig.label_perplexity([20, 1, 1]) == pytest.approx(math.exp(-(p * np.log(p)).sum()) / 3)
    assert sig.label_perplexity([10, 0, 0, 0]) == pytest.approx(0.25)
    assert math.isnan(sig.label_perplexity([5]))


def test_window_divergence_is_theDeepChecker_rule_with_a_floor():
    assert sig.window_divergence(np.array([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.2]), floor=0.1)
    assert not sig.window_divergence(np.array([1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9]), floor=0.1)  # < 2×
    assert not sig.window_divergence(np.array([1.0, 0.002, 0.002, 0.002, 0.002, 0.002, 0.005]), floor=0.1)


@pytest.mark.parametrize("section,expected", [
    ({"train": {"max_epochs": 5}}, "max_epochs"),
    ({"train": {"max_epochs": 50, "stop_loss": 0.3}}, "loss_threshold"),
    ({"data": {"name": "digits", "per_class": 5}, "model": {"kind": "mlp", "hidden": [64]},
      "optim": {"name": "adam", "lr": 0.01}, "train": {"max_epochs": 100, "patience": 3}}, "early_stopping"),
    ({"optim": {"lr": 500.0, "batch_size": "full"}, "train": {"max_epochs": 20}}, "diverged"),
])
def test_infer_stop_reason_replays_the_training_loop(section, expected):
    config = config_from_dict({"data": {"name": "iris"}, **section})
    result = train(config)
    assert result.stop_reason == expected
    v = sig.view_of(result.history, config, result.dataset.summary())
    assert v.stop_reason == expected
    if expected == "early_stopping":
        assert v.final["val_loss"] == pytest.approx(result.final["val_loss"], rel=1e-5)


# ----------------------------------------------------- detector thresholds
# Each detector is put on both sides of each threshold it cites: the finding must flip.


def _oscillating_history(n=60, period=2, rise=0.1, lr=0.1, **kw):
    loss = [2.0] * 5 + sawtooth(n - 5, period, level=0.5, rise=rise)
    return make_history(loss, lr=lr, initial_loss=2.3, **kw)


@pytest.mark.parametrize("ratio,found", [(1.05, True), (0.95, False)])
def test_lr_too_high_needs_lambda_times_lambda_max_above_the_limit(ratio, found):
    h = ratio * 2.0 / 0.1
    v = view(_oscillating_history(), cfg())
    result = det.lr_too_high(v, FakePhysics(h_end=h), {})
    assert (result is not None) == found
    if found:
        assert result.evidence["stability_ratio"] == pytest.approx(ratio)
        assert result.suggested_config == {"optim.lr": adv.round_down(1.0 / h)}
        assert "oscillates" in result.advice and "bpexp lr-find" in result.advice


def test_lr_too_high_asks_only_for_the_bound_it_needs_and_says_when_it_got_one():
    class BoundPhysics(FakePhysics):
        asked = None

        def h_end_reaching(self, threshold):
            BoundPhysics.asked = threshold
            return phy.Ritz(1.3 * threshold, 0.1 * threshold, 3)  # stopped on the bound: not converged

    v = view(_oscillating_history(), cfg())
    result = det.lr_too_high(v, BoundPhysics(), {})
    assert BoundPhysics.asked == pytest.approx(det.UNSTABLE * 2.0 / 0.1)  # the λ_max that puts λ·λ_max on the limit
    assert "lambda_max" not in result.evidence
    assert result.evidence["lambda_max_at_least"] == pytest.approx(1.3 * 20.0)
    assert "λ·λ_max ≥ 2.6" in result.advice
    assert result.suggested_config["optim.lr"] <= 0.5 * 0.1  # a lower bound on λ_max at least halves λ


@pytest.mark.parametrize("period,found", [(4, True), (6, False)])
def test_lr_too_high_needs_a_fifth_of_late_epochs_rising(period, found):
    # rises once every 4 epochs: 25 % ≥ 20 %; every 6: 17 % < 20 % (AutoTrainer's share)
    v = view(_oscillating_history(n=100, period=period), cfg())
    assert (det.lr_too_high(v, FakePhysics(h_end=100.0), {}) is not None) == found


@pytest.mark.parametrize("rise,found", [(0.012, True), (0.008, False)])
def test_lr_too_high_needs_rises_of_one_percent(rise, found):
    v = view(_oscillating_history(rise=rise), cfg())
    assert (det.lr_too_high(v, FakePhysics(h_end=100.0), {}) is not None) == found


@pytest.mark.parametrize("damping,found", [(0.99, True), (0.9, False)])
def test_lr_too_high_ignores_oscillations_that_die_out(damping, found):
    # |Δ| shrinks by damping per epoch: over the late window's halves 0.99 keeps ≥ 50 %, 0.9 does not
    loss = [2.0] * 5 + [0.5 * (1 + 0.2 * damping**t * (t % 2)) for t in range(95)]
    v = view(make_history(loss, initial_loss=2.3), cfg())
    assert (det.lr_too_high(v, FakePhysics(h_end=100.0), {}) is not None) == found


def test_lr_too_high_without_the_model_trusts_full_batch_runs_and_period_two_only(rng):
    noisy = make_history(_noisy_plateau(rng, n=80), initial_loss=2.3)
    assert det.lr_too_high(view(noisy, cfg(**{"optim.batch_size": "full"})), None, {}) is not None
    assert det.lr_too_high(view(noisy, cfg()), None, {}) is None  # minibatches: the wobble could be noise
    alternating = view(_oscillating_history(n=60, period=2), cfg(), summary())
    assert det.lr_too_high(alternating, None, {}).confidence == 0.5


def test_divergence_is_lr_too_high_and_non_convergence():
    loss = [2.0, 1.5, 3.0, 40.0, math.nan]
    h = make_history(loss, initial_loss=2.3)
    findings = diagnose_history(h, cfg(), summary())
    assert [f.mode for f in findings] == ["non_convergence", "lr_too_high"]
    assert all(f.epoch == 4 for f in findings)  # 40 > 10 × 2.3
    assert findings[1].suggested_config == {"optim.lr": 0.01}


@pytest.mark.parametrize("h0,found", [(0.9, True), (1.0, False)])
def test_lr_too_low_needs_fewer_than_three_e_folds(h0, found):
    # Σλ_t = 100 epochs × 32 steps × 1e-3 = 3.2, so λ_max(H₀) = 0.9 gives 2.88 e-folds and 1.0 gives 3.2
    loss = list(np.linspace(2.3, 1.0, 100))
    v = view(make_history(loss, lr=1e-3, steps=32, initial_loss=2.3), cfg(**{"optim.lr": 1e-3, "train.max_epochs": 100}))
    result = det.lr_too_low(v, FakePhysics(h_init=h0), {})
    assert (result is not None) == found
    if found:
        assert result.evidence["efolds"] == pytest.approx(2.88)
        assert result.suggested_config == {"optim.lr": adv.round_down(1 / 0.9)}


def test_lr_too_low_needs_a_loss_that_is_still_falling():
    settled = list(2.3 * np.exp(-np.arange(100) / 5) + 1.0)
    v = view(make_history(settled, lr=1e-3, initial_loss=2.3), cfg(**{"optim.lr": 1e-3}))
    assert det.lr_too_low(v, FakePhysics(h_init=0.01), {}) is None


def test_a_steady_fall_under_one_percent_is_still_falling_but_a_flat_wobble_is_not():
    # λ = 1e-5 on digits: 0.6 % of the loss in 20 epochs, as straight as a ruler
    crawl = list(2.3026 - 6.4e-4 * np.arange(1, 21))
    v = view(make_history(crawl, lr=1e-5, initial_loss=2.3026), cfg(**{"optim.lr": 1e-5, "train.max_epochs": 20}))
    assert det._still_falling(v.loss, v.loss_init, crawl=True)[0]
    assert not det._still_falling(v.loss, v.loss_init)[0]  # for the other detectors a crawl has settled
    assert det.lr_too_low(v, FakePhysics(h_init=0.73), {}) is not None
    # a linear model on circles: the same tiny fall, but noise around a flat line
    wobble = list(0.6931 + 0.004 * np.sin(np.arange(1, 21) * 2.1) - 1e-5 * np.arange(1, 21))
    w = view(make_history(wobble, lr=0.1, initial_loss=0.6931), cfg(**{"optim.lr": 0.1, "train.max_epochs": 20}))
    assert not det._still_falling(w.loss, w.loss_init, crawl=True)[0]


def test_lambda_1e_5_on_digits_is_lr_too_low_not_underfitting(make_config):
    config = make_config(data={"name": "digits"}, model={"l2": 0.001}, optim={"lr": 1e-5, "batch_size": 32},
                         train={"max_epochs": 20})
    assert [f.mode for f in diagnose(train(config))] == ["lr_too_low"]


@pytest.mark.parametrize("ratio,found", [(-4.2, True), (-3.8, False)])
def test_lr_too_low_without_the_model_uses_the_update_ratio(ratio, found):
    # per-step ‖Δθ‖/‖θ‖ = path/steps/weight_norm: TheDeepChecker's −4
    loss = list(np.linspace(2.3, 1.0, 100))
    path = 32 * 10**ratio
    v = view(make_history(loss, lr=1e-3, path_length=path, weight_norm=1.0, initial_loss=2.3), cfg(**{"optim.lr": 1e-3}))
    assert (det.lr_too_low(v, None, {}) is not None) == found


def _noisy_plateau(rng, n=60, level=0.3, noise=0.1):
    return [2.0, 1.0] + list(level * (1 + noise * rng.standard_normal(n - 2)))


@pytest.mark.parametrize("gain,found", [(0.12, True), (0.08, False)])
def test_flat_minimum_needs_a_lower_loss_within_reach(rng, gain, found):
    v = view(make_history(_noisy_plateau(rng), initial_loss=2.3), cfg(**{"optim.batch_size": 1}))
    result = det.flat_minimum(v, FakePhysics(h_end=1.0, polish_gain=gain), {})
    assert (result is not None) == found
    if found:
        assert result.suggested_config == {"schedule.name": "cosine"}


def test_flat_minimum_suggests_larger_batches_when_lambda_already_decays(rng):
    v = view(make_history(_noisy_plateau(rng), initial_loss=2.3), cfg(**{"optim.batch_size": 1, "schedule.name": "cosine"}))
    assert det.flat_minimum(v, FakePhysics(h_end=1.0, polish_gain=0.5), {}).suggested_config == {"optim.batch_size": 32}


def test_flat_minimum_never_for_full_batch_or_a_sinking_level(rng):
    full = view(make_history(_noisy_plateau(rng), initial_loss=2.3), cfg(**{"optim.batch_size": "full"}))
    assert det.flat_minimum(full, FakePhysics(h_end=1.0, polish_gain=0.5), {}) is None
    sinking = [2.0, 1.0] + list(np.linspace(0.5, 0.1, 58) * (1 + 0.1 * rng.standard_normal(58)))
    v = view(make_history(sinking, initial_loss=2.3), cfg(**{"optim.batch_size": 1}))
    assert det.flat_minimum(v, FakePhysics(h_end=1.0, polish_gain=0.5), {}) is None


@pytest.mark.parametrize("gain,found", [(0.08, True), (0.12, False)])
def test_non_convergence_needs_a_real_floor_above_stop_loss(gain, found):
    # minibatches: the floor is real only if safe full-batch steps cannot lower it by 10 %
    loss = list(0.2 + 1.8 * np.exp(-np.arange(80) / 4))
    config = cfg(**{"train.stop_loss": 0.1, "train.max_epochs": 80})
    v = view(make_history(loss, initial_loss=2.3), config)
    result = det.non_convergence(v, FakePhysics(h_end=1.0, polish_gain=gain), {})
    assert (result is not None) == found
    if found:
        assert result.suggested_config == {"train.stop_loss": adv.round_up(1.1 * min(loss))}
        assert "stop_loss 0.1 is below the training loss floor 0.2" in result.advice


@pytest.mark.parametrize("pace,found", [(0.08, True), (0.12, False)])
def test_non_convergence_needs_the_gap_to_stop_loss_no_longer_closing(pace, found):
    # the last quarter lowers the loss by `pace` × the gap that remains to stop_loss 0.1
    d = pace * 0.2 / (1 + pace)
    loss = list(np.linspace(2.3, 0.3, 20)) + [0.3] * 40 + [0.3 - d] * 20
    config = cfg(**{"optim.batch_size": "full", "train.stop_loss": 0.1, "train.max_epochs": 80})
    result = det.non_convergence(view(make_history(loss, initial_loss=2.3), config), None, {})
    assert (result is not None) == found
    if found:
        assert result.evidence["last_quarter_fall_over_gap"] == pytest.approx(pace)


def test_non_convergence_of_a_full_batch_run_needs_no_polish():
    loss = list(0.2 + 1.8 * np.exp(-np.arange(80) / 4))
    config = cfg(**{"optim.batch_size": "full", "train.stop_loss": 0.1, "train.max_epochs": 80})
    phys = FakePhysics(h_end=1.0, polish_gain=0.5)  # would veto, if it were asked
    assert det.non_convergence(view(make_history(loss, initial_loss=2.3), config), phys, {}) is not None
    below = cfg(**{"optim.batch_size": "full", "train.stop_loss": 0.25, "train.max_epochs": 80})
    assert det.non_convergence(view(make_history(loss, initial_loss=2.3), below), phys, {}) is None


@pytest.mark.parametrize("train_end,found", [(0.004, True), (0.09, False)])
def test_non_convergence_on_validation_needs_no_polish_once_training_meets_stop_loss(train_end, found):
    # stop_on: val, the validation loss settled at 0.15 over stop_loss 0.07: a training loss already
    # below 0.07 leaves only the generalisation gap; above it, the polish decides (0.5 vetoes)
    val = list(0.15 + 2.1 * np.exp(-np.arange(60) / 3))
    train_loss = list(train_end + 2.2 * np.exp(-np.arange(60) / 3))
    config = cfg(**{"train.stop_on": "val", "train.stop_loss": 0.07, "train.max_epochs": 60})
    v = view(make_history(train_loss, val_loss=val, initial_loss=2.3), config)
    result = det.non_convergence(v, FakePhysics(h_end=1.0, polish_gain=0.5), {})
    assert (result is not None) == found
    if found:
        assert result.evidence["train_loss_end"] == pytest.approx(train_end, rel=1e-3)
        assert "validation loss floor 0.15" in result.advice and "generalisation" in result.advice
        assert result.suggested_config == {"train.stop_loss": adv.round_up(1.1 * min(val))}


def test_non_convergence_waits_while_the_loss_still_falls():
    loss = list(np.linspace(2.3, 0.5, 80))
    v = view(make_history(loss, initial_loss=2.3), cfg(**{"train.stop_loss": 0.1, "train.max_epochs": 80}))
    assert det.non_convergence(v, FakePhysics(h_end=1.0, polish_gain=0.0), {}) is None


def _final(train_acc, val_acc, val_loss=1.0):
    return {"train_loss": 0.01, "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc}


@pytest.mark.parametrize("val_acc,found", [(0.89, True), (0.91, False)])
def test_overfitting_needs_an_accuracy_gap_of_a_tenth(val_acc, found):
    h = make_history(list(np.linspace(2, 0.01, 50)), acc=1.0, val_acc=val_acc)
    v = view(h, cfg(), summary(n_val=2000), final=_final(1.0, val_acc))
    assert (det.overfitting(v, None, {}) is not None) == found


def test_overfitting_needs_the_gap_to_be_three_standard_errors():
    # 0.15 on 20 validation samples is 1.9 standard errors: could be chance
    h = make_history(list(np.linspace(2, 0.01, 50)), acc=1.0, val_acc=0.85)
    assert det.overfitting(view(h, cfg(), summary(n_val=20), final=_final(1.0, 0.85)), None, {}) is None
    assert det.overfitting(view(h, cfg(), summary(n_val=200), final=_final(1.0, 0.85)), None, {}) is not None


@pytest.mark.parametrize("final_val,patch", [(1.2, {"train.patience": 10}), (1.02, {"model.l2": 0.001})])
def test_overfitting_advice_depends_on_whether_validation_loss_turned(final_val, patch):
    # GL = 20 % ≥ 5 (Prechelt): early stopping helps; GL = 2 %: it would not
    val = list(np.linspace(2, 1.0, 30)) + list(np.linspace(1.0, final_val, 70))
    h = make_history(list(np.linspace(2, 0.01, 100)), val_loss=val, acc=1.0, val_acc=0.8)
    v = view(h, cfg(), summary(), final=_final(1.0, 0.8, final_val))
    assert det.overfitting(v, None, {}).suggested_config == patch


def test_overfitting_on_a_small_sample_suggests_using_more_of_it():
    h = make_history(list(np.linspace(2, 0.01, 100)), acc=1.0, val_acc=0.7)
    v = view(h, cfg(**{"data.per_class": 3}), summary(), final=_final(1.0, 0.7))
    assert det.overfitting(v, None, {}).suggested_config == {"data.per_class": 30}


@pytest.mark.parametrize("counts,found", [([100, 5, 5], True), ([80, 5, 5], False)])
def test_class_imbalance_needs_label_perplexity_below_half(counts, found):
    # exp(H)/K: [100, 5, 5] → 0.48, [80, 5, 5] → 0.51
    v = view(make_history([1.0] * 20), cfg(), summary(counts=counts))
    recall = (np.array([1.0, 0.5, 0.5]), np.array([0.6, 0.2, 0.2]))
    assert (det.class_imbalance(v, FakePhysics(recall=recall), {}) is not None) == found


@pytest.mark.parametrize("minority,found", [(0.88, True), (0.92, False)])
def test_class_imbalance_needs_a_recall_gap_of_a_tenth(minority, found):
    v = view(make_history([1.0] * 20), cfg(**{"data.imbalance": 20.0}), summary(counts=[100, 5, 5]))
    recall = (np.array([0.99, minority, minority]), np.array([0.4, 0.3, 0.3]))
    result = det.class_imbalance(v, FakePhysics(recall=recall), {})
    assert (result is not None) == found
    if found:
        assert result.suggested_config == {"data.imbalance": 1.0}


def test_class_imbalance_without_a_manipulation_gives_advice_but_no_patch():
    v = view(make_history([1.0] * 20), cfg(), summary(counts=[100, 5, 5]))
    result = det.class_imbalance(v, FakePhysics(recall=(np.array([1.0, 0.2, 0.2]), np.ones(3) / 3)), {})
    assert result.suggested_config == {} and "oversample" in result.advice


@pytest.mark.parametrize("knn,found", [(0.71, True), (0.69, False)])
def test_underfitting_needs_the_neighbour_vote_ten_points_ahead(knn, found):
    h = make_history([0.69] * 60, acc=0.6, val_acc=0.6)
    v = view(h, cfg(), summary(n_val=1000, counts=[500, 500]), final=_final(0.6, 0.6))
    result = det.underfitting(v, FakePhysics(knn=knn), {})
    assert (result is not None) == found
    if found:
        assert result.suggested_config == {"model.kind": "mlp", "model.hidden": [64], "model.init": "he"}


@pytest.mark.parametrize("train_acc,checked", [(0.94, True), (0.96, False)])
def test_underfitting_is_only_checked_below_95_percent_training_accuracy(train_acc, checked):
    h = make_history([0.3] * 60, acc=train_acc, val_acc=0.8)
    v = view(h, cfg(), summary(n_val=1000), final=_final(train_acc, 0.8))
    assert (det.underfitting(v, FakePhysics(knn=1.0), {}) is not None) == checked


def test_underfitting_without_the_model_compares_with_the_prior_loss():
    flat = make_history([0.69] * 60, acc=0.5, val_acc=0.5)
    v = view(flat, cfg(), summary(counts=[300, 300]))
    assert det.underfitting(v, None, {}).evidence["prior_gain"] == pytest.approx(1 - 0.69 / math.log(2))
    learned = make_history([0.2] * 60, acc=0.9, val_acc=0.9)
    assert det.underfitting(view(learned, cfg(), summary(counts=[300, 300])), None, {}) is None


@pytest.mark.parametrize("twin_loss,found", [(0.75, True), (0.85, False)])
def test_bad_ordering_needs_the_twin_twenty_percent_below_the_run(twin_loss, found):
    h = make_history([1.5] + [1.0] * 59)
    v = view(h, cfg(**{"data.order": "sorted", "optim.batch_size": 1}), summary(), final={"train_loss": 1.0})
    twin = phy.Twin(epoch=3, run_loss=1.0, twin_loss=twin_loss, seconds=0.01)
    result = det.bad_ordering(v, FakePhysics(twin=twin), {})
    assert (result is not None) == found
    if found:
        assert result.suggested_config == {"data.order": "shuffled"}


@pytest.mark.parametrize("forget,found", [(0.65, True), (0.75, False)])
def test_bad_ordering_needs_batches_that_are_fit_then_forgotten(forget, found):
    # batch_loss = forget × the end-of-epoch loss; a fixed order qualifies on this signal alone
    h = make_history([1.5] + [1.0] * 59, batch_loss=forget)
    v = view(h, cfg(**{"data.order": "fixed", "optim.batch_size": 1}), summary(), final={"train_loss": 1.0})
    twin = phy.Twin(epoch=3, run_loss=1.0, twin_loss=0.5, seconds=0.01)
    assert (det.bad_ordering(v, FakePhysics(twin=twin), {}) is not None) == found
    history_only = det.bad_ordering(v, None, {})
    assert (history_only is not None) == found
    if found:
        assert history_only.confidence < 0.8 and history_only.evidence["batch_over_epoch_loss"] == pytest.approx(forget)


def test_bad_ordering_is_never_suspected_for_shuffled_or_full_batch_runs():
    twin = phy.Twin(epoch=3, run_loss=1.0, twin_loss=0.1, seconds=0.01)
    for overrides in ({"data.order": "shuffled"}, {"data.order": "sorted", "optim.batch_size": "full"}):
        v = view(make_history([1.0] * 60), cfg(**overrides), summary(), final={"train_loss": 1.0})
        assert det.bad_ordering(v, FakePhysics(twin=twin), {}) is None


# ---------------------------------------------------------- robustness


_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(min_value=0.0, max_value=5.0),
    st.none(),
)
_series = st.lists(_floats, max_size=40)


@st.composite
def histories(draw, min_len=0, max_len=40):
    n = draw(st.integers(min_len, max_len))
    h = History()
    h.train_loss = draw(st.lists(_floats, min_size=n, max_size=n))
    for name in ("epoch", "lr", "train_accuracy", "val_loss", "val_accuracy", "weight_norm", "update_norm",
                 "path_length", "grad_norm", "iterations"):
        setattr(h, name, draw(_series))
    h.initial = draw(st.dictionaries(st.sampled_from(["train_loss", "val_loss", "train_accuracy"]), _floats))
    return h


_configs = st.builds(
    lambda bs, stop, patience, order, opt, imb: cfg(**{
        "optim.batch_size": bs, "train.stop_loss": stop, "train.patience": patience, "data.order": order,
        "optim.name": opt, "data.imbalance": imb}),
    st.sampled_from([1, 32, "full"]), st.sampled_from([None, 0.01, 1.0]), st.sampled_from([None, 3]),
    st.sampled_from(["shuffled", "sorted", "fixed"]), st.sampled_from(["sgd", "momentum", "adam"]),
    st.sampled_from([None, 20.0]),
)
_summaries = st.one_of(
    st.just({}),
    st.builds(lambda counts, n_val: {"n_train": sum(counts), "n_val": n_val, "train_class_counts": counts},
              st.lists(st.integers(0, 500), min_size=0, max_size=5), st.integers(0, 300)),
)


def _check_findings(findings, n):
    for f in findings:
        assert f.mode in MODES
        assert 0.0 <= f.confidence <= 1.0
        assert 1 <= f.epoch <= max(n, 1)
        assert isinstance(f.advice, str) and f.advice
        json.dumps(f.to_dict(), allow_nan=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), _configs, _summaries, st.sampled_from([None, "diverged", "max_epochs", "loss_threshold"]))
def test_diagnose_history_never_crashes(history, config, summ, stop_reason):
    findings = diagnose_history(history, config, summ, stop_reason=stop_reason)
    _check_findings(findings, len(history.train_loss))


@settings(max_examples=100, deadline=None)
@given(histories(min_len=1, max_len=1), _configs, _summaries)
def test_a_one_epoch_history_gives_only_low_confidence_findings(history, config, summ):
    for finding in diagnose_history(history, config, summ):
        assert finding.confidence <= 0.2


def test_an_empty_history_gives_no_finding():
    assert diagnose_history(History(), cfg(), summary()) == []


def test_diagnose_survives_a_run_that_went_to_nan(make_config):
    config = make_config(data={"name": "iris"}, optim={"lr": 1e6, "batch_size": "full"}, train={"max_epochs": 10})
    result = train(config)
    assert result.stop_reason == "diverged"
    findings = diagnose(result)
    modes = [f.mode for f in findings]
    assert modes[:2] == ["non_convergence", "lr_too_high"] or set(modes) >= {"lr_too_high", "non_convergence"}
    _check_findings(findings, result.epochs)


def test_diagnose_of_a_one_epoch_run_is_low_confidence(make_config):
    for data in ({"name": "digits", "imbalance": 20.0}, {"name": "circles"}, {"name": "iris"}):
        result = train(make_config(data=data, train={"max_epochs": 1}))
        for finding in diagnose(result):
            assert finding.confidence <= 0.2


def test_diagnose_of_a_healthy_run_is_empty_and_leaves_the_model_alone(make_config):
    result = train(make_config(data={"name": "digits"}, train={"max_epochs": 30}))
    before = result.model.get_weights()
    assert diagnose(result) == []
    for a, b in zip(before, result.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_diagnose_uses_the_range_test_suggestion_when_given(make_config):
    config = make_config(data={"name": "digits"}, model={"l2": 0.01}, optim={"lr": 1e-4}, train={"max_epochs": 40})
    result = train(config)
    plain = {f.mode: f for f in diagnose(result)}
    guided = {f.mode: f for f in diagnose(result, lr_find=_LRFind(base_lr=0.05, max_lr=0.2))}
    assert plain["lr_too_low"].suggested_config["optim.lr"] > 0.2  # 1/λ_max
    assert guided["lr_too_low"].suggested_config == {"optim.lr": 0.2}
    assert "range test's max_lr" in guided["lr_too_low"].advice


def test_diagnose_history_agrees_with_diagnose_on_history_only_modes(make_config):
    result = train(make_config(data={"name": "iris"}, optim={"lr": 1e6, "batch_size": "full"}, train={"max_epochs": 10}))
    from_history = diagnose_history(result.history, result.config, result.dataset.summary())
    assert {f.mode for f in from_history} == {f.mode for f in diagnose(result)} == {"lr_too_high", "non_convergence"}


# ------------------------------------------------------------- the CLI

GALLERY = __import__("pathlib").Path(__file__).resolve().parent.parent / "experiments" / "failure_modes"


def _cli(args):
    from click.testing import CliRunner

    from bpexp.cli import cli

    return CliRunner().invoke(cli, ["train", *args, "--no-track"])


def test_train_json_carries_the_diagnosis(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _cli(["--spec", str(GALLERY / "lr_too_high.yaml"), "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    (finding,) = payload["diagnosis"]
    assert finding["mode"] == "lr_too_high" and finding["suggested_config"]["optim.lr"] < 9.0
    assert set(finding) == {"mode", "confidence", "epoch", "evidence", "advice", "suggested_config"}


def test_apply_advice_json_is_the_second_run_with_what_was_applied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _cli(["--spec", str(GALLERY / "lr_too_high.yaml"), "--json", "--apply-advice"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    payload = json.loads(result.stdout)
    (applied,) = payload["applied_advice"]
    assert applied["mode"] == "lr_too_high"
    assert payload["config"]["optim"]["lr"] == applied["suggested_config"]["optim.lr"]
    assert payload["config"]["name"] == "lr_too_high-advised"
    assert payload["diagnosis"] == []
    assert [f["mode"] for f in payload["first_run"]["diagnosis"]] == ["lr_too_high"]


def test_apply_advice_on_a_healthy_run_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _cli(["--dataset", "iris", "--max-epochs", "30", "--json", "--apply-advice"])
    payload = json.loads(result.stdout)
    assert payload["applied_advice"] == [] and payload["diagnosis"] == [] and "first_run" not in payload


def test_human_summary_shows_the_findings_table_and_both_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    healthy = _cli(["--dataset", "iris", "--max-epochs", "30"])
    assert "healthy" in healthy.stdout
    result = _cli(["--spec", str(GALLERY / "lr_too_high.yaml"), "--apply-advice"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "diagnosis" in out and "lr_too_high" in out and "oscillates" in out
    assert "re-running with optim.lr:" in out
    assert "before: lr_too_high" in out and "after: healthy" in out
