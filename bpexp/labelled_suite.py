"""The labelled suite: small runs whose failure mode is known by construction.

Each :class:`Case` is a clean configuration plus exactly one manipulation, and the
set of modes a correct diagnosis must name (empty for a negative control). Where a
case depends on the curvature of the loss (λ just above or below 2/λ_max), λ_max is
measured at the optimum found by L-BFGS on the float64 objective (an oracle apart
from bpexp's training loop), so the label does not rest on the detector's own code
path.

Used by tests/test_diagnosis_suite.py (the ``core`` cases, a few seeds) and by
benchmarks/diagnosis_eval.py (``core`` + ``extended``, more seeds), which print the
confusion table, per-mode precision and recall, the advice repair rate and the
diagnosis cost.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bpexp.config import ExperimentConfig, apply_overrides, config_from_dict
from bpexp.data import Dataset, load_dataset

# ------------------------------------------------------------------ the oracle


@functools.lru_cache(maxsize=64)
def _optimum(data_json: str, l2: float, seed: int) -> tuple[float, float]:
    from scipy.optimize import minimize

    from bpexp.diagnose.physics import lanczos_top, perceptron_hvp

    data = config_from_dict({"data": json.loads(data_json)}).data
    ds = load_dataset(data, seed, dtype="float64")
    X, y = ds.train.X, ds.train.y
    n, d1 = X.shape
    K = ds.n_classes
    Y = np.eye(K)[y]
    mask = np.ones((K, d1))
    mask[:, -1] = 0.0  # no L2 on the bias column

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        A = flat.reshape(K, d1)
        z = X @ A.T
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ce = -np.mean(np.sum(Y * logp, axis=1))
        grad = (np.exp(logp) - Y).T @ X / n + l2 * A * mask
        return ce + 0.5 * l2 * float(np.sum((A * mask) ** 2)), grad.ravel()

    res = minimize(objective, np.zeros(K * d1), jac=True, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-9})
    A = res.x.reshape(K, d1)
    h = lanczos_top(perceptron_hvp(A, X, l2), A.size, np.random.default_rng(0), steps=60, tol=1e-9)
    z = X @ A.T
    z -= z.max(axis=1, keepdims=True)
    ce = float(-np.mean(z[np.arange(n), y] - np.log(np.exp(z).sum(axis=1))))
    return float(h), ce


def optimum(data: dict, l2: float, seed: int) -> tuple[float, float]:
    """λ_max of the Hessian and the training cross-entropy at the optimum of an L2 perceptron.

    Returns:
        ``(lambda_max, cross_entropy)`` for the data section ``data`` split with ``seed``.
    """
    return _optimum(json.dumps(data, sort_keys=True), float(l2), int(seed))


# ------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One labelled run: ``spec(seed)`` gives the raw spec, ``expected`` the modes it must show.

    ``why`` says what makes the label true by construction. ``hard`` marks negative
    controls built to sit just on the healthy side of a threshold.
    """

    name: str
    expected: frozenset[str]
    spec: Callable[[int], dict]
    why: str
    hard: bool = False

    def config(self, seed: int) -> ExperimentConfig:
        """The validated config of this case at ``seed``."""
        raw = self.spec(seed)
        raw = apply_overrides(raw, {"seed": seed, "name": f"{self.name}-s{seed}"})
        return config_from_dict(raw, source=self.name)


def _fixed(raw: dict) -> Callable[[int], dict]:
    return lambda seed: json.loads(json.dumps(raw))


DIGITS = {"name": "digits"}
L2 = 0.01  # keeps the perceptron's optimum finite on separable digits, so λ_max and the floor are well defined


def _full_batch(lr_factor: float, epochs: int, **train) -> Callable[[int], dict]:
    """Full-batch GD on the digits L2 perceptron with λ = lr_factor · 2/λ_max(optimum)."""

    def spec(seed: int) -> dict:
        h, _ = optimum(DIGITS, L2, seed)
        return {
            "data": dict(DIGITS),
            "model": {"kind": "perceptron", "l2": L2},
            "optim": {"name": "sgd", "lr": float(f"{lr_factor * 2.0 / h:.4g}"), "batch_size": "full"},
            "train": {"max_epochs": epochs, **train},
        }

    return spec


def _stop_below_floor(seed: int) -> dict:
    h, ce = optimum(DIGITS, L2, seed)
    return {
        "data": dict(DIGITS),
        "model": {"kind": "perceptron", "l2": L2},
        "optim": {"name": "sgd", "lr": float(f"{1.0 / h:.4g}"), "batch_size": "full"},
        "train": {"max_epochs": 150, "stop_loss": float(f"{0.5 * ce:.3g}")},
    }


def _noise_floor(seed: int) -> dict:
    _, ce = optimum(DIGITS, L2, seed)
    return {
        "data": dict(DIGITS),
        "model": {"kind": "perceptron", "l2": L2},
        "optim": {"name": "sgd", "lr": 0.1, "batch_size": 1},
        "train": {"max_epochs": 12, "stop_loss": float(f"{1.1 * ce:.3g}")},
    }


def _noise_floor_decayed(seed: int) -> dict:
    raw = _noise_floor(seed)
    raw["schedule"] = {"name": "cosine"}
    return raw


OVERLAP_CENTERS = [[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]]
"""Three blob centres 3 apart with σ = 1.5: fixed, so every seed overlaps alike (1 σ = half a gap)."""

DEFAULT = {"data": dict(DIGITS), "optim": {"name": "sgd", "lr": 0.1, "batch_size": 32}, "train": {"max_epochs": 100}}


def _with(base: dict, overrides: dict) -> Callable[[int], dict]:
    return _fixed(apply_overrides(base, overrides))


POSITIVE: tuple[Case, ...] = (
    Case("diverge", frozenset({"lr_too_high", "non_convergence"}), _full_batch(10.0, 50),
         "λ = 10 × 2/λ_max: every step multiplies the stiffest error by |1 − λh| ≥ 19"),
    Case("oscillate", frozenset({"lr_too_high"}), _full_batch(1.5, 100),
         "λ = 1.5 × 2/λ_max: the optimum is unstable (|1 − λh| = 2), the loss cannot settle"),
    Case("too_slow", frozenset({"lr_too_low"}), _with(DEFAULT, {"optim.lr": 1e-4}),
         "the healthy digits run with λ/1000 and the same 100-epoch budget"),
    Case("noise_floor", frozenset({"flat_minimum"}), _noise_floor,
         "batch-1 SGD at constant λ hovers above the optimum; stop_loss = 1.1 × the optimum's loss"),
    Case("stop_below_floor", frozenset({"non_convergence"}), _stop_below_floor,
         "stop_loss = half the cross-entropy at the optimum of the objective: unreachable by construction"),
    Case("val_floor_mlp", frozenset({"non_convergence"}),
         _fixed({"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [256], "l2": 1e-4},
                 "optim": {"lr": 0.05, "batch_size": 16}, "train": {"max_epochs": 60, "stop_on": "val", "stop_loss": 0.01}}),
         "stop_loss 0.01 on the validation loss: a misclassified sample costs ≥ ln 2, so it needs < 1.5 % validation "
         "errors, and a digits MLP makes more"),
    Case("sorted_overlap", frozenset({"bad_ordering"}),
         _fixed({"data": {"name": "blobs", "params": {"centers": OVERLAP_CENTERS, "cluster_std": 1.5}, "order": "sorted"},
                 "optim": {"lr": 0.1, "batch_size": 1}, "train": {"max_epochs": 30}}),
         "labels sorted, no shuffling, overlapping blobs: each class's run of updates undoes the last"),
    Case("tiny_data_mlp", frozenset({"overfitting"}),
         _fixed({"data": {"name": "digits", "per_class": 3},
                 "model": {"kind": "mlp", "hidden": [256]},
                 "optim": {"name": "adam", "lr": 0.003, "batch_size": 32}, "train": {"max_epochs": 40}}),
         "3 samples per class for a network with 19k weights: it memorises them"),
    Case("linear_circles", frozenset({"underfitting"}), _fixed({"data": {"name": "circles"}, "train": {"max_epochs": 100}}),
         "a linear boundary cannot separate concentric circles"),
    Case("imbalance_20", frozenset({"class_imbalance"}), _with(DEFAULT, {"data.imbalance": 20.0}),
         "class 0 outnumbers every other class 20:1 in training; validation stays stratified"),
)

NEGATIVE: tuple[Case, ...] = (
    Case("healthy_digits", frozenset(), _fixed(DEFAULT), "the default digits perceptron"),
    Case("healthy_digits_spec", frozenset(),
         _fixed({"data": {"name": "digits"}, "model": {"l2": 0.001},
                 "optim": {"lr": 0.1, "batch_size": 32}, "train": {"max_epochs": 60, "stop_loss": 0.05}}),
         "experiments/digits_perceptron.yaml: stops on its loss threshold"),
    Case("healthy_digits_mlp", frozenset(),
         _fixed({"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [128], "dropout": 0.2},
                 "optim": {"name": "adam", "lr": 0.001, "batch_size": 32}, "train": {"max_epochs": 40, "patience": 8}}),
         "experiments/digits_mlp.yaml: Adam, dropout, early stopping"),
    Case("healthy_iris", frozenset(), _fixed({"data": {"name": "iris"}, "train": {"max_epochs": 100}}), "iris perceptron"),
    Case("healthy_wine", frozenset(), _fixed({"data": {"name": "wine"}, "train": {"max_epochs": 100}}), "wine perceptron"),
    Case("healthy_breast_cancer", frozenset(),
         _fixed({"data": {"name": "breast_cancer"}, "train": {"max_epochs": 60}}),
         "breast cancer perceptron (its natural 1.7:1 imbalance is mild)"),
    Case("healthy_mnist", frozenset(),
         _fixed({"data": {"name": "mnist"}, "optim": {"lr": 0.05, "batch_size": 64}, "train": {"max_epochs": 8}}),
         "perceptron on the bundled MNIST test set"),
    Case("healthy_moons_mlp", frozenset(),
         _fixed({"data": {"name": "moons"}, "model": {"kind": "mlp", "hidden": [32]},
                 "optim": {"name": "momentum", "lr": 0.05}, "train": {"max_epochs": 100}}),
         "an MLP with momentum on moons"),
    Case("below_edge", frozenset(), _full_batch(0.9, 100),
         "λ = 0.9 × 2/λ_max: oscillates at first, but |1 − λh| = 0.8 < 1 so it settles", hard=True),
    Case("decayed_batch1", frozenset(), _noise_floor_decayed,
         "the noise_floor case with a cosine decay: λ → 0 lets SGD settle and meet stop_loss", hard=True),
    Case("fixed_order", frozenset(), _with(DEFAULT, {"data.order": "fixed", "train.max_epochs": 50}),
         "one fixed random order: nothing systematic for updates to cancel", hard=True),
    Case("sorted_full_batch", frozenset(), _with(DEFAULT, {"data.order": "sorted", "optim.batch_size": "full",
                                                           "optim.lr": 1.0, "train.max_epochs": 100}),
         "sorted labels with full batches: every step sees every sample, order cannot matter", hard=True),
    Case("sorted_separable", frozenset(), _with(DEFAULT, {"data.order": "sorted", "optim.batch_size": 8,
                                                          "train.max_epochs": 50}),
         "sorted labels on separable digits: slower for a few epochs, then the same loss as shuffled", hard=True),
    Case("imbalance_2", frozenset(), _with(DEFAULT, {"data.imbalance": 2.0}),
         "2:1 imbalance: label perplexity stays far above TheDeepChecker's 0.5", hard=True),
    Case("circles_mlp", frozenset(),
         _fixed({"data": {"name": "circles"}, "model": {"kind": "mlp", "hidden": [64]}, "train": {"max_epochs": 100}}),
         "circles with an MLP: the capacity the linear model lacks", hard=True),
)

CORE: tuple[Case, ...] = POSITIVE + NEGATIVE
"""The cases the tests run (a few seeds each, well under a minute in all)."""

EXTENDED: tuple[Case, ...] = (
    Case("too_slow_iris", frozenset({"lr_too_low"}),
         _fixed({"data": {"name": "iris"}, "optim": {"lr": 1e-4}, "train": {"max_epochs": 100}}),
         "iris with λ/1000"),
    Case("imbalance_20_wine", frozenset({"class_imbalance"}),
         _fixed({"data": {"name": "wine", "imbalance": 20.0}, "train": {"max_epochs": 100}}),
         "wine, 20:1"),
    Case("linear_circles_noisy", frozenset({"underfitting"}),
         _fixed({"data": {"name": "circles", "params": {"noise": 0.15}}, "train": {"max_epochs": 100}}),
         "a linear boundary on noisier concentric circles"),
    Case("linear_circles_tight", frozenset({"underfitting"}),
         _fixed({"data": {"name": "circles", "params": {"factor": 0.3, "noise": 0.05}}, "train": {"max_epochs": 60}}),
         "a linear boundary on well-separated concentric circles"),
    Case("tiny_data_mlp_sgd", frozenset({"overfitting"}),
         _fixed({"data": {"name": "digits", "per_class": 3}, "model": {"kind": "mlp", "hidden": [512]},
                 "optim": {"lr": 0.1}, "train": {"max_epochs": 150}}),
         "3 samples per class, a 512-wide MLP, SGD"),
    Case("tiny_data_mlp_deep", frozenset({"overfitting"}),
         _fixed({"data": {"name": "digits", "per_class": 3}, "model": {"kind": "mlp", "hidden": [256, 256]},
                 "optim": {"name": "adam", "lr": 0.001}, "train": {"max_epochs": 150}}),
         "3 samples per class, two 256-wide layers (84k weights), Adam"),
    Case("healthy_blobs", frozenset(), _fixed({"data": {"name": "blobs"}, "train": {"max_epochs": 100}}),
         "blobs perceptron (linear is Bayes-optimal here)"),
    Case("healthy_wine_mlp", frozenset(),
         _fixed({"data": {"name": "wine"}, "model": {"kind": "mlp", "hidden": [32]}, "train": {"max_epochs": 100}}),
         "wine MLP"),
    Case("healthy_overlap_blobs", frozenset(),
         _fixed({"data": {"name": "blobs", "params": {"centers": OVERLAP_CENTERS, "cluster_std": 1.5}},
                 "optim": {"lr": 0.05}, "train": {"max_epochs": 60}}),
         "the sorted_overlap blobs, shuffled: low accuracy is the Bayes rate, not a failure", hard=True),
)
"""More datasets for the benchmark (benchmarks/diagnosis_eval.py)."""


# ------------------------------------------------------------------- running


@dataclass
class CaseRun:
    """One case at one seed: what was found, what it cost, and (optionally) the repair."""

    case: str
    seed: int
    expected: frozenset[str]
    found: tuple[str, ...]
    confidences: dict[str, float]
    train_seconds: float
    diagnosis_seconds: float
    check_seconds: dict[str, float]
    dataset: str
    findings: list[dict] = field(default_factory=list)
    patch: dict[str, Any] = field(default_factory=dict)
    repaired_found: tuple[str, ...] | None = None
    second_round_found: tuple[str, ...] | None = None
    train_cpu: float = math.nan
    diagnosis_cpu: float = math.nan
    twin_cpu: float = 0.0
    found_history: tuple[str, ...] = ()
    signals: dict[str, float] = field(default_factory=dict)

    @property
    def repaired(self) -> bool | None:
        """True when the re-run with the suggested patch has no findings (None: not tried)."""
        return None if self.repaired_found is None else not self.repaired_found

    @property
    def repaired_within_two(self) -> bool | None:
        """True when the first re-run, or a second one with its own advice added, has no findings."""
        if self.repaired_found is None:
            return None
        return not self.repaired_found or (self.second_round_found is not None and not self.second_round_found)


@functools.lru_cache(maxsize=32)
def _dataset(data_json: str, seed: int, dtype: str) -> Dataset:
    data = config_from_dict({"data": json.loads(data_json)}).data
    return load_dataset(data, seed, dtype=dtype)


def dataset_for(config: ExperimentConfig) -> Dataset:
    """The case's dataset, loaded once per (data section, seed, dtype) and shared."""
    return _dataset(json.dumps(config.data.model_dump(mode="json"), sort_keys=True), config.seed, config.model.dtype)


def run_case(case: Case, seed: int, *, repair: bool = False, cost_repeats: int = 0) -> CaseRun:
    """Train ``case`` at ``seed``, diagnose it, and optionally re-run it with the advice applied.

    ``cost_repeats`` extra diagnoses (without the twin run) refine the CPU-time cost figure.

    Returns:
        A :class:`CaseRun`.
    """
    from bpexp.diagnose import diagnose, diagnose_history, merge_suggestions
    from bpexp.diagnose.signals import summary_numbers, view_of
    from bpexp.train import train

    config = case.config(seed)
    dataset = dataset_for(config)
    # CPU time of this thread: with BLAS on one thread (as the benchmark runs) every product runs
    # here, while BLAS worker threads still spinning from earlier multi-threaded work (the L-BFGS
    # optimum of a case) would add to the process's CPU time: 77 ms against 32 ms of wall seen.
    cpu = time.thread_time()
    result = train(config, dataset)
    train_cpu = time.thread_time() - cpu
    started, cpu = time.perf_counter(), time.thread_time()
    findings = diagnose(result)
    seconds, diagnosis_cpu = time.perf_counter() - started, time.thread_time() - cpu
    twin_cpu = findings.check_cpu_seconds.get("twin", 0.0)
    if cost_repeats:
        # the cost without the twin, as the least of a few timings: one call is at the mercy of
        # page faults and the garbage collector on a run this short
        cpu_times = [diagnosis_cpu - twin_cpu]
        for _ in range(cost_repeats):
            cpu = time.thread_time()
            diagnose(result, twin=False)
            cpu_times.append(time.thread_time() - cpu)
        diagnosis_cpu = min(cpu_times) + twin_cpu
    run = CaseRun(
        case=case.name,
        seed=seed,
        expected=case.expected,
        found=tuple(f.mode for f in findings),
        confidences={f.mode: f.confidence for f in findings},
        train_seconds=result.seconds,
        diagnosis_seconds=seconds,
        check_seconds=dict(findings.check_seconds),
        dataset=result.dataset.name,
        findings=[f.to_dict() for f in findings],
        train_cpu=train_cpu,
        diagnosis_cpu=diagnosis_cpu,
        twin_cpu=twin_cpu,
        found_history=tuple(f.mode for f in diagnose_history(result.history, config, result.dataset.summary(),
                                                             stop_reason=result.stop_reason)),
        signals=summary_numbers(view_of(result.history, config, result.dataset.summary(), stop_reason=result.stop_reason,
                                        final=result.final)),
    )
    if repair and findings:
        run.patch = merge_suggestions(list(findings))
        if run.patch:
            raw = apply_overrides(config.model_dump(mode="json"), run.patch)
            fixed = config_from_dict(raw, source=f"{case.name} + advice")
            again = diagnose(train(fixed, dataset_for(fixed)))
            run.repaired_found = tuple(f.mode for f in again)
            second = merge_suggestions(list(again))
            if again and second:  # a second round: the advice of the advised run, on top of the first
                raw = apply_overrides(raw, second)
                fixed = config_from_dict(raw, source=f"{case.name} + advice, twice")
                run.second_round_found = tuple(f.mode for f in diagnose(train(fixed, dataset_for(fixed))))
    return run


def run_suite(cases: tuple[Case, ...], seeds: tuple[int, ...], *, repair: bool = False, cost_repeats: int = 0,
              on_run: Callable[[CaseRun], None] | None = None) -> list[CaseRun]:
    """Every case at every seed, in order.

    Returns:
        The :class:`CaseRun` list.
    """
    runs = []
    for case in cases:
        for seed in seeds:
            run = run_case(case, seed, repair=repair, cost_repeats=cost_repeats)
            runs.append(run)
            if on_run is not None:
                on_run(run)
    return runs


# ------------------------------------------------------------------- scoring


@dataclass
class ModeScore:
    """Counts for one mode over a suite: true/false positives, false negatives, repairs."""

    mode: str
    tp: int = 0
    fp: int = 0
    fn: int = 0
    repair_tried: int = 0
    repaired: int = 0
    repaired_two: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def repair_rate(self) -> float:
        return self.repaired / self.repair_tried if self.repair_tried else math.nan

    @property
    def repair_rate_two(self) -> float:
        return self.repaired_two / self.repair_tried if self.repair_tried else math.nan


def score(runs: list[CaseRun], *, history_only: bool = False) -> dict[str, ModeScore]:
    """Per-mode precision, recall and repair rate (a repair counts for every expected mode found).

    ``history_only`` scores :func:`bpexp.diagnose.diagnose_history` on the same runs instead.
    """
    from bpexp.diagnose import MODES

    scores = {mode: ModeScore(mode) for mode in MODES}
    for run in runs:
        found = set(run.found_history if history_only else run.found)
        for mode in MODES:
            if mode in found and mode in run.expected:
                scores[mode].tp += 1
            elif mode in found:
                scores[mode].fp += 1
            elif mode in run.expected:
                scores[mode].fn += 1
        if run.repaired is not None and not history_only:
            for mode in run.expected & found:
                scores[mode].repair_tried += 1
                scores[mode].repaired += int(run.repaired)
                scores[mode].repaired_two += int(bool(run.repaired_within_two))
    return scores


def confusion(runs: list[CaseRun], *, history_only: bool = False) -> dict[str, dict[str, int]]:
    """Rows: each case's expected label set (``healthy`` for none); columns: modes found (``none``).

    Returns:
        ``{expected label: {found mode or "none": count}}``.
    """
    table: dict[str, dict[str, int]] = {}
    for run in runs:
        row = "+".join(sorted(run.expected)) or "healthy"
        cells = table.setdefault(row, {})
        for mode in (run.found_history if history_only else run.found) or ("none",):
            cells[mode] = cells.get(mode, 0) + 1
    return table
