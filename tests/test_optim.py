"""Tests of bpexp.optim: the update rules, step by step against torch.optim.

torch is a test oracle only: its SGD (momentum, Nesterov) and Adam run live on the
same tiny quadratic with the same gradients, and the parameters must agree after
every step. These tests are skipped where torch cannot be imported. The SGD tests
at the end check online, minibatch and full-batch descent through the training loop.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpexp.config import OptimConfig, config_from_dict
from bpexp.data import load_dataset
from bpexp.model import Perceptron
from bpexp.optim import SGD, Adam, Momentum, build_optimizer
from bpexp.train import train

STEPS = 25
LRS = [0.1 * (1 + 0.5 * math.sin(t)) for t in range(STEPS)]  # λ varies per step, as under a schedule


class Quadratic:
    """f(W, b) = ½‖M·W − C‖² + ½·bᵀQb − rᵀb, with gradients written out by hand."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.M = rng.standard_normal((4, 3))
        self.C = rng.standard_normal((4, 2))
        S = rng.standard_normal((5, 5))
        self.Q = S @ S.T / 5 + np.eye(5)
        self.r = rng.standard_normal(5)
        self.start = [rng.standard_normal((3, 2)), rng.standard_normal(5)]

    def grads(self, W: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
        return [self.M.T @ (self.M @ W - self.C), self.Q @ b - self.r]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch.optim is the oracle for the update rules")


def run_both(torch, ours, make_torch_optimizer, dtype=np.float64):
    """Step our optimiser and torch's side by side; yield (step, our params, torch params, norms)."""
    q = Quadratic()
    params = [p.astype(dtype) for p in q.start]
    tparams = [torch.tensor(p.copy()) for p in params]
    topt = make_torch_optimizer(tparams)
    for t in range(STEPS):
        grads = [g.astype(dtype) for g in q.grads(*params)]
        before = [p.copy() for p in params]
        g2, u2 = ours.step(params, [g.copy() for g in grads], LRS[t])
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g.copy())
        for group in topt.param_groups:
            group["lr"] = LRS[t]
        topt.step()
        yield t, params, [tp.detach().numpy() for tp in tparams], (g2, u2, grads, before)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_nesterov_match_torch_sgd(torch, momentum, nesterov):
    if nesterov and momentum == 0.0:
        pytest.skip("torch refuses Nesterov without momentum")
    ours = Momentum(momentum, nesterov=nesterov)
    for t, mine, theirs, _ in run_both(
        torch, ours, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, nesterov=nesterov)
    ):
        for p, tp in zip(mine, theirs):
            np.testing.assert_allclose(p, tp, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


@pytest.mark.parametrize(("beta1", "beta2", "eps"), [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3), (0.0, 0.99, 1e-6)])
def test_adam_matches_torch_adam(torch, beta1, beta2, eps):
    ours = Adam(beta1, beta2, eps)
    for t, mine, theirs, _ in run_both(torch, ours, lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(beta1, beta2), eps=eps)):
        for p, tp in zip(mine, theirs):
            np.testing.assert_allclose(p, tp, rtol=1e-11, atol=1e-13, err_msg=f"step {t}")


def test_plain_sgd_matches_torch_sgd(torch):
    for t, mine, theirs, _ in run_both(torch, SGD(), lambda ps: torch.optim.SGD(ps, lr=0.1)):
        for p, tp in zip(mine, theirs):
            np.testing.assert_allclose(p, tp, rtol=1e-13, atol=1e-15, err_msg=f"step {t}")


@pytest.mark.parametrize(
    "make", [SGD, lambda: Momentum(0.9), lambda: Momentum(0.9, nesterov=True), lambda: Adam()], ids=["sgd", "momentum", "nesterov", "adam"]
)
def test_step_reports_gradient_and_update_norms(torch, make):
    for _, params, _, (g2, u2, grads, before) in run_both(torch, make(), lambda ps: torch.optim.SGD(ps, lr=0.1)):
        assert g2 == pytest.approx(sum(float(np.sum(g * g)) for g in grads), rel=1e-12)
        moved = sum(float(np.sum((p - p0) ** 2)) for p, p0 in zip(params, before))
        assert u2 == pytest.approx(moved, rel=1e-9)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam"])
def test_reset_forgets_the_state(name):
    q = Quadratic()
    opt = build_optimizer(OptimConfig(name=name))
    fresh = build_optimizer(OptimConfig(name=name))
    a = [p.copy() for p in q.start]
    for _ in range(5):
        opt.step(a, q.grads(*a), 0.05)
    opt.reset()
    b, c = [p.copy() for p in a], [p.copy() for p in a]
    for _ in range(3):
        opt.step(b, q.grads(*b), 0.05)
        fresh.step(c, q.grads(*c), 0.05)
    for p, r in zip(b, c):
        np.testing.assert_array_equal(p, r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_steps_keep_float32_float32(name, dtype):
    q = Quadratic()
    params = [p.astype(dtype) for p in q.start]
    opt = build_optimizer(OptimConfig(name=name))
    for _ in range(3):
        opt.step(params, [g.astype(dtype) for g in q.grads(*params)], 0.1)
    assert all(p.dtype == dtype for p in params)


def test_build_optimizer_names():
    assert type(build_optimizer(OptimConfig(name="sgd"))) is SGD
    assert build_optimizer(OptimConfig(name="nesterov")).nesterov is True
    assert build_optimizer(OptimConfig(name="momentum", momentum=0.5)).momentum == 0.5
    assert isinstance(build_optimizer(OptimConfig(name="adam")), Adam)
    with pytest.raises(ValueError, match="momentum"):
        Momentum(1.0)


# ------------------------------------------------- SGD: online, minibatch, full batch


@pytest.fixture(scope="module")
def iris_config():
    return {
        "seed": 3,
        "data": {"name": "iris", "order": "sorted"},
        "model": {"kind": "perceptron", "dtype": "float64"},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"max_epochs": 2},
    }


@pytest.fixture(scope="module")
def iris(iris_config):
    cfg = config_from_dict(iris_config)
    return load_dataset(cfg.data, cfg.seed, dtype="float64")


@pytest.mark.parametrize("batch_size", [1, 16, "full"])
def test_sgd_epoch_is_the_hand_written_loop(iris_config, iris, batch_size):
    """θ ← θ − λ·∇J_batch over the batches of each epoch, in the order the spec names (sorted by label)."""
    raw = {**iris_config, "optim": {**iris_config["optim"], "batch_size": batch_size}}
    result = train(config_from_dict(raw), iris)
    X, y = iris.train.X, iris.train.y
    n = len(y)
    size = n if batch_size == "full" else batch_size
    order = np.argsort(y, kind="stable")
    reference = Perceptron(iris.n_features, iris.n_classes, dtype="float64")
    steps = 0
    for _ in range(2):
        for lo in range(0, n, size):
            idx = order[lo : lo + size]
            reference.loss_and_grad(X[idx], y[idx])
            reference.A -= 0.05 * reference.dA
            steps += 1
    np.testing.assert_allclose(result.model.A, reference.A, rtol=1e-12, atol=1e-14)
    assert result.history.iterations == [steps // 2, steps]
    assert steps // 2 == math.ceil(n / size)


def test_full_batch_gradient_descent_decreases_the_objective(digits64):
    cfg = config_from_dict(
        {"model": {"dtype": "float64"}, "optim": {"name": "sgd", "lr": 0.5, "batch_size": "full"}, "train": {"max_epochs": 30}}
    )
    result = train(cfg, digits64)
    losses = result.history.train_loss
    assert all(b < a for a, b in zip(losses, losses[1:]))  # λ below 2/L on a convex, L-smooth loss: every step descends
