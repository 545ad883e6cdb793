"""Smith's comparison of cyclical and fixed learning rates (arXiv 1506.01186, Table 1), on our data.

The protocol, for each task (a spec: data, model, optimiser) and each seed:

1. Run the LR range test (:func:`bpexp.lr_find.range_test`) and read the paper's
   ``base_lr`` and ``max_lr`` from it (by default as the paper does: linearly up to
   where training fails, see :func:`range_test_bounds`).
2. Train at a fixed λ for every value of a log grid over the range test's range;
   the "fixed" policy is the grid value with the best mean final validation
   accuracy over the seeds.
3. Train ``triangular``, ``triangular2`` and ``exp_range`` between that seed's
   suggested bounds, with a stepsize of a few epochs, for a whole number of cycles.

Every run lasts the same number of iterations (the budget: ``cycles`` × 2 ×
stepsize), so a cyclical run ends at the end of a cycle, and no stop rule cuts a
run short except divergence. Test accuracy is measured after every epoch.

The table, per policy (as Table 1 reports iterations and accuracy):

- iterations to reach the fixed policy's final test accuracy, seed by seed (the
  same seed's split and initial weights), as mean ± std over the seeds that reach
  it, with how many did; "never" when none did. The fixed policy's own entry is
  the first epoch at which it reached its final accuracy.
- speed-up: the fixed policy's mean iterations over this policy's, when every seed
  of both reached the target.
- final test accuracy at the budget (equal iterations for all), mean ± std.

The protocol file is YAML (see ``experiments/clr_vs_fixed.yaml``); unknown keys are errors.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bpexp.config import ExperimentConfig, apply_overrides, config_from_dict, format_validation_error, load_yaml
from bpexp.data import Dataset, load_dataset
from bpexp.errors import ConfigError
from bpexp.lr_find import range_test
from bpexp.model import build_model
from bpexp.train import resolve_batch_size, train

POLICIES = ("triangular", "triangular2", "exp_range")
PAPER_EXP_RANGE_DECAY = 0.99994**70000
"""The amplitude left at the end of the paper's CIFAR-10 exp_range run: γ = 0.99994 per
iteration over 70,000 iterations, ≈ 0.015. Our runs are shorter, so γ is chosen to
leave the same share at the end of the budget."""


# -------------------------------------------------------------------- protocol


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeTestSettings(_Strict):
    """How the range test of step 1 runs."""

    start_lr: float = Field(default=1e-5, gt=0)
    end_lr: float = Field(default=10.0, gt=0)
    mode: Literal["exp", "linear", "linear_to_divergence"] = Field(
        default="linear_to_divergence",
        description="exp or linear over [start_lr, end_lr]; linear_to_divergence: see range_test_bounds",
    )
    iterations: int | None = Field(default=None, ge=5, description="default: 8 epochs, at least 100 steps")

    @model_validator(mode="after")
    def _check(self) -> "RangeTestSettings":
        if self.start_lr >= self.end_lr:
            raise ValueError(f"range_test.start_lr must be < range_test.end_lr; got {self.start_lr} >= {self.end_lr}")
        return self


class Protocol(_Strict):
    """One comparison: its tasks, seeds, range test, grid and cycle settings, after the budget is applied."""

    name: str = "clr_vs_fixed"
    budget: str = "full"
    seeds: list[int] = Field(min_length=1)
    range_test: RangeTestSettings = Field(default_factory=RangeTestSettings)
    grid_per_decade: int = Field(default=2, ge=1, description="fixed-λ grid points per decade of the range")
    stepsize_epochs: int = Field(default=4, ge=1, description="half cycle; Smith (§3.3) advises 2-10 epochs")
    cycles: int = Field(default=5, ge=1, description="the budget is cycles × 2 × stepsize for every policy")
    exp_range_decay: float = Field(
        default=PAPER_EXP_RANGE_DECAY, gt=0, le=1, description="exp_range amplitude left at the end of the budget"
    )
    policies: list[Literal["triangular", "triangular2", "exp_range"]] = Field(default_factory=lambda: list(POLICIES))
    tasks: dict[str, ExperimentConfig] = Field(min_length=1)

    @property
    def epochs(self) -> int:
        """Every run's length in epochs."""
        return self.cycles * 2 * self.stepsize_epochs

    def grid(self) -> list[float]:
        """The fixed-λ grid: ``grid_per_decade`` log-spaced points per decade, both ends included."""
        lo, hi = math.log10(self.range_test.start_lr), math.log10(self.range_test.end_lr)
        count = max(2, round((hi - lo) * self.grid_per_decade) + 1)
        return [float(v) for v in np.logspace(lo, hi, count)]


def load_protocol(path: str | Path, budget: str = "full") -> Protocol:
    """Read a protocol file and apply one of its ``budgets``.

    The file holds the protocol's fields, ``tasks`` (name → spec mapping) and
    ``budgets`` (name → fields that replace the top-level ones, e.g. fewer seeds
    for a quick check). A budget's nested mappings replace single keys: ``range_test:
    {iterations: 100}`` keeps the range, ``tasks: {t: {data: {per_class: 60}}}`` keeps
    the rest of task t.

    Raises:
        ConfigError: for a missing file, an unknown budget, an unknown key or a bad value,
            naming the field.
    """
    raw = load_yaml(path)
    budgets = raw.pop("budgets", {}) or {}
    if not isinstance(budgets, dict):
        raise ConfigError(f"{path}: budgets must map a name to fields; got {type(budgets).__name__}")
    if budget not in budgets and budget != "full":
        raise ConfigError(f"{path}: unknown budget {budget!r}; the file has {', '.join(sorted(budgets)) or 'none'}")
    chosen = budgets.get(budget) or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"{path}: budgets.{budget} must map fields to values")
    merged = apply_overrides(raw, _dotted(chosen))
    tasks = merged.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ConfigError(f"{path}: tasks must map a name to a spec (data, model, optim)")
    merged["tasks"] = {name: _task_config(name, spec, path) for name, spec in tasks.items()}
    merged["budget"] = budget
    try:
        return Protocol.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def _dotted(fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested budget fields as dotted overrides, so a budget can change one range_test or task key."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, dict) and value:
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _task_config(name: str, spec: Any, path: str | Path) -> ExperimentConfig:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: tasks.{name} must be a spec mapping")
    for section in ("schedule", "train"):
        if section in spec:
            raise ConfigError(f"{path}: tasks.{name}.{section}: the protocol sets the schedule and the budget itself")
    spec = {**spec, "name": name}
    return config_from_dict(spec, source=f"{path}: tasks.{name}")


# ------------------------------------------------------------------- one run


@dataclass
class Curve:
    """Test accuracy after each epoch of one run, with the iteration count at that point."""

    iterations: list[int]
    test_accuracy: list[float]
    final_val_accuracy: float
    stop_reason: str

    @property
    def final(self) -> float:
        """The test accuracy at the end of the run (0 for a run without an epoch)."""
        return self.test_accuracy[-1] if self.test_accuracy else 0.0


def run_curve(config: ExperimentConfig, dataset: Dataset) -> Curve:
    """Train ``config`` on ``dataset`` and record the test accuracy after every epoch.

    Returns:
        A :class:`Curve`.
    """
    model = build_model(config.model, dataset.n_features, dataset.n_classes, config.seed)
    accuracies: list[float] = []
    split = dataset.test if dataset.test is not None else dataset.val

    def on_epoch(epoch, history) -> None:
        with np.errstate(all="ignore"):
            accuracies.append(model.evaluate(split.X, split.y)[1])

    result = train(config, dataset, model=model, on_epoch=on_epoch)
    return Curve(list(result.history.iterations), accuracies, float(result.final["val_accuracy"]), result.stop_reason)


LINEAR_START = 1e-3
"""linear_to_divergence starts its linear test at λ_div/1000: on a linear axis as good as the
paper's 0, which the range test cannot take (it reads λ on a log axis too)."""


def range_test_bounds(config: ExperimentConfig, dataset: Dataset, settings: RangeTestSettings) -> dict:
    """Step 1: run the range test as ``settings`` say and read the paper's base_lr and max_lr.

    ``exp`` and ``linear`` run one test over [start_lr, end_lr]. ``linear_to_divergence``
    follows the paper, whose test rises linearly from 0 to a λ where training fails
    (Smith 2017, §3.3, Fig. 3), without knowing that λ beforehand: an exponential sweep of
    [start_lr, end_lr] finds λ_div, where its smoothed loss passes 4× its minimum (end_lr
    if it never does), then a linear test over [λ_div·:data:`LINEAR_START`, λ_div] of the
    same length is read. Both tests run on copies; the config's model is never touched.

    Returns:
        ``{"base_lr", "max_lr", "base_reason", "max_reason", "range": [lo, hi], "mode"}``;
        the rates are None where the test could not read them.
    """
    lo, hi, mode = settings.start_lr, settings.end_lr, settings.mode
    if mode == "linear_to_divergence":
        sweep = range_test(config, dataset, start_lr=lo, end_lr=hi, num_iterations=settings.iterations, mode="exp")
        hi = sweep.diverged_at if sweep.diverged_at is not None else hi
        lo, mode = hi * LINEAR_START, "linear"
    result = range_test(config, dataset, start_lr=lo, end_lr=hi, num_iterations=settings.iterations, mode=mode)
    base, top = result.suggestions["base_lr"], result.suggestions["max_lr"]
    return {
        "base_lr": base.lr,
        "max_lr": top.lr,
        "base_reason": base.reason,
        "max_reason": top.reason,
        "range": [lo, hi],
        "mode": mode,
    }


def iterations_to_reach(curve: Curve, target: float) -> int | None:
    """The iteration count at the first epoch whose test accuracy is ≥ ``target``, or None (never)."""
    for iterations, accuracy in zip(curve.iterations, curve.test_accuracy):
        if accuracy >= target:
            return int(iterations)
    return None


def _with(config: ExperimentConfig, *, seed: int, epochs: int, schedule: dict | None = None, lr: float | None = None) -> ExperimentConfig:
    """The task's config for one run: its seed, the budget, no stop rule but divergence, a schedule."""
    raw = config.model_dump(mode="json")
    raw["seed"] = seed
    raw["train"] = {"max_epochs": epochs, "diverge_factor": raw["train"]["diverge_factor"]}
    if lr is not None:
        raw["optim"]["lr"] = lr
    raw["schedule"] = schedule or {"name": "constant"}
    return config_from_dict(raw, source=f"clr task {config.name}")


# ------------------------------------------------------------------- results


@dataclass
class PolicyRow:
    """One line of the table: a policy, its λ, and its results over the seeds."""

    policy: str
    lr: str
    iterations: list[int | None]
    finals: list[float]
    speedup: float | None = None

    @property
    def reached(self) -> int:
        """Seeds that reached the fixed policy's final accuracy."""
        return sum(v is not None for v in self.iterations)

    def iterations_mean_std(self) -> tuple[float, float] | None:
        """Mean and (population) std of the iterations over the seeds that reached it, or None (never)."""
        found = [v for v in self.iterations if v is not None]
        if not found:
            return None
        return float(np.mean(found)), float(np.std(found))

    def final_mean_std(self) -> tuple[float, float] | None:
        """Mean and std of the final test accuracy, or None when no seed ran."""
        if not self.finals:
            return None
        return float(np.mean(self.finals)), float(np.std(self.finals))

    def iterations_text(self) -> str:
        """``"1,234 ± 56"``, with ``" (3/5)"`` when not every seed reached it, or ``"never"``."""
        stats = self.iterations_mean_std()
        if stats is None:
            return "never" if self.iterations else "n/a"
        text = f"{stats[0]:,.0f} ± {stats[1]:,.0f}"
        if self.reached < len(self.iterations):
            text += f" ({self.reached}/{len(self.iterations)})"
        return text

    def final_text(self) -> str:
        """``"0.9612 ± 0.0040"`` or ``"n/a"``."""
        stats = self.final_mean_std()
        return "n/a" if stats is None else f"{stats[0]:.4f} ± {stats[1]:.4f}"

    def speedup_text(self) -> str:
        """``"2.8×"``, or ``"-"`` when either side never reached the target."""
        return "-" if self.speedup is None else f"{self.speedup:.2f}×"

    def to_dict(self) -> dict:
        """Plain JSON values."""
        it = self.iterations_mean_std()
        fin = self.final_mean_std()
        return {
            "policy": self.policy,
            "lr": self.lr,
            "iterations": self.iterations,
            "iterations_mean": None if it is None else it[0],
            "iterations_std": None if it is None else it[1],
            "reached": self.reached,
            "seeds": len(self.iterations),
            "speedup": self.speedup,
            "final_accuracies": self.finals,
            "final_accuracy_mean": None if fin is None else fin[0],
            "final_accuracy_std": None if fin is None else fin[1],
            "iterations_text": self.iterations_text(),
        }


def add_speedups(rows: list[PolicyRow]) -> None:
    """Set each row's speed-up: the first row's (fixed) mean iterations over its own.

    None unless every seed of both rows reached the target: a mean over the seeds that
    happened to get there would flatter a policy that mostly does not.
    """
    def complete(row: PolicyRow) -> bool:
        return bool(row.iterations) and row.reached == len(row.iterations)

    base = rows[0].iterations_mean_std()
    for row in rows:
        own = row.iterations_mean_std()
        ok = complete(rows[0]) and complete(row) and base is not None and own is not None and own[0] > 0
        row.speedup = base[0] / own[0] if ok else None


@dataclass
class TaskResult:
    """Everything one task produced: the bounds read per seed, the grid, and the table rows."""

    task: str
    description: str
    seeds: list[int]
    steps_per_epoch: int
    budget_iterations: int
    stepsize_iterations: int
    bounds: list[dict]
    grid: list[dict]
    best_fixed_lr: float
    rows: list[PolicyRow]

    def to_dict(self) -> dict:
        """Plain JSON values."""
        out = asdict(self)
        out["rows"] = [row.to_dict() for row in self.rows]
        return out


@dataclass
class ClrReport:
    """The whole comparison: one :class:`TaskResult` per task."""

    name: str
    budget: str
    epochs: int
    stepsize_epochs: int
    cycles: int
    range_mode: str
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The ``bpexp clr-compare --json`` object."""
        return {
            "name": self.name,
            "budget": self.budget,
            "epochs": self.epochs,
            "stepsize_epochs": self.stepsize_epochs,
            "cycles": self.cycles,
            "range_mode": self.range_mode,
            "tasks": [task.to_dict() for task in self.tasks],
            "seconds": round(self.seconds, 1),
        }

    def markdown(self) -> str:
        """The results as Markdown tables, one per task (for the README)."""
        lines = []
        for task in self.tasks:
            lines.append(
                f"**{task.task}** ({task.description}; {len(task.seeds)} seeds, {task.budget_iterations:,} iterations "
                f"= {self.cycles} cycles of 2 × {task.stepsize_iterations:,}; fixed λ = {task.best_fixed_lr:.3g}, "
                f"the best of {len(task.grid)} on validation; range test {self.range_mode})"
            )
            lines.append("")
            lines.append("| policy | λ | iterations to the fixed λ's final accuracy | speed-up | final test accuracy |")
            lines.append("|---|---|---|---|---|")
            for row in task.rows:
                lines.append(f"| {row.policy} | {row.lr} | {row.iterations_text()} | {row.speedup_text()} | {row.final_text()} |")
            lines.append("")
        return "\n".join(lines)


# ------------------------------------------------------------------- the run


ProgressCallback = Callable[[int, int, str], None]
"""Called after every training run with (runs done, runs in all, a label)."""


def count_runs(protocol: Protocol) -> int:
    """Range tests plus training runs the protocol makes (for a progress bar)."""
    per_seed = 1 + len(protocol.grid()) + len(protocol.policies)
    return len(protocol.tasks) * len(protocol.seeds) * per_seed


def run_protocol(protocol: Protocol, *, on_run: ProgressCallback | None = None, threads: int | None = 1) -> ClrReport:
    """Run the whole comparison and return its table.

    Args:
        protocol: from :func:`load_protocol`.
        on_run: progress callback, see :data:`ProgressCallback`.
        threads: BLAS threads during the runs (None leaves them alone). One by default:
            minibatches of 32 gain nothing from more, and on a busy machine a multithreaded
            BLAS spinning for cores made the small budget 7× slower (68 s against 10 s).

    Returns:
        A :class:`ClrReport`.

    Raises:
        DataError: when a task's data cannot be loaded.
    """
    if threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            return run_protocol(protocol, on_run=on_run, threads=None)
    started = time.perf_counter()
    report = ClrReport(
        protocol.name, protocol.budget, protocol.epochs, protocol.stepsize_epochs, protocol.cycles, protocol.range_test.mode
    )
    total, done = count_runs(protocol), 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if on_run is not None:
            on_run(done, total, label)

    for name, task in protocol.tasks.items():
        report.tasks.append(_run_task(name, task, protocol, tick))
    report.seconds = time.perf_counter() - started
    return report


def _run_task(name: str, task: ExperimentConfig, protocol: Protocol, tick: Callable[[str], None]) -> TaskResult:
    grid = protocol.grid()
    epochs = protocol.epochs
    datasets = {seed: load_dataset(task.data, seed, dtype=task.model.dtype) for seed in protocol.seeds}
    n_train = len(datasets[protocol.seeds[0]].train)
    steps_per_epoch = math.ceil(n_train / resolve_batch_size(task.optim.batch_size, n_train))
    budget = epochs * steps_per_epoch
    stepsize = protocol.stepsize_epochs * steps_per_epoch

    # 1. the range test, per seed
    bounds = []
    for seed in protocol.seeds:
        bounds.append({"seed": seed, **range_test_bounds(_with(task, seed=seed, epochs=1), datasets[seed], protocol.range_test)})
        tick(f"{name} seed {seed}: range test")

    # 2. the fixed-λ grid; the best mean final validation accuracy wins
    curves: dict[float, list[Curve]] = {}
    for lr in grid:
        curves[lr] = []
        for seed in protocol.seeds:
            curves[lr].append(run_curve(_with(task, seed=seed, epochs=epochs, lr=lr), datasets[seed]))
            tick(f"{name} seed {seed}: fixed λ={lr:.3g}")
    grid_rows = [
        {"lr": lr, "val_accuracy_mean": float(np.mean([c.final_val_accuracy for c in cs])),
         "diverged": sum(c.stop_reason == "diverged" for c in cs)}
        for lr, cs in curves.items()
    ]
    best = max(grid_rows, key=lambda row: row["val_accuracy_mean"])["lr"]
    fixed = curves[best]
    targets = [c.final for c in fixed]
    rows = [PolicyRow("fixed", f"{best:.3g}", [iterations_to_reach(c, t) for c, t in zip(fixed, targets)], targets)]

    # 3. the cyclical policies between each seed's bounds
    gamma = exp_range_gamma(protocol.exp_range_decay, budget)
    for policy in protocol.policies:
        iterations: list[int | None] = []
        finals: list[float] = []
        for seed, bound, target in zip(protocol.seeds, bounds, targets):
            if bound["base_lr"] is None or bound["max_lr"] is None:
                tick(f"{name} seed {seed}: {policy} skipped (no bounds)")
                continue
            schedule = {"name": policy, "base_lr": bound["base_lr"], "max_lr": bound["max_lr"], "stepsize": stepsize}
            if policy == "exp_range":
                schedule["gamma"] = gamma
            curve = run_curve(_with(task, seed=seed, epochs=epochs, schedule=schedule), datasets[seed])
            iterations.append(iterations_to_reach(curve, target))
            finals.append(curve.final)
            tick(f"{name} seed {seed}: {policy}")
        rows.append(PolicyRow(policy, _bounds_text(bounds), iterations, finals))
    add_speedups(rows)
    return TaskResult(
        task=name,
        description=_describe(task),
        seeds=list(protocol.seeds),
        steps_per_epoch=steps_per_epoch,
        budget_iterations=budget,
        stepsize_iterations=stepsize,
        bounds=bounds,
        grid=grid_rows,
        best_fixed_lr=best,
        rows=rows,
    )


def exp_range_gamma(decay: float, iterations: int) -> float:
    """γ per iteration that leaves ``decay`` of exp_range's amplitude after ``iterations``: γ = decay^(1/iterations)."""
    return decay ** (1.0 / iterations)


def _bounds_text(bounds: list[dict]) -> str:
    """The bounds a policy ran between: their medians over the seeds that had them."""
    found = [b for b in bounds if b["base_lr"] is not None and b["max_lr"] is not None]
    if not found:
        return "no bounds"
    base = float(np.median([b["base_lr"] for b in found]))
    top = float(np.median([b["max_lr"] for b in found]))
    return f"{base:.3g}..{top:.3g}"


def _describe(task: ExperimentConfig) -> str:
    model = task.model.kind if task.model.kind == "perceptron" else f"MLP {'-'.join(map(str, task.model.hidden))}"
    optim = task.optim.name + (f" μ={task.optim.momentum:g}" if task.optim.name in ("momentum", "nesterov") else "")
    return f"{model} on {task.data.name or task.data.path}, {optim}, batch {task.optim.batch_size}"
