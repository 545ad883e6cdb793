"""Physical checks on a finished run: the model and its data are in hand, so measure them.

- :func:`top_hessian_eigenvalue`: λ_max of the objective's Hessian by Lanczos on
  Hessian-vector products. Gradient descent on a quadratic converges iff
  |1 − λ·h| < 1 along every eigenvalue h, so λ·λ_max > 2 means the optimum is
  unstable (the classical bound; Cohen et al., "Gradient descent on neural networks
  typically occurs at the edge of stability", ICLR 2021).
- :func:`polish_gain`: how far a few safe full-batch steps lower the loss from the
  final weights; a large gain means the run hovered above a minimum it did not reach.
- :func:`per_class_recall` and :func:`knn_accuracy`: what the model gets per class,
  and what a nearest-neighbour vote gets from the same features.
- :func:`shuffled_twin`: a short run of the same config with shuffled order.

Every function here is pure apart from its CPU time: nothing is read or written,
and the run's model is never modified (work happens on float64 copies).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bpexp.model import Model, Perceptron, build_model

HESSIAN_SAMPLES = 2048
"""Hessian-vector products use at most this many training samples (a fixed random subset):
λ_max of a sample mean of per-sample Hessians converges like 1/√n, so 2048 samples pin
it to a few per cent while keeping MNIST's diagnosis cheap."""
LANCZOS_STEPS = 24
"""At most this many Lanczos steps: the largest Ritz value converges geometrically in the step
count (Kaniel–Paige), so two dozen steps give λ_max to well under 1 % on these spectra."""
LANCZOS_TOL = 1e-3
"""Stop once the top Ritz pair's residual ‖H·y − θ·y‖ = β_j·|s_j| is below this × θ. Some
eigenvalue then lies within that residual of θ (Parlett, The Symmetric Eigenvalue Problem,
Thm 4.5.1), and the Ritz value's own error is of the order of residual²/gap. A test on the
change of θ between steps alone can stop on the second eigenvalue while the first has not yet
entered the Krylov space: a digits run gave λ₂ = 0.319 for λ_max = 0.366 that way."""
HVP_DTYPE = np.float32
"""The perceptron's Hessian-vector products run in float32 (the training dtype): they are
twice as fast as float64 and exact to ~1e-6 relative, three orders below LANCZOS_TOL. The
Lanczos vectors and the tridiagonal matrix stay float64."""
FD_EPSILON = 1e-4
"""Forward differences of float64 gradients: the step is this × max(1, ‖θ‖) along a unit
vector; truncation error O(ε) ≈ 1e-4 relative, round-off O(1e-16/ε), both far below LANCZOS_TOL."""


# ------------------------------------------------------------ Hessian λ_max


@dataclass
class Ritz:
    """The top Ritz pair of a Lanczos run: ``value`` never exceeds λ_max (Cauchy interlacing),
    and some eigenvalue lies within ``residual`` of it (Parlett, Thm 4.5.1)."""

    value: float
    residual: float
    steps: int

    @property
    def converged(self) -> bool:
        """The residual met :data:`LANCZOS_TOL` (or the Krylov space closed)."""
        return math.isfinite(self.value) and self.residual <= LANCZOS_TOL * abs(self.value)


def lanczos(hvp: Callable[[np.ndarray], np.ndarray], dim: int, rng: np.random.Generator,
            steps: int = LANCZOS_STEPS, tol: float = LANCZOS_TOL, start: np.ndarray | None = None,
            stop_above: float = math.inf, bound_residual: float = 0.15) -> Ritz:
    """The top Ritz pair of the symmetric operator ``hvp`` on R^dim, by Lanczos.

    Full re-orthogonalisation keeps the Krylov basis orthogonal, so no spurious copies
    of λ_max appear (Golub & Van Loan, Matrix Computations, §10.3). The run stops when the
    top Ritz pair's residual falls below ``tol`` × its value (see :data:`LANCZOS_TOL`).

    Args:
        start: an optional direction believed to lean towards the top eigenvector (e.g. the
            last gradient of a run that oscillates along it). It is mixed in equal parts with
            a random unit vector, so a start orthogonal to the top eigenvector still converges.
        stop_above: stop early once the top Ritz value reaches this and its residual is within
            ``bound_residual`` of it: Ritz values never exceed λ_max, so λ_max ≥ ``stop_above``
            is then certain, and the value is a genuine curvature to within 15 %. A caller that
            only needs to know whether λ_max passes a limit saves the remaining steps.

    Returns:
        A :class:`Ritz`; its value is NaN when a product is not finite.
    """
    steps = max(1, min(steps, dim))
    Q = np.zeros((steps, dim))
    T = np.zeros((steps, steps))  # the tridiagonal Lanczos matrix, filled as the steps go
    q = rng.standard_normal(dim)
    q /= np.linalg.norm(q)
    if start is not None:
        start = np.asarray(start, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(start)) if start.shape == (dim,) else 0.0
        if math.isfinite(norm) and norm > 0:
            q += start / norm
            q /= np.linalg.norm(q)
    top, residual = math.nan, math.inf
    for j in range(steps):
        Q[j] = q
        w = hvp(q)
        alpha = float(q @ w)
        T[j, j] = alpha
        basis = Q[: j + 1]
        w -= basis.T @ (basis @ w)  # full re-orthogonalisation against q_0..q_j
        w -= basis.T @ (basis @ w)  # twice is enough (Kahan–Parlett)
        beta = math.sqrt(float(w @ w))
        if not (math.isfinite(alpha) and math.isfinite(beta)):  # a non-finite product spreads to both
            return Ritz(math.nan, math.inf, j + 1)
        if j == 0:
            top, last = alpha, 1.0
        else:
            values, vectors = np.linalg.eigh(T[: j + 1, : j + 1])
            top, last = float(values[-1]), float(vectors[-1, -1])
        residual = beta * abs(last)  # ‖H·y − θ·y‖ for the top Ritz pair
        if beta <= 1e-12 * max(1.0, abs(top)):  # the Krylov space is invariant: θ is exact
            return Ritz(top, 0.0, j + 1)
        if residual <= tol * abs(top) or (top >= stop_above and residual <= bound_residual * abs(top)):
            return Ritz(top, residual, j + 1)
        if j + 1 < steps:
            T[j, j + 1] = T[j + 1, j] = beta
        q = w / beta
    return Ritz(top, residual, steps)


def lanczos_top(hvp: Callable[[np.ndarray], np.ndarray], dim: int, rng: np.random.Generator,
                steps: int = LANCZOS_STEPS, tol: float = LANCZOS_TOL, start: np.ndarray | None = None) -> float:
    """The largest eigenvalue of the symmetric operator ``hvp`` on R^dim (see :func:`lanczos`).

    Returns:
        The largest Ritz value (a lower bound on λ_max), or NaN when a product is not finite.
    """
    return lanczos(hvp, dim, rng, steps, tol, start).value


def _subset(n: int, limit: int, seed: int) -> np.ndarray | None:
    if n <= limit:
        return None
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=limit, replace=False))


def perceptron_hvp(A: np.ndarray, X: np.ndarray, l2: float,
                   XT: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The analytic Hessian-vector product of the softmax perceptron's objective at ``A``.

    For J = (1/n)·Σᵢ CE(softmax(A·xᵢ), yᵢ) + (λ₂/2)·‖A without its bias column‖², the Hessian
    is (1/n)·Σᵢ (diag(pᵢ) − pᵢpᵢᵀ) ⊗ xᵢxᵢᵀ + λ₂·I on the weights, so for a direction V (K, D+1):
        H·V = (1/n)·Σᵢ [pᵢ ⊙ uᵢ − pᵢ·(pᵢᵀuᵢ)]·xᵢᵀ + λ₂·V,   uᵢ = V·xᵢ.

    The products run in ``X``'s dtype when it is float32 (see :data:`HVP_DTYPE`), else in
    float64. ``XT``, when given, must be ``X``'s transpose in that dtype (see :func:`hessian_rows`).

    Returns:
        A function of a flat float64 vector (K·(D+1),) returning H·v as float64, flat.
    """
    dtype = np.float32 if np.asarray(X).dtype == np.float32 else np.float64
    A = np.asarray(A, dtype=dtype)
    X = np.ascontiguousarray(X, dtype=dtype)  # (n, D+1), rows contiguous for R·X
    XT = np.ascontiguousarray(X.T) if XT is None else XT  # (D+1, n), rows contiguous for V·Xᵀ
    K, D1 = A.shape
    # samples along the last axis, (K, n): both products then run over contiguous rows,
    # about twice as fast as the (n, K) layout on these small shapes
    z = A @ XT  # (K, n)
    z -= z.max(axis=0, keepdims=True)
    P = np.exp(z)
    P /= P.sum(axis=0, keepdims=True)  # (K, n): column i is pᵢ
    n = X.shape[0]

    def hvp(v: np.ndarray) -> np.ndarray:
        V = v.reshape(K, D1).astype(dtype, copy=False)
        R = P * (V @ XT)  # (K, n): pᵢ ⊙ uᵢ, uᵢ = V·xᵢ
        R -= P * R.sum(axis=0, keepdims=True)  # (diag(p) − ppᵀ)·u per column
        out = (R @ X) / n  # (K, D+1)
        if l2:
            out[:, :-1] += l2 * V[:, :-1]  # the L2 term skips the bias column
        return out.reshape(-1).astype(np.float64, copy=False)

    return hvp


def zero_perceptron_top(X: np.ndarray, n_classes: int, l2: float) -> float:
    """λ_max of the perceptron's Hessian at A = 0, in closed form.

    At A = 0 every pᵢ is uniform, so diag(p) − ppᵀ = (I − 11ᵀ/K)/K for every sample and
    H = (I − 11ᵀ/K)/K ⊗ XᵀX/n + λ₂·(I ⊗ diag(1, …, 1, 0)), whose top eigenvalue lies in
    [λ_max(XᵀX/n)/K, λ_max(XᵀX/n)/K + λ₂]; the upper end is returned. It costs one
    (D+1)×(D+1) eigenvalue problem instead of a Lanczos run.
    """
    X = np.asarray(X, dtype=np.float64)
    gram = X.T @ X / len(X)  # (D+1, D+1)
    return float(np.linalg.eigvalsh(gram)[-1] / n_classes + l2)


_ROWS: dict[tuple, tuple[weakref.ref, tuple[np.ndarray, np.ndarray], dict]] = {}
"""Per training array: its float64 Hessian sample, that sample transposed, and values derived
from them. Every run of a sweep trains on the same (immutable) split, so the copies and
λ_max(XᵀX/n) are made once. Keyed by the array's identity (held weakly, so a freed array's
entry is dropped) and the subset drawn from it; only the most recent :data:`ROWS_CACHED`
entries are kept, since an MNIST sample is 2048 × 785 × 8 B × 2 ≈ 26 MB and every seed draws
its own subset."""
ROWS_CACHED = 4


def hessian_rows(X: np.ndarray, limit: int = HESSIAN_SAMPLES, seed: int = 0,
                 dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian sample of ``X`` (at most ``limit`` rows, drawn by ``seed``) as ``dtype``, and its transpose.

    Both are C-contiguous and cached per array: dataset splits are never written after
    loading, so the identity of ``X`` (checked alive through a weak reference) and its
    shape pin its contents. The subset is the one :func:`top_hessian_eigenvalue` draws.
    Treat the returned arrays as read-only.

    Returns:
        ``(Xs (m, D+1), Xsᵀ (D+1, m))`` with m = min(len(X), limit).
    """
    return _rows_entry(X, limit, seed, dtype)[0]


def _rows_entry(X: np.ndarray, limit: int, seed: int,
                dtype: type = np.float64) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    subset_seed = seed if len(X) > limit else None  # seed only matters when a subset is drawn
    key = (id(X), X.shape, X.dtype.str, limit, subset_seed, np.dtype(dtype).str)
    hit = _ROWS.pop(key, None)
    if hit is not None and hit[0]() is X:
        _ROWS[key] = hit  # most recently used goes last
        return hit[1], hit[2]
    idx = _subset(len(X), limit, seed)
    Xs = np.ascontiguousarray(X if idx is None else X[idx], dtype=dtype)
    rows = (Xs, np.ascontiguousarray(Xs.T))
    derived: dict = {}
    try:
        ref = weakref.ref(X, lambda _, key=key, cache=_ROWS: cache.pop(key, None))  # bound now: safe at exit
    except TypeError:  # a view or buffer that takes no weak reference: nothing to cache on
        return rows, derived
    _ROWS[key] = (ref, rows, derived)
    while len(_ROWS) > ROWS_CACHED:
        _ROWS.pop(next(iter(_ROWS)), None)  # the least recently used
    return rows, derived


def gram_top(X: np.ndarray, limit: int = HESSIAN_SAMPLES, seed: int = 0) -> float:
    """λ_max(XᵀX/n) of the Hessian sample of ``X`` (see :func:`hessian_rows`), cached per array.

    Returns:
        The largest eigenvalue of the sample's Gram matrix over its row count (a dense eigvalsh).
    """
    (Xs, _), derived = _rows_entry(X, limit, seed)
    if "gram_top" not in derived:
        derived["gram_top"] = float(np.linalg.eigvalsh(Xs.T @ Xs / len(Xs))[-1])
    return derived["gram_top"]


def finite_difference_hvp(model: Model, X: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """H·v ≈ (∇J(θ + εv) − ∇J(θ)) / ε on ``model`` (a float64 model, dropout off).

    One gradient per product (∇J(θ) is computed once): the forward difference's error is
    O(ε·‖∇³J‖), about 1e-4 relative at ε = 1e-4·‖θ‖, well below LANCZOS_TOL; the central
    difference's O(ε²) would cost a second gradient per product. ``model``'s weights are
    restored after every product.

    Returns:
        A function of a flat float64 vector (all parameters) returning H·v, flat.
    """
    theta = [p.copy() for p in model.params]
    shapes = [p.shape for p in theta]
    sizes = [p.size for p in theta]
    scale = max(1.0, math.sqrt(sum(float(np.vdot(p, p)) for p in theta)))

    def grad_at(flat: np.ndarray) -> np.ndarray:
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        model.set_weights([part.reshape(shape) for part, shape in zip(parts, shapes)])
        model.loss_and_grad(X, y, None)
        return np.concatenate([g.reshape(-1) for g in model.grads]).astype(np.float64)

    base = np.concatenate([p.reshape(-1) for p in theta])
    with np.errstate(all="ignore"):
        g0 = grad_at(base)

    def hvp(v: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(v)) or 1.0
        eps = FD_EPSILON * scale / norm
        with np.errstate(all="ignore"):
            out = (grad_at(base + eps * v) - g0) / eps
        model.set_weights(theta)
        return out

    return hvp


def float64_copy(model: Model, config, n_features: int, n_classes: int, seed: int) -> Model:
    """A float64 model with ``model``'s weights (dropout kept in its config but never drawn)."""
    cfg = config.model.model_copy(update={"dtype": "float64"})
    twin = build_model(cfg, n_features, n_classes, seed)
    twin.set_weights([np.asarray(p, dtype=np.float64) for p in model.params])
    return twin


def top_hessian_eigenvalue(model: Model, config, X: np.ndarray, y: np.ndarray, seed: int,
                           limit: int = HESSIAN_SAMPLES) -> float:
    """λ_max of the Hessian of the training objective (cross-entropy + L2) at ``model``'s weights.

    Exact products for the perceptron, float64 finite differences for an MLP, on at
    most ``limit`` training samples.

    Returns:
        λ_max, or NaN when the weights are not finite.
    """
    return hessian_top(model, config, X, y, seed, limit).value


def hessian_top(model: Model, config, X: np.ndarray, y: np.ndarray, seed: int,
                limit: int = HESSIAN_SAMPLES, stop_above: float = math.inf) -> Ritz:
    """The top Ritz pair of the training objective's Hessian at ``model``'s weights.

    As :func:`top_hessian_eigenvalue`; ``stop_above`` ends the run once λ_max ≥ it is
    certain (see :func:`lanczos`), leaving a lower bound instead of the converged value.

    Returns:
        A :class:`Ritz` (value NaN when the weights are not finite).
    """
    if not all(np.all(np.isfinite(p)) for p in model.params):
        return Ritz(math.nan, math.inf, 0)
    if isinstance(model, Perceptron) and not np.any(model.A):
        # the closed form of zero_perceptron_top, with λ_max(XᵀX/n) shared by every run on X
        return Ritz(gram_top(X, limit, seed) / model.n_classes + model.l2, 0.0, 0)
    rng = np.random.default_rng([seed, 8])
    if isinstance(model, Perceptron):
        Xs, XsT = hessian_rows(X, limit, seed, HVP_DTYPE)  # the same subset, copies shared by every run on X
        return lanczos(perceptron_hvp(model.A, Xs, model.l2, XT=XsT), model.A.size, rng, start=_last_step(model),
                       stop_above=stop_above)
    idx = _subset(len(y), limit, seed)
    Xs = X if idx is None else X[idx]
    ys = y if idx is None else y[idx]
    n_features = X.shape[1] - 1
    twin = float64_copy(model, config, n_features, model.n_classes, seed)
    dim = sum(p.size for p in twin.params)
    with np.errstate(all="ignore"):
        return lanczos(finite_difference_hvp(twin, np.asarray(Xs, dtype=np.float64), ys), dim, rng,
                       stop_above=stop_above)


def _last_step(model: Model) -> np.ndarray | None:
    """The model's last gradient, flat: a Lanczos start that leans towards the top eigenvector.

    A run that oscillates past the stability limit oscillates along the unstable directions,
    so the gradient of its last step is dominated by them (on the digits oscillation cases,
    |cos(g, u_max)| = 0.1–0.8 against 1/√dim ≈ 0.04 for a random vector). After an early-stop
    restore the gradient belongs to a later epoch; it remains a valid start, only a less
    pointed one.
    """
    grads = getattr(model, "grads", None)
    if not grads:
        return None
    return np.concatenate([np.asarray(g, dtype=np.float64).reshape(-1) for g in grads])


def stability_limit(config) -> float | None:
    """The largest λ·λ_max at which the optimiser is stable on a quadratic, or None for Adam.

    SGD: 2 (|1 − λh| < 1). Heavy-ball momentum μ: 2(1 + μ) (Polyak 1964; Goh, "Why
    momentum really works", Distill 2017). Nesterov: 2(1 + μ)/(1 + 2μ) (the same
    analysis of its characteristic polynomial). Adam rescales every coordinate, so λ·h
    says nothing about it.
    """
    name = config.optim.name
    mu = config.optim.momentum
    if name == "sgd":
        return 2.0
    if name == "momentum":
        return 2.0 * (1.0 + mu)
    if name == "nesterov":
        return 2.0 * (1.0 + mu) / (1.0 + 2.0 * mu)
    return None


def step_multiplier(config) -> float:
    """How much further than λ·g one step moves in the slow, gradient-following regime:
    1/(1 − μ) with momentum (the geometric sum of the velocity), 1 for SGD."""
    if config.optim.name in ("momentum", "nesterov"):
        return 1.0 / (1.0 - config.optim.momentum)
    return 1.0


# ------------------------------------------------------------------- polish


@dataclass
class Polish:
    """Full-batch gradient steps of size 1/λ_max from the final weights.

    ``before`` and ``after`` are training cross-entropies, ``gain`` = (before − after)/after.
    """

    before: float
    after: float
    steps: int

    @property
    def gain(self) -> float:
        if not (math.isfinite(self.before) and math.isfinite(self.after)) or self.after <= 0:
            return math.nan
        return (self.before - self.after) / self.after


POLISH_STEPS = 10
"""Safe steps from the final weights: enough to remove most of the noise a minibatch run
leaves in the stiff directions (each shrinks by (1 − h/λ_max)^10), and no more than ten
full-batch gradients, a few per cent of any minibatch run that reaches this check."""


POLISH_ENOUGH = 0.3
"""Polishing stops early once the loss has fallen this much (relative): every detector's
question (gain ≥ POLISH_GAIN = 0.10 in bpexp.diagnose.detectors) is settled by then, and the
loss only falls further under safe steps; what the steps after it would add is confidence,
which flat_minimum caps near this gain."""


def polish(model: Model, config, X: np.ndarray, y: np.ndarray, h_max: float, seed: int,
           steps: int = POLISH_STEPS, limit: int = HESSIAN_SAMPLES, enough: float = POLISH_ENOUGH) -> Polish:
    """Descend from the final weights with full-batch gradient steps of size 1/λ_max.

    Step 1/L never raises a function whose gradient is L-Lipschitz (the descent
    lemma; Nesterov, Introductory Lectures on Convex Optimization, §1.2.3), so any
    fall in the loss is a minimum the run hovered above. At most ``steps`` steps; fewer
    once the gain reaches ``enough``.

    Returns:
        A :class:`Polish` with the training loss before and after (NaN if not finite)
        and the steps taken.
    """
    if not math.isfinite(h_max) or h_max <= 0:
        return Polish(math.nan, math.nan, 0)
    idx = _subset(len(y), limit, seed)
    Xs = np.asarray(X if idx is None else X[idx], dtype=np.float64)
    ys = y if idx is None else y[idx]
    twin = float64_copy(model, config, X.shape[1] - 1, model.n_classes, seed)
    eta = 1.0 / h_max
    taken = 0
    with np.errstate(all="ignore"):
        before = float(twin.evaluate(Xs, ys)[0])
        for _ in range(steps):
            # the cross-entropy at the weights about to be stepped from (dropout off, as evaluate)
            current = float(twin.loss_and_grad(Xs, ys, None))
            if taken and current > 0 and (before - current) / current >= enough:
                return Polish(before, current, taken)
            for p, g in zip(twin.params, twin.grads):
                p -= eta * g
            taken += 1
        after = twin.evaluate(Xs, ys)[0]
    return Polish(before, float(after), taken)


# --------------------------------------------------------- data-side checks


def per_class_recall(model: Model, X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall of every class on (X, y), and the share of predictions each class receives.

    Returns:
        ``(recall (K,), predicted_share (K,))``; recall is NaN for a class absent from y.
    """
    with np.errstate(all="ignore"):
        pred = model.predict(X)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    hits = np.bincount(y[pred == y], minlength=n_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    share = np.bincount(pred, minlength=n_classes)[:n_classes] / max(len(pred), 1)
    return recall, share


KNN_K = 5
KNN_TRAIN = 1000
"""At most this many reference samples: fewer references only weaken the vote, so the
underfitting check stays conservative, and MNIST's reference costs ~1 % of its training."""
KNN_VAL = 300
"""At most this many validation samples: ±3 points of binomial standard error."""


def knn_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                 seed: int, k: int = KNN_K) -> float:
    """Validation accuracy of a k-nearest-neighbour vote on the same standardised features.

    A reference for what the features allow without any fitting: where it beats the
    model by a wide margin, the model is too simple for the data (Cover & Hart 1967:
    the 1-NN error is at most twice the Bayes error). At most :data:`KNN_TRAIN` training and
    :data:`KNN_VAL` validation samples are used.

    Returns:
        The accuracy in [0, 1].
    """
    rng = np.random.default_rng([seed, 9])
    if len(y_train) > KNN_TRAIN:
        keep = rng.choice(len(y_train), KNN_TRAIN, replace=False)
        X_train, y_train = X_train[keep], y_train[keep]
    if len(y_val) > KNN_VAL:
        keep = rng.choice(len(y_val), KNN_VAL, replace=False)
        X_val, y_val = X_val[keep], y_val[keep]
    A = np.asarray(X_train[:, :-1], dtype=np.float32)  # drop the constant-1 column
    B = np.asarray(X_val[:, :-1], dtype=np.float32)
    k = max(1, min(k, len(y_train)))
    d2 = (A * A).sum(1)[None, :] - 2.0 * (B @ A.T)  # (n_val, n_train); ‖b‖² is the same along a row
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (n_val, k), unordered
    votes = y_train[nearest]
    m = len(y_val)
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    tally = np.bincount((np.arange(m)[:, None] * n_classes + votes).ravel(), minlength=m * n_classes)
    tally = tally.reshape(m, n_classes).astype(np.float64)
    # ties go to the class of the single nearest neighbour
    closest = votes[np.arange(m), np.argmin(np.take_along_axis(d2, nearest, axis=1), axis=1)]
    tally[np.arange(m), closest] += 0.5
    return float(np.mean(tally.argmax(axis=1) == y_val))


# -------------------------------------------------------------------- twin


@dataclass
class Twin:
    """A short shuffled run beside the original: losses at the same epoch, and its cost."""

    epoch: int
    run_loss: float
    twin_loss: float
    seconds: float


def shuffled_twin(result, epochs: int) -> Twin:
    """Train the same config for ``epochs`` epochs with ``data.order: shuffled``, on the same data.

    Returns:
        A :class:`Twin` comparing the training losses after ``epochs`` epochs.
    """
    from bpexp.train import train

    config = result.config
    epochs = max(1, min(epochs, len(result.history)))
    twin_config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"order": "shuffled"}),
            "train": config.train.model_copy(update={"max_epochs": epochs, "stop_loss": None, "patience": None}),
        }
    )
    started = time.perf_counter()
    twin = train(twin_config, result.dataset)
    seconds = time.perf_counter() - started
    run_loss = float(result.history.train_loss[epochs - 1])
    twin_loss = float(twin.history.train_loss[-1]) if len(twin.history) else math.nan
    return Twin(epochs, run_loss, twin_loss, seconds)


def initial_model(config, n_features: int, n_classes: int) -> Model:
    """The model exactly as the run started (the init is seeded by the config)."""
    return build_model(config.model, n_features, n_classes, config.seed)


__all__ = [
    "Ritz",
    "lanczos",
    "lanczos_top",
    "hessian_top",
    "perceptron_hvp",
    "finite_difference_hvp",
    "top_hessian_eigenvalue",
    "zero_perceptron_top",
    "gram_top",
    "hessian_rows",
    "stability_limit",
    "step_multiplier",
    "Polish",
    "polish",
    "per_class_recall",
    "knn_accuracy",
    "Twin",
    "shuffled_twin",
    "initial_model",
]


# ------------------------------------------------------------ lazy access


class RunPhysics:
    """The physical checks of one finished run, each computed on first use and kept.

    ``seconds`` (wall) and ``cpu_seconds`` (CPU time of the calling thread, where each check
    runs; BLAS worker threads are not counted) record what each check cost, so a diagnosis can
    report its own price.
    """

    def __init__(self, result, *, twin: bool = True) -> None:
        self.result = result
        self.config = result.config
        self.model = result.model
        self.dataset = result.dataset
        self.allow_twin = twin
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._cache: dict[str, object] = {}

    def _timed(self, name: str, compute):
        if name not in self._cache:
            started, cpu = time.perf_counter(), time.thread_time()
            self._cache[name] = compute()
            self.seconds[name] = time.perf_counter() - started
            self.cpu_seconds[name] = time.thread_time() - cpu
        return self._cache[name]

    @property
    def h_end(self) -> float:
        """λ_max of the Hessian at the final weights (converged Lanczos)."""
        bound = self._cache.get("h_end_bound")
        if isinstance(bound, Ritz) and bound.converged:
            return bound.value
        train = self.dataset.train
        return self._timed("h_end", lambda: top_hessian_eigenvalue(self.model, self.config, train.X, train.y, self.config.seed))

    def h_end_reaching(self, threshold: float) -> Ritz:
        """λ_max at the final weights, or a lower bound on it once that bound reaches ``threshold``.

        Enough to decide whether λ·λ_max passes a stability limit, at a fraction of the
        Lanczos steps when it clearly does; below the threshold the value is converged.
        A converged ``h_end`` already computed is reused.

        Returns:
            A :class:`Ritz` (``converged`` False when it stopped on the bound).
        """
        if "h_end" in self._cache:
            return Ritz(self._cache["h_end"], 0.0, 0)
        train = self.dataset.train
        return self._timed("h_end_bound", lambda: hessian_top(self.model, self.config, train.X, train.y,
                                                             self.config.seed, stop_above=threshold))

    @property
    def h_init(self) -> float:
        """λ_max of the Hessian at the initial weights (rebuilt from the seeded config)."""
        train = self.dataset.train
        cfg = self.config.model

        def compute() -> float:
            if cfg.kind == "perceptron" and cfg.init == "zeros":
                # A = 0 by construction: top_hessian_eigenvalue's closed form, without building the model
                return gram_top(train.X, HESSIAN_SAMPLES, self.config.seed) / self.dataset.n_classes + cfg.l2
            model = initial_model(self.config, self.dataset.n_features, self.dataset.n_classes)
            return top_hessian_eigenvalue(model, self.config, train.X, train.y, self.config.seed)

        return self._timed("h_init", compute)

    @property
    def recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class recall on the validation split and each class's share of the predictions."""
        val = self.dataset.val
        return self._timed("recall", lambda: per_class_recall(self.model, val.X, val.y, self.dataset.n_classes))

    @property
    def knn(self) -> float:
        """Validation accuracy of a 5-nearest-neighbour vote on the training split."""
        tr, va = self.dataset.train, self.dataset.val
        return self._timed("knn", lambda: knn_accuracy(tr.X, tr.y, va.X, va.y, self.config.seed))

    def polish(self, h_max: float) -> Polish:
        """:func:`polish` from the final weights with step 1/h_max."""
        train = self.dataset.train
        return self._timed("polish", lambda: polish(self.model, self.config, train.X, train.y, h_max, self.config.seed))

    def twin(self, epochs: int) -> Twin | None:
        """:func:`shuffled_twin`, or None when twin runs are switched off."""
        if not self.allow_twin:
            return None
        return self._timed("twin", lambda: shuffled_twin(self.result, epochs))
