"""Tests of bpexp.model: analytic gradients against central finite differences.

Every check runs at float64. Shapes come from hypothesis; values are drawn from a
numpy generator seeded by hypothesis, so they are continuous (no ReLU input sits
exactly on its kink, which finite differences cannot handle) yet reproducible.

The relative error of one parameter array is ‖g_num − g_ana‖ / (‖g_num‖ + ‖g_ana‖)
(cs231n's convention); it must stay below 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bpexp.config import ModelConfig
from bpexp.model import MLP, Perceptron, build_model, log_softmax_loss, softmax_grad_

REL = 1e-6  # the bound on the relative error of analytic gradients
H = 1e-6  # central-difference step: truncation ~H², rounding ~1e-16/H, both far below REL

seeds = st.integers(0, 2**32 - 1)
batch = st.integers(1, 6)
features = st.integers(1, 5)
classes = st.integers(2, 4)
widths = st.integers(1, 6)
l2s = st.sampled_from([0.0, 1e-3, 0.3])
FD = settings(max_examples=25, deadline=None)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denom) if denom > 0 else 0.0


def make_batch(rng: np.random.Generator, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d+1) with the constant-1 column last, labels in [0, k)."""
    X = np.ones((n, d + 1))
    X[:, :-1] = rng.standard_normal((n, d))
    return X, rng.integers(0, k, size=n)


def randomise(model, rng: np.random.Generator, scale: float = 0.7) -> None:
    """Random values everywhere, biases included, so no unit sits on a ReLU kink."""
    model.set_weights([rng.standard_normal(p.shape) * scale for p in model.params])


def objective(model, X, y, dropout_seed: int | None) -> float:
    """J = mean CE + (λ₂/2)‖W‖², with a freshly seeded rng so the dropout mask is the same every time."""
    rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
    return model.loss_and_grad(X, y, rng) + model.l2_penalty()


# A central difference in float64 carries a rounding error of about eps·|J|/H ≈ 1e-10 per
# entry (the objective's terms are O(1) even where the gradient is tiny), so it can judge a
# gradient array to 1e-6 relative only where its norm is ≳ 1e-10/1e-6 = 1e-4. Smaller ones
# (a saturated softmax, a unit whose outgoing weights are near 0) are beyond this oracle;
# test_log_softmax_cross_entropy_gradient covers saturation with a long-double reference.
RESOLVABLE = 1e-4


def check_gradients(model, X, y, dropout_seed: int | None = None) -> None:
    objective(model, X, y, dropout_seed)
    analytic = [g.copy() for g in model.grads]
    judged = 0
    for name, p, g in zip(model.param_names, model.params, analytic):
        if np.linalg.norm(g) < RESOLVABLE:
            continue
        judged += 1
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + H
            up = objective(model, X, y, dropout_seed)
            p[idx] = old - H
            down = objective(model, X, y, dropout_seed)
            p[idx] = old
            numeric[idx] = (up - down) / (2 * H)
        err = rel_error(numeric, g)
        assert err < REL, f"{name}: relative error {err:.2e} (analytic {g.ravel()[:4]}, numeric {numeric.ravel()[:4]})"
    assume(judged == len(analytic))  # let hypothesis look for cases where every array is judged


# ------------------------------------------------------------- the loss itself


def _reference_loss(z: np.ndarray, y: np.ndarray) -> np.longdouble:
    """Mean −log softmax(z)_y written out independently, in extended precision.

    Near saturation the loss is tiny (1e-5) while its terms are O(1), so a float64
    difference quotient loses ~1e-16/H of absolute precision: more than 1e-6 of a
    gradient that small. x86's 80-bit long double (eps ≈ 1e-19) leaves room.
    """
    z = z.astype(np.longdouble)
    rows = np.arange(len(y))
    # −log softmax(z)_y = log(1 + Σ_{k≠y} e^{z_k − z_y}): differences of nearby logits are
    # exact, and log1p keeps a loss near 0 to full precision, whatever the shift of z
    d = np.exp(z - z[rows, y][:, None])
    d[rows, y] = 0
    return np.mean(np.log1p(d.sum(axis=1)))


@FD
@given(seed=seeds, n=batch, k=classes, shift=st.sampled_from([0.0, 50.0, -700.0]))
def test_log_softmax_cross_entropy_gradient(seed, n, k, shift):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 3 + shift  # a large shift tests the log-sum-exp
    y = rng.integers(0, k, size=n)
    buf = np.empty_like(z)

    value = log_softmax_loss(z, y, buf)
    analytic = softmax_grad_(buf.copy(), y)
    numeric = np.zeros_like(z)
    zl = z.astype(np.longdouble)
    for idx in np.ndindex(z.shape):
        zp, zm = zl.copy(), zl.copy()
        zp[idx] += H
        zm[idx] -= H
        numeric[idx] = (_reference_loss(zp, y) - _reference_loss(zm, y)) / (2 * H)
    assert rel_error(numeric, analytic) < REL
    # the value itself: −log softmax(z)_y, computed the plain way on the centred logits
    c = z - z.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(c).sum(axis=1)) - c[np.arange(n), y])
    assert value == pytest.approx(expected, rel=1e-12)


def test_log_softmax_is_stable_and_leaves_logits_alone():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]])
    z0 = z.copy()
    probs = np.empty_like(z)
    loss = log_softmax_loss(z, np.array([2, 1]), probs)
    assert np.isfinite(loss)
    assert loss == pytest.approx((2000.0 + np.log(3.0)) / 2)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


# ------------------------------------------------------------------ perceptron


@FD
@given(seed=seeds, n=batch, d=features, k=classes, l2=l2s)
def test_perceptron_gradient(seed, n, d, k, l2):
    rng = np.random.default_rng(seed)
    model = Perceptron(d, k, l2=l2, dtype="float64")
    randomise(model, rng)
    X, y = make_batch(rng, n, d, k)
    check_gradients(model, X, y)


@settings(max_examples=20, deadline=None)
@given(seed=seeds, n=batch, d=features, k=classes)
def test_perceptron_l2_never_touches_the_bias_column(seed, n, d, k):
    rng = np.random.default_rng(seed)
    X, y = make_batch(rng, n, d, k)
    weights = [rng.standard_normal((k, d + 1))]
    plain = Perceptron(d, k, l2=0.0, dtype="float64")
    decayed = Perceptron(d, k, l2=0.5, dtype="float64")
    for m in (plain, decayed):
        m.set_weights(weights)
        m.loss_and_grad(X, y)
    A = weights[0]
    np.testing.assert_array_equal(decayed.dA[:, -1], plain.dA[:, -1])
    np.testing.assert_allclose(decayed.dA[:, :-1] - plain.dA[:, :-1], 0.5 * A[:, :-1], rtol=1e-12, atol=1e-14)
    assert decayed.l2_penalty() == pytest.approx(0.25 * np.sum(A[:, :-1] ** 2), rel=1e-12)
    # moving the bias column leaves the penalty alone
    before = decayed.l2_penalty()
    decayed.A[:, -1] += 10.0
    assert decayed.l2_penalty() == before


def test_perceptron_is_the_articles_softmax_of_A_x(rng):
    model = Perceptron(3, 4, init="small_random", init_scale=0.5, dtype="float64", rng=rng)
    assert model.A.shape == (4, 4)
    assert np.all(model.A[:, -1] == 0)  # the bias starts at zero
    X, _ = make_batch(rng, 5, 3, 4)
    np.testing.assert_allclose(model.logits(X), X @ model.A.T, rtol=1e-12)


# ------------------------------------------------------------------------- MLP


@FD
@given(seed=seeds, n=batch, d=features, k=classes, h1=widths, l2=l2s)
def test_mlp_one_hidden_layer_gradient(seed, n, d, k, h1, l2):
    rng = np.random.default_rng(seed)
    model = MLP(d, [h1], k, l2=l2, dtype="float64", rng=rng)
    randomise(model, rng)
    X, y = make_batch(rng, n, d, k)
    check_gradients(model, X, y)


@FD
@given(seed=seeds, n=batch, d=features, k=classes, h1=widths, h2=widths, l2=l2s)
def test_mlp_two_hidden_layers_gradient(seed, n, d, k, h1, h2, l2):
    rng = np.random.default_rng(seed)
    model = MLP(d, [h1, h2], k, l2=l2, dtype="float64", rng=rng)
    randomise(model, rng)
    X, y = make_batch(rng, n, d, k)
    check_gradients(model, X, y)


@FD
@given(
    seed=seeds,
    n=batch,
    d=features,
    k=classes,
    hidden=st.lists(st.integers(2, 6), min_size=1, max_size=2),
    p=st.sampled_from([0.2, 0.5]),
    l2=l2s,
)
def test_mlp_dropout_gradient_with_a_fixed_mask(seed, n, d, k, hidden, p, l2):
    rng = np.random.default_rng(seed)
    model = MLP(d, hidden, k, dropout=p, l2=l2, dtype="float64", rng=rng)
    randomise(model, rng)
    X, y = make_batch(rng, n, d, k)
    check_gradients(model, X, y, dropout_seed=seed + 1)


def test_dropout_draws_from_the_given_rng_and_is_off_without_it(rng):
    model = MLP(6, [32], 3, dropout=0.5, dtype="float64", rng=rng)
    randomise(model, rng)
    X, y = make_batch(rng, 8, 6, 3)
    clean = model.loss_and_grad(X, y, None)
    assert clean == pytest.approx(model.evaluate(X, y)[0], rel=1e-12)
    a = model.loss_and_grad(X, y, np.random.default_rng(1))
    b = model.loss_and_grad(X, y, np.random.default_rng(1))
    c = model.loss_and_grad(X, y, np.random.default_rng(2))
    assert a == b
    assert a != clean and a != c


def test_mlp_l2_spares_every_bias(rng):
    d, k = 4, 3
    X, y = make_batch(rng, 5, d, k)
    plain = MLP(d, [5, 4], k, l2=0.0, dtype="float64", rng=np.random.default_rng(0))
    decayed = MLP(d, [5, 4], k, l2=0.7, dtype="float64", rng=np.random.default_rng(0))
    randomise(plain, np.random.default_rng(1))
    randomise(decayed, np.random.default_rng(1))
    plain.loss_and_grad(X, y)
    decayed.loss_and_grad(X, y)
    for name, p, g_plain, g_decayed in zip(decayed.param_names, decayed.params, plain.grads, decayed.grads):
        diff = g_decayed - g_plain
        if name == "W0":
            np.testing.assert_array_equal(diff[-1], 0.0)  # the bias row of the first layer
            np.testing.assert_allclose(diff[:-1], 0.7 * p[:-1], rtol=1e-10, atol=1e-13)
        elif name.startswith("b"):
            np.testing.assert_array_equal(diff, 0.0)
        else:
            np.testing.assert_allclose(diff, 0.7 * p, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["perceptron", "mlp"])
def test_training_step_keeps_the_dtype(kind, dtype, rng):
    cfg = ModelConfig(kind=kind, hidden=[7], dropout=0.3 if kind == "mlp" else 0.0, l2=1e-3, dtype=dtype)
    model = build_model(cfg, 4, 3, seed=0)
    X, y = make_batch(rng, 9, 4, 3)
    X = X.astype(dtype)
    loss = model.loss_and_grad(X, y, np.random.default_rng(0))
    assert np.isfinite(loss)
    assert all(p.dtype == np.dtype(dtype) for p in model.params)
    assert all(g.dtype == np.dtype(dtype) for g in model.grads)


def test_build_model_is_seeded():
    cfg = ModelConfig(kind="mlp", hidden=[8, 4])
    a = build_model(cfg, 5, 3, seed=1)
    b = build_model(cfg, 5, 3, seed=1)
    c = build_model(cfg, 5, 3, seed=2)
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p, q)
    assert any(not np.array_equal(p, q) for p, q in zip(a.params, c.params))
    assert np.all(a.W[0][-1] == 0)  # the first layer's bias row starts at zero


def test_weights_round_trip_and_shape_errors(rng):
    model = MLP(3, [4], 2, dtype="float64", rng=rng)
    saved = model.get_weights()
    for p in model.params:
        p += 1.0
    model.set_weights(saved)
    for p, w in zip(model.params, saved):
        np.testing.assert_array_equal(p, w)
    with pytest.raises(ValueError, match="expected 3 arrays"):
        model.set_weights(saved[:1])
    with pytest.raises(ValueError, match="shape"):
        model.set_weights([np.zeros((1, 1))] * len(saved))


def test_evaluate_reports_nan_loss_for_non_finite_weights(rng):
    model = Perceptron(3, 2, dtype="float64")
    model.A[...] = np.inf
    X, y = make_batch(rng, 4, 3, 2)
    with np.errstate(invalid="ignore"):
        loss, acc = model.evaluate(X, y)
    assert np.isnan(loss)
    assert 0.0 <= acc <= 1.0


@pytest.mark.parametrize("kind", ["perceptron", "mlp"])
def test_evaluate_in_chunks_equals_one_pass(kind, rng):
    model = build_model(ModelConfig(kind=kind, hidden=[6], init="small_random", init_scale=0.5, dtype="float64"), 4, 3, seed=0)
    randomise(model, rng)
    X, y = make_batch(rng, 23, 4, 3)
    loss, acc = model.evaluate(X, y)
    chunked_loss, chunked_acc = model.evaluate(X, y, chunk=5)
    assert chunked_loss == pytest.approx(loss, rel=1e-12)
    assert chunked_acc == acc
    logits = X @ model.A.T if kind == "perceptron" else None
    if logits is not None:
        np.testing.assert_array_equal(model.predict(X), logits.argmax(axis=1))
    assert acc == np.mean(model.predict(X) == y)
    assert model.objective(X, y) == pytest.approx(loss + model.l2_penalty(), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=seeds,
    n=st.integers(1, 40),
    k=classes,
    values=st.sampled_from(["continuous", "ties", "non_finite"]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_evaluate_accuracy_is_argmax_accuracy_even_with_ties_and_non_finite_logits(seed, n, k, values, dtype):
    # evaluate counts a row right when z_y is its max and no other entry is; ties, NaN and
    # infinities must give exactly what argmax (first maximum) gives
    rng = np.random.default_rng(seed)
    model = Perceptron(k, k, dtype=dtype)  # A = [I | 0], so the logits are the inputs themselves
    model.A[:, :k] = np.eye(k)
    if values == "ties":
        z = rng.integers(-1, 2, size=(n, k)).astype(dtype)
    else:
        z = rng.standard_normal((n, k)).astype(dtype)
    if values == "non_finite":
        z.flat[rng.integers(0, z.size, size=max(1, z.size // 4))] = rng.choice([np.nan, np.inf, -np.inf], size=max(1, z.size // 4))
    X = np.hstack([z, np.ones((n, 1), dtype=dtype)])
    y = rng.integers(0, k, size=n)
    with np.errstate(invalid="ignore", over="ignore"):
        loss, acc = model.evaluate(X, y)
        logits = model.logits(X).copy()
    assert acc == np.count_nonzero(logits.argmax(axis=1) == y) / n
    if values != "non_finite":
        assert np.isfinite(loss)


def test_mlp_evaluate_with_tied_logits_counts_the_first_class(rng):
    # a zero output layer ties every logit: argmax picks class 0, the loss is log K
    model = MLP(4, [5], 3, dtype="float64", rng=rng)
    model.W[1][...] = 0.0
    model.b[1][...] = 0.0
    X, y = make_batch(rng, 30, 4, 3)
    loss, acc = model.evaluate(X, y)
    assert acc == np.mean(y == 0)
    assert loss == pytest.approx(np.log(3), rel=1e-12)
    model.b[1][...] = [0.0, 2.0, 2.0]  # the bias alone breaks the tie towards class 1
    _, acc = model.evaluate(X, y)
    assert acc == np.mean(y == 1)
