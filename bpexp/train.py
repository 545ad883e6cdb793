"""The training loop, its stop rules, and the History it records.

The article's five steps: random (or zero) weights → prediction → loss → update
→ repeat until the loss is below the threshold. Each step runs in a fixed order,
as in nanoGPT's train.py: set λ from the schedule → forward/backward → update →
record. At the end of each epoch: evaluate → record → check the stop rules.

Stop reasons (the shared vocabulary): ``loss_threshold``, ``max_epochs``,
``early_stopping``, ``diverged``. A diverged run is a result, not an error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bpexp.config import STOP_REASONS, ExperimentConfig, json_safe
from bpexp.data import Dataset, batches, epoch_order, load_dataset
from bpexp.model import Model, build_model
from bpexp.optim import Optimizer, build_optimizer
from bpexp.schedules import Schedule, build_schedule


@dataclass
class History:
    """Per-epoch signals of one run, epochs numbered from 1.

    ``update_norm`` is ‖θ_end − θ_start‖ over the epoch and ``path_length`` the sum of
    the per-step ‖Δθ‖: their ratio near 0 means the updates cancel each other.
    ``grad_norm`` is the root mean square of the per-step minibatch gradient norms.
    ``batch_loss`` is the mean of the minibatch losses met during the epoch (each before
    its update); far below the end-of-epoch ``train_loss`` it means each batch is fit and
    then forgotten, as when sorted labels make consecutive updates undo each other.
    ``initial`` holds the losses and accuracies before the first update.
    """

    epoch: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    weight_norm: list[float] = field(default_factory=list)
    update_norm: list[float] = field(default_factory=list)
    path_length: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)

    PER_EPOCH = (
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "weight_norm",
        "update_norm",
        "path_length",
        "grad_norm",
        "iterations",
        "batch_loss",
    )

    def __len__(self) -> int:
        return len(self.epoch)

    def to_dict(self) -> dict:
        """Plain JSON values; NaN and inf become None."""
        out = {}
        for key in self.__dataclass_fields__:  # not asdict: it deep-copies every value first
            value = getattr(self, key)
            if isinstance(value, list):
                out[key] = [json_safe(v) for v in value]
            elif isinstance(value, dict):
                out[key] = {k: json_safe(v) for k, v in value.items()}
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "History":
        """Rebuild a History from :meth:`to_dict` output (None becomes NaN)."""
        kwargs = {}
        for name in cls.__dataclass_fields__:
            value = raw.get(name)
            if value is None:
                continue
            if isinstance(value, list):
                kwargs[name] = [math.nan if v is None else v for v in value]
            else:
                kwargs[name] = {k: (math.nan if v is None else v) for k, v in value.items()}
        return cls(**kwargs)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-epoch series as float64 arrays."""
        return {name: np.asarray(getattr(self, name), dtype=np.float64) for name in self.PER_EPOCH}


@dataclass
class TrainResult:
    """What a finished run returns: its History, why it stopped, and the final model."""

    config: ExperimentConfig
    history: History
    stop_reason: str
    model: Model
    dataset: Dataset
    final: dict[str, float | None]
    best_epoch: int | None
    seconds: float

    def __post_init__(self) -> None:
        if self.stop_reason not in STOP_REASONS:  # the shared vocabulary: CLI, tags, reports
            raise ValueError(f"stop_reason must be one of {STOP_REASONS}; got {self.stop_reason!r}")

    @property
    def epochs(self) -> int:
        """Epochs completed."""
        return len(self.history)

    def to_json(self) -> dict:
        """The ``bpexp train --json`` object (``diagnosis`` and ``run_id`` filled by the caller)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "epochs": self.epochs,
            "stop_reason": self.stop_reason,
            "final": {k: json_safe(v) for k, v in self.final.items()},
            "history": self.history.to_dict(),
            "data": self.dataset.summary(),
            "seconds": round(self.seconds, 4),
            "diagnosis": [],
            "run_id": None,
        }


EpochCallback = Callable[[int, History], None]


def resolve_batch_size(batch_size: int | str, n_train: int) -> int:
    """The batch size in samples: ``'full'`` means the whole training split."""
    return n_train if batch_size == "full" else min(int(batch_size), n_train)


def make_schedule(config: ExperimentConfig, n_train: int) -> tuple[Schedule, int, int]:
    """The λ schedule of a config, with steps per epoch and the total step budget."""
    batch = resolve_batch_size(config.optim.batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch)
    total = steps_per_epoch * config.train.max_epochs
    return build_schedule(config.schedule, default_lr=config.optim.lr, steps_per_epoch=steps_per_epoch, total_steps=total), steps_per_epoch, total


@dataclass
class EpochBuffers:
    """Scratch for the gathered batches of one run: ``X`` (batch, D+1)."""

    X: np.ndarray

    @classmethod
    def for_batches(cls, batch: int, X: np.ndarray) -> "EpochBuffers":
        """Buffers for batches of up to ``batch`` rows of X."""
        return cls(np.empty((batch, X.shape[1]), dtype=X.dtype))


@dataclass
class EpochSteps:
    """What one pass over the training batches did."""

    steps: int  # updates made (fewer than the batches when a step diverged)
    t: int  # the iteration counter after the last update
    path_length: float  # Σ‖Δθ‖ over the steps
    grad_sq_sum: float  # Σ‖g‖² over the steps
    diverged: bool  # a step's loss or update was not finite; the epoch stopped there
    loss_sum: float = 0.0  # Σ minibatch loss over the steps, each measured before its update


def run_epoch(
    model: Model,
    optimizer: Optimizer,
    X: np.ndarray,
    y: np.ndarray,
    batch: int,
    schedule: Schedule,
    t: int,
    *,
    order: np.ndarray | None = None,
    dropout_rng: np.random.Generator | None = None,
    buffers: EpochBuffers | None = None,
    record: History | None = None,
) -> EpochSteps:
    """One epoch of minibatch steps, each in a fixed order: set λ → forward/backward → update → record.

    This is the step loop of :func:`train`; the speed benchmark times it as is.

    Args:
        X, y: the training split.
        batch: samples per step; the last batch may be smaller.
        schedule: λ as a function of the global iteration; ``t`` is the iteration of the first step.
        order: the sample order, indices into X (from :func:`bpexp.data.epoch_order`);
            None takes the batches as slices of X, without a copy.
        dropout_rng: draws the dropout masks.
        buffers: scratch for gathered batches, reused across epochs; allocated when omitted.
        record: a History whose ``step_loss`` and ``step_lr`` get every step's loss and λ.

    Returns:
        An :class:`EpochSteps`.

    Raises:
        ValueError: when ``order`` holds an index outside [0, len(y)).
    """
    if order is not None:
        if len(order) and (order.min() < 0 or order.max() >= len(y)):
            raise ValueError(f"order: indices must lie in [0, {len(y)}); got {order.min()}..{order.max()}")
        if buffers is None:
            buffers = EpochBuffers.for_batches(batch, X)
    path = g2_sum = loss_sum = 0.0
    steps = 0
    diverged = False
    full_X = None
    if order is not None:
        full_X = buffers.X[:batch]  # every batch but the last fills it
        y = y.take(order)  # the labels of the whole epoch in one gather; each batch slices them
    # a step costs microseconds on small data, so the loop binds what it calls once
    loss_and_grad, update, params, grads = model.loss_and_grad, optimizer.step, model.params, model.grads
    sqrt, isfinite = math.sqrt, math.isfinite
    # a diverging step is detected below and reported in the result, not warned about
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for lo, hi in batches(len(y), batch):
            lr = schedule(t)  # 1. set λ
            yb = y[lo:hi]
            if order is not None:
                Xb = full_X if hi - lo == batch else buffers.X[: hi - lo]
                # mode="clip" lets take write straight into out (mode="raise" gathers into a temporary
                # and copies: 1.5x slower on MNIST rows); the indices were checked above
                X.take(order[lo:hi], axis=0, out=Xb, mode="clip")
            else:
                Xb = X[lo:hi]
            loss = loss_and_grad(Xb, yb, dropout_rng)  # 2. forward + backward
            g2, u2 = update(params, grads, lr)  # 3. update
            path += sqrt(u2)  # 4. record
            g2_sum += g2
            loss_sum += loss
            steps += 1
            t += 1
            if record is not None:
                record.step_loss.append(loss)
                record.step_lr.append(lr)
            if not isfinite(loss) or not isfinite(u2):
                diverged = True
                break
    return EpochSteps(steps, t, path, g2_sum, diverged, loss_sum)


def train(
    config: ExperimentConfig,
    dataset: Dataset | None = None,
    *,
    model: Model | None = None,
    optimizer: Optimizer | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train one model as ``config`` says and return its History and stop reason.

    Same config and seed give a bit-identical History.

    Args:
        config: the validated experiment.
        dataset: the data to use; loaded from ``config.data`` when omitted.
        model: a model to continue from; built from ``config.model`` when omitted.
        optimizer: an optimiser with its state; built from ``config.optim`` when omitted.
        on_epoch: called after every epoch with (epoch, history), e.g. for a progress bar.

    Returns:
        A :class:`TrainResult`.

    Raises:
        DataError: when the dataset cannot be loaded.
    """
    seed = config.seed
    if dataset is None:
        dataset = load_dataset(config.data, seed, dtype=config.model.dtype)
    started = time.perf_counter()  # training time only, without loading the data
    if model is None:
        model = build_model(config.model, dataset.n_features, dataset.n_classes, seed)
    if optimizer is None:
        optimizer = build_optimizer(config.optim)
    tcfg = config.train
    X, y = dataset.train.X, dataset.train.y
    n = len(y)
    batch = resolve_batch_size(config.optim.batch_size, n)
    schedule, _, _ = make_schedule(config, n)
    order_rng = np.random.default_rng([seed, 2])  # sample order, apart from data and init
    dropout_rng = np.random.default_rng([seed, 3])
    fixed = order_rng.permutation(n) if config.data.order == "fixed" else None
    # Full batch: every epoch sees the same sum, so skip the gather entirely.
    gather = batch < n or config.data.order != "shuffled"
    buffers = EpochBuffers.for_batches(batch, X) if gather else None

    history = History()
    train_loss0, train_acc0 = model.evaluate(X, y)
    val_loss0, val_acc0 = model.evaluate(dataset.val.X, dataset.val.y)
    history.initial = {
        "train_loss": train_loss0,
        "train_accuracy": train_acc0,
        "val_loss": val_loss0,
        "val_accuracy": val_acc0,
        "weight_norm": model.weight_norm(),
    }
    diverge_above = tcfg.diverge_factor * train_loss0

    t = 0
    stop_reason = "max_epochs"
    best_val, best_epoch, best_weights, bad_epochs = math.inf, None, None, 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(1, tcfg.max_epochs + 1):
            start_weights = model.get_weights()
            epoch_lr = schedule(t)
            order = epoch_order(n, config.data.order, epoch, y, order_rng, fixed) if gather else None
            record = history if tcfg.record_steps else None
            done = run_epoch(model, optimizer, X, y, batch, schedule, t, order=order, dropout_rng=dropout_rng, buffers=buffers, record=record)
            t = done.t
            # ---- evaluate and record the epoch
            train_loss, train_acc = model.evaluate(X, y)
            val_loss, val_acc = model.evaluate(dataset.val.X, dataset.val.y)
            update_norm = math.sqrt(sum(float(np.sum((p - w0) ** 2, dtype=np.float64)) for p, w0 in zip(model.params, start_weights)))
            history.epoch.append(epoch)
            history.lr.append(float(epoch_lr))
            history.train_loss.append(train_loss)
            history.train_accuracy.append(train_acc)
            history.val_loss.append(val_loss)
            history.val_accuracy.append(val_acc)
            history.weight_norm.append(model.weight_norm())
            history.update_norm.append(update_norm)
            history.path_length.append(done.path_length)
            history.grad_norm.append(math.sqrt(done.grad_sq_sum / max(done.steps, 1)))
            history.batch_loss.append(done.loss_sum / done.steps if done.steps else math.nan)
            history.iterations.append(t)
            if on_epoch is not None:
                on_epoch(epoch, history)
            # ---- stop rules, most severe first
            if done.diverged or not math.isfinite(train_loss) or train_loss > diverge_above:
                stop_reason = "diverged"
                break
            if tcfg.stop_loss is not None:
                watched = train_loss if tcfg.stop_on == "train" else val_loss
                if watched < tcfg.stop_loss:
                    stop_reason = "loss_threshold"
                    break
            if tcfg.patience is not None:
                if val_loss < best_val:
                    best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                    best_weights = model.get_weights()
                else:
                    bad_epochs += 1
                    if bad_epochs >= tcfg.patience:
                        stop_reason = "early_stopping"
                        if best_weights is not None:  # None: the validation loss was never finite
                            model.set_weights(best_weights)
                        break

    final = _final_metrics(model, dataset)
    return TrainResult(config, history, stop_reason, model, dataset, final, best_epoch, time.perf_counter() - started)


def _final_metrics(model: Model, dataset: Dataset) -> dict[str, float | None]:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        train_loss, train_acc = model.evaluate(dataset.train.X, dataset.train.y)
        val_loss, val_acc = model.evaluate(dataset.val.X, dataset.val.y)
        test_loss = test_acc = None
        if dataset.test is not None:
            test_loss, test_acc = model.evaluate(dataset.test.X, dataset.test.y)
    return {
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "objective": train_loss + model.l2_penalty(),
    }
