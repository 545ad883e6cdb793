"""Update rules: SGD, momentum, Nesterov and Adam, all in place.

The training loop calls ``step(params, grads, lr)`` once per batch with the λ its
schedule gives for that iteration. Each step returns ‖g‖² and ‖Δθ‖² so that the
History can record gradient and update norms without a second pass.
Formulas follow PyTorch's conventions (torch.optim.SGD, torch.optim.Adam), so a
reader can compare runs one to one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def _sq(a: np.ndarray) -> float:
    flat = a.reshape(-1)
    return float(np.dot(flat, flat))


class Optimizer(ABC):
    """An update rule. The training loop calls :meth:`step` once per batch; ``reset`` forgets its state."""

    @abstractmethod
    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> tuple[float, float]:
        """Update ``params`` in place from ``grads`` (which it may overwrite) at learning rate ``lr``.

        Returns:
            ``(‖g‖², ‖Δθ‖²)`` summed over all parameter arrays.
        """

    def reset(self) -> None:
        """Forget the running state (velocities, moments, step count)."""


class SGD(Optimizer):
    """Plain gradient descent: θ ← θ − λ·g (online, minibatch or full batch by the caller's batches)."""

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> tuple[float, float]:
        g2 = 0.0
        for p, g in zip(params, grads):
            g2 += _sq(g)
            g *= g.dtype.type(-lr)  # the gradient buffer is scratch: reuse it for Δθ
            p += g
        return g2, lr * lr * g2


class Momentum(Optimizer):
    """Heavy-ball momentum, PyTorch style: v ← μ·v + g; θ ← θ − λ·v. With ``nesterov``: θ ← θ − λ·(g + μ·v)."""

    def __init__(self, momentum: float = 0.9, nesterov: bool = False) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        self.momentum = momentum
        self.nesterov = nesterov
        self.velocity: list[np.ndarray] | None = None

    def reset(self) -> None:
        self.velocity = None

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> tuple[float, float]:
        if self.velocity is None:
            self.velocity = [np.zeros_like(p) for p in params]
        g2 = u2 = 0.0
        for p, g, v in zip(params, grads, self.velocity):
            mu = g.dtype.type(self.momentum)
            g2 += _sq(g)
            v *= mu
            v += g
            if self.nesterov:
                g += mu * v  # g + μ·v, built in the gradient buffer
                update = g
            else:
                update = v
            u2 += lr * lr * _sq(update)
            p -= g.dtype.type(lr) * update
        return g2, u2


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): bias-corrected first and second moments."""

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None
        self.t = 0

    def reset(self) -> None:
        self.m = self.v = None
        self.t = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> tuple[float, float]:
        if self.m is None or self.v is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        # θ ← θ − α·m̂/(√v̂ + ε) with α = λ·√(1−β₂ᵗ)/(1−β₁ᵗ) folding both bias corrections
        bc1 = 1.0 - self.beta1**self.t
        bc2 = 1.0 - self.beta2**self.t
        g2 = u2 = 0.0
        for p, g, m, v in zip(params, grads, self.m, self.v):
            dt = g.dtype.type
            g2 += _sq(g)
            m *= dt(self.beta1)
            m += dt(1.0 - self.beta1) * g
            v *= dt(self.beta2)
            np.multiply(g, g, out=g)
            g *= dt(1.0 - self.beta2)
            v += g
            np.sqrt(v, out=g)
            g /= dt(np.sqrt(bc2))
            g += dt(self.eps)
            np.divide(m, g, out=g)
            g *= dt(-lr / bc1)
            u2 += _sq(g)
            p += g
        return g2, u2


def build_optimizer(cfg) -> Optimizer:
    """The optimiser a :class:`bpexp.config.OptimConfig` names."""
    if cfg.name == "sgd":
        return SGD()
    if cfg.name in ("momentum", "nesterov"):
        return Momentum(cfg.momentum, nesterov=cfg.name == "nesterov")
    if cfg.name == "adam":
        return Adam(cfg.beta1, cfg.beta2, cfg.eps)
    raise ValueError(f"optim.name must be sgd, momentum, nesterov or adam; got {cfg.name!r}")
