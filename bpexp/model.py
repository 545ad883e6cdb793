"""Models trained by backpropagation, written out in numpy.

- :class:`Perceptron`: the article's multi-class perceptron, ŷ = softmax(A·x), with
  the bias as the last column of A (the input carries a constant 1 last).
- :class:`MLP`: dense layers with ReLU and optional (inverted) dropout, ending in a
  softmax; the article's TensorFlow example is 784-128 ReLU, dropout 0.2, 10-way.

Both minimise the objective  J = (1/n)·Σᵢ CE(ŷᵢ, yᵢ) + (λ₂/2)·‖W‖²  where the
cross-entropy is the article's equation 1, CE = −Σ_k y_k·log ŷ_k, and the L2 term
never touches a bias. Each layer's backward code sits beside its forward code.
Shapes: B batch, D inputs (with the constant-1 column: D+1), H hidden, K classes.

Buffers are allocated once per batch size and reused, so a training step makes
almost no allocations and never promotes float32 to float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np


def log_softmax_loss(logits: np.ndarray, y: np.ndarray, probs_out: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` (B, K) against labels ``y`` (B,), via log-sum-exp.

    Writes softmax(logits) into ``probs_out`` (B, K) for the backward pass, and
    leaves ``logits`` untouched. Any layout of ``probs_out`` works; the models pass
    the transposed view of a C-contiguous (K, B) buffer. In that class-major layout
    the reductions over the K classes run along the outer axis, which numpy
    vectorises across the batch, whereas a max over each row of K = 10 contiguous
    values costs about 50 ns per row: 5× the whole softmax on a batch of 128.

    Returns:
        The mean loss over the batch, as a Python float.
    """
    flat, at = _label_entries(probs_out, y)
    return _softmax_loss(logits.T, probs_out.T, flat, at)


def softmax_grad_(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Turn ``probs`` (B, K) into dJ/dz = (ŷ − y_onehot)/B in place (article eq. 3) and return it."""
    flat, at = _label_entries(probs, y)
    return _softmax_grad_(probs, flat, at)


def _softmax_loss(zt: np.ndarray, pt: np.ndarray, flat: np.ndarray, at) -> float:
    # log_softmax_loss on the transposed views zt = logitsᵀ and pt = probs_outᵀ (K, B), given
    # the label entries of probs_out (a model computes them once for the loss and its gradient)
    if zt is not pt:  # the MLP's step writes its logits into pt already
        pt[...] = zt
    # log-sum-exp with the max taken out: log Σ e^{z_k} = m + log Σ e^{z_k − m}
    # (the ufuncs' reduce, not ndarray.max/sum: those add a Python wrapper, 1 µs a call)
    pt -= np.maximum.reduce(pt, axis=0)  # (K, B), each sample's max is now 0
    picked = flat[at]  # z_y − m, (B,)
    np.exp(pt, out=pt)
    sums = np.add.reduce(pt, axis=0)  # (B,) ≥ 1, so the log is safe
    pt /= sums
    np.log(sums, out=sums)
    sums -= picked  # −log ŷ_y = log Σ e^{z_k − m} − (z_y − m), per sample
    if len(sums) <= 256:
        # a training batch: math.fsum over the floats is exactly rounded and, at this size, 0.5 µs
        # cheaper than numpy's float64 reduce (beyond a few hundred, tolist costs more)
        return math.fsum(sums.tolist()) / len(sums)
    return float(np.add.reduce(sums, dtype=np.float64)) / len(sums)


def _loss_and_hits(z: np.ndarray, y: np.ndarray, pt: np.ndarray, bias: np.ndarray | None = None) -> tuple[float, int]:
    """Mean cross-entropy of logits ``z`` (B, K) (+ ``bias`` (K, 1) when given) against ``y``, and how many rows argmax gets right.

    The same log-sum-exp as :func:`log_softmax_loss` in the C-contiguous (K, B) scratch
    ``pt``, without writing the probabilities (evaluation needs none). A row's argmax is
    its first maximum; after z − m the maxima are exactly 0 (x − y = 0 iff x = y for
    finite floats, with gradual underflow), so where every column has a finite max and
    the K×B array holds exactly B zeros, a row is right iff its z_y − m is 0. Ties, NaN
    and infinities fall back to argmax (about 10 ns a row on 10 classes, 10 µs on digits).
    """
    flat, at = _class_major_entries(pt, y)
    if bias is None:
        pt[...] = z.T
    else:
        np.add(z.T, bias, out=pt)  # the same sums as z + b, written class-major
    pt -= np.maximum.reduce(pt, axis=0)  # (K, B), each column's max is now 0
    picked = flat[at]  # z_y − m, (B,)
    zeros = np.count_nonzero(pt == 0)
    np.exp(pt, out=pt)
    sums = np.add.reduce(pt, axis=0)
    np.log(sums, out=sums)
    sums -= picked
    loss = float(np.add.reduce(sums, dtype=np.float64)) / len(sums)
    # a NaN loss means some column's max was not finite (NaN, or ±inf giving inf − inf)
    if zeros == len(sums) and loss == loss:
        return loss, int(np.count_nonzero(picked == 0))
    logits = z if bias is None else z + bias.T
    return loss, int(np.count_nonzero(logits.argmax(axis=1) == y))


def _softmax_grad_(probs: np.ndarray, flat: np.ndarray, at) -> np.ndarray:
    # softmax_grad_, given the label entries of probs
    flat[at] -= 1.0
    probs *= probs.dtype.type(1.0 / probs.shape[0])
    return probs


def _label_entries(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | tuple[np.ndarray, np.ndarray]]:
    """A 1-D view of ``a`` (B, K) and the positions in it of the entries (i, y_i).

    Indexing one flat view with one index array is the cheapest gather and scatter
    numpy offers; ``a[np.arange(B), y]`` builds and broadcasts two index arrays.
    Arrays that are neither class-major nor C-contiguous get a (B, K) view instead.
    """
    if a.T.flags.c_contiguous:
        return _class_major_entries(a.T, y)
    n, k = a.shape
    rows = _ROWS[:n] if n <= len(_ROWS) else np.arange(n)
    if a.flags.c_contiguous:  # row-major: entry (i, c) sits at i·K + c
        return a.reshape(-1), rows * k + y.astype(np.intp, copy=False)
    return a, (rows, y)


def _class_major_entries(pt: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # _label_entries for a C-contiguous (K, B) buffer pt: entry (i, c) sits at c·B + i
    n = pt.shape[1]
    rows = _ROWS[:n] if n <= len(_ROWS) else np.arange(n)
    return pt.reshape(-1), y.astype(np.intp, copy=False) * n + rows  # intp: a small label dtype would overflow


_NARROW_ROWS = 384  # rows per block of a narrow evaluation product (see MLP._dense)
_INTP = np.dtype(np.intp)
_ROWS = np.arange(4096)  # row numbers for batches and evaluation chunks, shared read-only
_ROWS.flags.writeable = False


def _zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read-only zero array of ``shape``, shared per (shape, dtype).

    ``np.maximum(a, zeros, out=a)`` takes numpy's vectorised array-array loop; against
    the scalar 0 it takes a slower one, 52 µs instead of 14 µs on a (1079, 128) float32
    array here. Same result element for element, NaN included.
    """
    key = (shape, dtype)
    z = _ZEROS.get(key)
    if z is None:
        if len(_ZEROS) > 64:  # many evaluation lengths: start afresh
            _ZEROS.clear()
        z = _ZEROS[key] = np.zeros(shape, dtype)
        z.flags.writeable = False
    return z


_ZEROS: dict[tuple, np.ndarray] = {}


class Model(ABC):
    """A differentiable classifier whose parameters an optimiser updates in place.

    The training loop calls :meth:`loss_and_grad` once per step and then hands
    ``params`` and ``grads`` (parallel lists of arrays) to the optimiser.
    """

    params: list[np.ndarray]
    grads: list[np.ndarray]
    n_classes: int

    def __init__(self, l2: float, dtype: str) -> None:
        self.l2 = float(l2)
        self.dtype = np.dtype(dtype)
        self._buffers: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._workspaces: dict[int, tuple] = {}

    # --- the two passes -------------------------------------------------------

    @abstractmethod
    def logits(self, X: np.ndarray) -> np.ndarray:
        """Forward pass without dropout. Returns logits (B, K) in a reused buffer."""

    @abstractmethod
    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None) -> float:
        """Forward and backward pass on one batch, training mode (dropout on).

        Fills ``self.grads`` with dJ/dθ of the batch objective (mean cross-entropy
        plus the L2 term) and returns the batch's mean cross-entropy (without L2).
        ``rng`` draws the dropout masks; without it dropout is off.
        """

    @abstractmethod
    def decayed(self) -> list[np.ndarray]:
        """Views of the parameters that L2 applies to (every weight, no bias)."""

    # --- shared helpers ---------------------------------------------------------

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A reusable C-contiguous array of ``shape``, carved from one growing block per name.

        The view for each (name, shape) is kept, so a training step looks its buffers
        up in a dict instead of slicing and reshaping anew.
        """
        view = self._views.get((name, shape))
        if view is not None:
            return view
        size = math.prod(shape)
        block = self._buffers.get(name)
        if block is None or block.size < size:
            block = np.empty(max(size, 1), dtype=self.dtype)
            self._buffers[name] = block
            self._views = {key: v for key, v in self._views.items() if key[0] != name}
        if len(self._views) > 256:  # many batch sizes (evaluate on odd lengths): start afresh
            self._views.clear()
        view = block[:size].reshape(shape)
        self._views[(name, shape)] = view
        return view

    def _workspace(self, rows: int) -> tuple:
        """The training step's buffers for batches of ``rows`` samples, made once per batch size."""
        ws = self._workspaces.get(rows)
        if ws is None:
            if len(self._workspaces) >= 8:  # a caller cycling through batch sizes: start afresh
                self._workspaces.clear()
            ws = self._workspaces[rows] = self._make_workspace(rows)
        return ws

    def _make_workspace(self, rows: int) -> tuple:
        """New buffers for :meth:`_workspace`; each model defines what its step needs."""
        raise NotImplementedError

    def _packed(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Copies of ``arrays`` laid end to end in one contiguous block, as views of it."""
        block = np.empty(sum(a.size for a in arrays), dtype=self.dtype)
        views, start = [], 0
        for a in arrays:
            view = block[start : start + a.size].reshape(a.shape)
            view[...] = a
            views.append(view)
            start += a.size
        return views

    def evaluate(self, X: np.ndarray, y: np.ndarray, chunk: int = 4096) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on (X, y), dropout off.

        Returns:
            ``(loss, accuracy)``; the loss is NaN where the weights are no longer finite.
        """
        total, correct = 0.0, 0
        for start in range(0, len(y), chunk):
            Xc, yc = X[start : start + chunk], y[start : start + chunk]
            z, bias = self._logits_before_bias(Xc)
            pt = self._buffer("eval_probs", z.shape[::-1])  # (K, B), class-major
            with np.errstate(over="ignore", invalid="ignore"):
                loss, hits = _loss_and_hits(z, yc, pt, bias)
            total += loss * len(yc)
            correct += hits
        return total / len(y), correct / len(y)

    def _logits_before_bias(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits (B, K) less the last layer's bias, and that bias as a (K, 1) column (None: none to add).

        evaluate adds the bias while it copies the logits class-major: one pass instead of
        two, and a bias add over rows of K = 10 is slow in numpy (6 µs on digits' 1079 rows).
        """
        return self.logits(X), None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class per row of X. Returns int64 (n,)."""
        return np.concatenate([self.logits(X[s : s + 4096]).argmax(axis=1) for s in range(0, len(X), 4096)])

    def l2_penalty(self) -> float:
        """(λ₂/2)·‖W‖² over the decayed weights."""
        if self.l2 == 0.0:
            return 0.0
        return 0.5 * self.l2 * sum(float(np.vdot(w, w)) for w in self.decayed())

    def objective(self, X: np.ndarray, y: np.ndarray) -> float:
        """The full objective J on (X, y): mean cross-entropy plus the L2 term."""
        return self.evaluate(X, y)[0] + self.l2_penalty()

    def _add_l2_grad(self) -> None:
        # d/dW (λ₂/2)‖W‖² = λ₂·W, on the weights only
        if self.l2 == 0.0:
            return
        for w, g in zip(self.decayed(), self.decayed_grads()):
            g += self.dtype.type(self.l2) * w

    @abstractmethod
    def decayed_grads(self) -> list[np.ndarray]:
        """The gradient views matching :meth:`decayed`."""

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter array."""
        return [p.copy() for p in self.params]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Copy ``weights`` into the parameters in place (the optimiser keeps its references)."""
        if len(weights) != len(self.params):
            raise ValueError(f"weights: expected {len(self.params)} arrays, got {len(weights)}")
        for p, w in zip(self.params, weights):
            if p.shape != w.shape:
                raise ValueError(f"weights: expected shape {p.shape}, got {w.shape}")
            p[...] = w

    def weight_norm(self) -> float:
        """‖θ‖ over every parameter, biases included."""
        return float(np.sqrt(sum(float(np.vdot(p, p)) for p in self.params)))

    @property
    def param_names(self) -> list[str]:
        """Names of the arrays in ``params``, for saving weights."""
        return [f"p{i}" for i in range(len(self.params))]


class Perceptron(Model):
    """The article's multi-class perceptron: ŷ = softmax(A·x), A of shape (K, D+1).

    The last column of A is the bias, because x ends in a constant 1.
    """

    def __init__(
        self,
        n_inputs: int,
        n_classes: int,
        *,
        init: str = "zeros",
        init_scale: float = 0.01,
        l2: float = 0.0,
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(l2, dtype)
        self.n_classes = n_classes
        shape = (n_classes, n_inputs + 1)  # (K, D+1)
        if init == "zeros":
            A = np.zeros(shape, dtype=self.dtype)
        elif init == "small_random":
            rng = rng or np.random.default_rng(0)
            A = (rng.standard_normal(shape) * init_scale).astype(self.dtype)
            A[:, -1] = 0.0
        else:
            raise ValueError(f"init must be 'zeros' or 'small_random' for the perceptron; got {init!r}")
        self.A = A
        self.dA = np.zeros_like(A)
        self.params, self.grads = [self.A], [self.dA]

    @property
    def param_names(self) -> list[str]:
        return ["A"]

    def logits(self, X: np.ndarray) -> np.ndarray:
        out = self._buffer("z", (X.shape[0], self.n_classes))
        return np.matmul(X, self.A.T, out=out)  # (B, D+1) @ (D+1, K) -> (B, K)

    def _make_workspace(self, rows: int) -> tuple:
        # logits (B, K), and the softmax class-major (K, B): see log_softmax_loss
        return np.empty((rows, self.n_classes), self.dtype), np.empty((self.n_classes, rows), self.dtype)

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None) -> float:
        z, pt = self._workspace(X.shape[0])
        X = X.astype(self.dtype, copy=False)  # np.dot below takes out= of the exact result dtype only
        # forward: z = A·x for every row, ŷ = softmax(z)
        np.dot(X, self.A.T, out=z)  # (B, D+1) @ (D+1, K) -> (B, K)
        flat, at = _class_major_entries(pt, y)
        loss = _softmax_loss(z.T, pt, flat, at)  # log_softmax_loss(z, y, pt.T)
        # backward: dJ/dA = (ŷ − y)·xᵀ averaged over the batch (article eq. 3)
        G = _softmax_grad_(pt.T, flat, at)  # softmax_grad_(pt.T, y), (B, K)
        np.dot(G.T, X, out=self.dA)  # (K, B) @ (B, D+1) -> (K, D+1)
        self._add_l2_grad()
        return loss

    def decayed(self) -> list[np.ndarray]:
        return [self.A[:, :-1]]

    def decayed_grads(self) -> list[np.ndarray]:
        return [self.dA[:, :-1]]


class MLP(Model):
    """Dense ReLU layers, optional inverted dropout after each, then a softmax layer.

    The first layer takes x with its constant-1 column, so its bias is the last row
    of W₀ (as in the perceptron); later layers carry an explicit bias vector.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: list[int],
        n_classes: int,
        *,
        dropout: float = 0.0,
        init: str = "he",
        init_scale: float = 0.01,
        l2: float = 0.0,
        dtype: str = "float32",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(l2, dtype)
        if not hidden:
            raise ValueError("hidden must name at least one layer width; use the perceptron for none")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        rng = rng or np.random.default_rng(0)
        self.n_classes = n_classes
        self.dropout = float(dropout)
        widths = [n_inputs + 1, *hidden, n_classes]
        self.W: list[np.ndarray] = []
        self.b: list[np.ndarray | None] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            real_fan_in = fan_in - 1 if i == 0 else fan_in
            if init == "he":
                std = np.sqrt(2.0 / real_fan_in)  # He et al. 2015, for ReLU
            elif init == "small_random":
                std = init_scale
            else:
                raise ValueError(f"init must be 'he' or 'small_random' for the MLP; got {init!r}")
            W = (rng.standard_normal((fan_in, fan_out)) * std).astype(self.dtype)
            if i == 0:
                W[-1] = 0.0  # the bias row of the first layer starts at zero
            self.W.append(W)
            self.b.append(None if i == 0 else np.zeros(fan_out, dtype=self.dtype))
        # every parameter in one block and every gradient in another, in the same order,
        # so that an optimiser updates them all in one pass (see bpexp.optim)
        self.params = self._packed([p for pair in zip(self.W, self.b) for p in pair if p is not None])
        self.grads = self._packed([np.zeros_like(p) for p in self.params])
        ps, gs = iter(self.params), iter(self.grads)  # the per-layer lists view the same memory
        layers = range(len(self.W))
        self.W, self.dW, self.b, self.db = [], [], [], []
        for i in layers:
            self.W.append(next(ps))
            self.dW.append(next(gs))
            self.b.append(None if i == 0 else next(ps))
            self.db.append(None if i == 0 else next(gs))

    @property
    def param_names(self) -> list[str]:
        names = []
        for i, b in enumerate(self.b):
            names.append(f"W{i}")
            if b is not None:
                names.append(f"b{i}")
        return names

    def _dense(self, a: np.ndarray, i: int, name: str, bias: bool = True) -> np.ndarray:
        W = self.W[i]
        out = self._buffer(name, (a.shape[0], W.shape[1]))
        rows = a.shape[0]
        if W.shape[1] < 32 and rows > 2 * _NARROW_ROWS:
            # a narrow layer (the logits): OpenBLAS runs it faster in blocks of rows that stay in
            # cache, 45 µs instead of 57 µs for (1079, 128) @ (128, 10) float32 on one thread here
            for start in range(0, rows, _NARROW_ROWS):
                np.matmul(a[start : start + _NARROW_ROWS], W, out=out[start : start + _NARROW_ROWS])
        else:
            np.matmul(a, W, out=out)  # (B, in) @ (in, out) -> (B, out)
        if bias and self.b[i] is not None:
            out += self.b[i]
        return out

    def logits(self, X: np.ndarray) -> np.ndarray:
        return self._forward(X, bias=True)

    def _logits_before_bias(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return self._forward(X, bias=False), self.b[-1][:, None]

    def _forward(self, X: np.ndarray, bias: bool) -> np.ndarray:
        # the forward pass without dropout; ``bias``: add the last layer's bias
        a = X
        for i in range(len(self.W) - 1):
            a = self._dense(a, i, f"eval_a{i}")
            np.maximum(a, _zeros(a.shape, self.dtype), out=a)  # ReLU (see _zeros)
        return self._dense(a, len(self.W) - 1, "eval_z", bias=bias)

    def _make_workspace(self, rows: int) -> tuple:
        # per hidden layer: its output, its dropout mask and its delta; then the logits and
        # the softmax class-major (K, B): see log_softmax_loss
        # (the ReLU masks are booleans for the backward pass), then the bias of the last layer
        # as a (K, 1) column and the logits/softmax buffer class-major (K, B) with its flat view
        hidden = [np.empty((rows, W.shape[1]), self.dtype) for W in self.W[:-1]]
        masks = [np.empty_like(a) for a in hidden]
        relu = [np.empty(a.shape, dtype=bool) for a in hidden]
        deltas = [np.empty_like(a) for a in hidden]
        pt = np.empty((self.n_classes, rows), self.dtype)
        zero = [_zeros(a.shape, self.dtype) for a in hidden]
        row_numbers = _ROWS[:rows] if rows <= len(_ROWS) else np.arange(rows)
        return hidden, zero, masks, relu, deltas, self.b[-1][:, None], pt, pt.reshape(-1), row_numbers

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator | None = None) -> float:
        last = len(self.W) - 1
        hidden, zero, masks, relu, deltas, b_last, pt, flat, row_numbers = self._workspace(X.shape[0])
        if X.dtype is not self.dtype:  # np.dot below takes out= of the exact result dtype only
            X = X.astype(self.dtype)
        dropout = self.dropout > 0.0 and rng is not None
        scale = self.dtype.type(1.0 / (1.0 - self.dropout)) if dropout else None
        # ---- forward, keeping each layer's output for backward
        acts = [X, *hidden]  # acts[i] is the input of layer i
        for i in range(last):
            a = acts[i + 1]
            # np.dot, not np.matmul, for the products of a step: the same BLAS call with 0.4 µs less
            # dispatch each, which counts on small batches
            np.dot(acts[i], self.W[i], out=a)  # (B, in) @ (in, out) -> (B, H_i)
            if self.b[i] is not None:
                a += self.b[i]
            np.maximum(a, zero[i], out=a)  # ReLU: a = max(z, 0), against a zero array (see _zeros)
            if dropout:
                # inverted dropout: zero a unit with probability p, scale the rest by 1/(1−p)
                u = masks[i]
                rng.random(out=u, dtype=u.dtype)  # float32 models draw float32 uniforms
                np.greater_equal(u, self.dtype.type(self.dropout), out=u)  # the keep mask, as 0/1
                a *= u
                a *= scale
        # the logits straight into the class-major softmax buffer: zᵀ = Wᵀ·aᵀ, (K, H) @ (H, B) -> (K, B)
        # (BLAS reads both transposes in place; this saves the (B, K) -> (K, B) copy)
        np.dot(self.W[last].T, acts[last].T, out=pt)
        pt += b_last
        # the label entries (i, y_i) of pt, at y_i·B + i (intp: a small label dtype would overflow)
        at = (y if y.dtype is _INTP else y.astype(np.intp)) * pt.shape[1]
        at += row_numbers
        loss = _softmax_loss(pt, pt, flat, at)  # log_softmax_loss(z, y, pt.T)
        # ---- backward, layer by layer in reverse
        d = _softmax_grad_(pt.T, flat, at)  # softmax_grad_(pt.T, y): dJ/dz (B, K)
        for i in range(last, -1, -1):
            a_in = acts[i]
            np.dot(a_in.T, d, out=self.dW[i])  # (in, B) @ (B, out) -> (in, out)
            if self.db[i] is not None:
                np.add.reduce(d, axis=0, out=self.db[i])  # Σ over the batch, (out,)
            if i == 0:
                break
            d_in = deltas[i - 1]
            np.dot(d, self.W[i].T, out=d_in)  # (B, out) @ (out, in) -> (B, in)
            # through ReLU and dropout: a = relu(z)·m/(1−p), so da/dz = [a > 0]/(1−p)
            mask = relu[i - 1]
            np.greater(a_in, zero[i - 1], out=mask)
            np.multiply(d_in, mask, out=d_in)
            if dropout:
                d_in *= scale
            d = d_in
        self._add_l2_grad()
        return loss

    def decayed(self) -> list[np.ndarray]:
        return [self.W[0][:-1], *self.W[1:]]

    def decayed_grads(self) -> list[np.ndarray]:
        return [self.dW[0][:-1], *self.dW[1:]]


def build_model(cfg, n_inputs: int, n_classes: int, seed: int) -> Model:
    """Build the model a :class:`bpexp.config.ModelConfig` describes, seeded.

    Returns:
        A :class:`Perceptron` or :class:`MLP` in ``cfg.dtype``.
    """
    rng = np.random.default_rng([seed, 1])  # a stream of its own, apart from data and order
    if cfg.kind == "perceptron":
        return Perceptron(
            n_inputs, n_classes, init=cfg.init, init_scale=cfg.init_scale, l2=cfg.l2, dtype=cfg.dtype, rng=rng
        )
    return MLP(
        n_inputs,
        list(cfg.hidden),
        n_classes,
        dropout=cfg.dropout,
        init=cfg.init,
        init_scale=cfg.init_scale,
        l2=cfg.l2,
        dtype=cfg.dtype,
        rng=rng,
    )
