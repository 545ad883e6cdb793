"""How much a sweep pays for tracking, what a second worker buys, and what pruning saves.

Runs ``bpexp sweep SPEC --json`` as a user would (a fresh folder per run, so every
run starts from an empty study) and reports, in one run:

1. tracking cost: the sweep's wall time with MLflow tracking (the default SQLite
   store, already created, as after a first run) against ``--no-track``, run as
   pairs one after the other and repeated, the median of the pairs' ratios; goal
   ≤ 5 %; also without pruning and with 2 workers;
2. throughput: finished trials (and minibatch steps) per minute with 1 and 2 workers,
   tracked and with ``--no-track``; goal ≥ 1.8× with 2 workers on 2 cores. With the
   pruner on, the two sweeps do different work (each worker samples its own trials,
   and the median pruner judges them against different peers), so the same is also
   measured on equal work: the spec as a grid without pruning (:func:`equal_work_spec`),
   where 1 and 2 workers run exactly the same trials (repeated and interleaved like
   the rest), once about as long as the spec's own sweep and once four times longer
   (``--long-lrs``), where what a sweep pays once (starting Python, importing MLflow,
   the last writes) weighs a quarter as much; and, for the ceiling, what the machine
   gives two trainings side by side against one alone;
3. pruning: the epochs the sweep spends with its pruner against the same sweep
   with ``pruner: none``, and both best values.

Usage::

    python benchmarks/sweep_speed.py                       # experiments/digits_sweep.yaml
    python benchmarks/sweep_speed.py --spec my_sweep.yaml --repeats 3 --json
    python benchmarks/sweep_speed.py --long-lrs 0          # without the long grid (half the time)

Not a test: the figures depend on the machine and its load. Progress goes to stderr,
the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "experiments" / "digits_sweep.yaml"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def migrated_store(folder: Path) -> Path:
    """An empty, already migrated MLflow SQLite file (creating one takes seconds, once per store)."""
    path = folder / "template.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    subprocess.run(
        [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient('sqlite:///{path}').search_experiments()"],
        check=True, env=env, capture_output=True,
    )
    return path


def run_sweep(spec: Path, template: Path, *args: str) -> dict[str, Any]:
    """One ``bpexp sweep`` in a fresh folder; returns its --json object plus the command's wall time."""
    folder = Path(tempfile.mkdtemp(prefix="bpexp-bench-"))
    try:
        shutil.copyfile(template, folder / "mlflow.db")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        cpu_before = _children_cpu()
        started = time.perf_counter()
        started_at = time.time()
        done = subprocess.run(
            # --no-report: the report after a sweep is its own feature (and reads every run
            # back from MLflow when tracked); what is measured here is the sweep
            [sys.executable, "-m", "bpexp.cli", "sweep", str(spec), "--json", "--no-report", *args],
            cwd=folder, env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - started
        ended_at = time.time()
        cpu = _children_cpu() - cpu_before
        if done.returncode != 0:
            raise SystemExit(f"bpexp sweep {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        payload = json.loads(done.stdout)
        payload["wall"] = wall
        first_start, last_end = trial_span(folder / "optuna.journal", payload["study_name"])
        payload["trial_phase"] = last_end - first_start
        payload["before_first_trial"] = first_start - started_at
        payload["after_last_trial"] = ended_at - last_end
        payload["cpu"] = cpu
        payload["epochs_total"] = sum(t["epochs"] or 0 for t in payload["trials"])
        payload["finished_trials"] = payload["counts"]["COMPLETE"] + payload["counts"]["PRUNED"]
        payload["steps_total"] = steps_total(spec, payload["trials"])
        return payload
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def trial_span(journal: Path, study_name: str) -> tuple[float, float]:
    """The first trial's start and the last trial's end (Unix time), read from the study itself.

    The command's wall time also holds what no second worker can share: starting Python,
    the range test, opening the study and the store before the first trial, and closing
    the parent run, writing what is left and the processes' exits after the last.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=study_name, storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return float("nan"), float("nan")
    return min(starts).timestamp(), max(ends).timestamp()  # naive local datetimes, as time.time() is


@functools.lru_cache(maxsize=None)
def _split_and_batch(spec: Path) -> tuple[int, int | str]:
    """The spec's training-split size and base batch size (read once per spec, not once per sweep)."""
    from bpexp.data import load_dataset
    from bpexp.sweep import sweep_spec_from_dict

    sweep = sweep_spec_from_dict(yaml.safe_load(spec.read_text()), source=str(spec))
    return len(load_dataset(sweep.base.data, sweep.base.seed).train), sweep.base.optim.batch_size


def steps_total(spec: Path, trials: list[dict]) -> int:
    """Minibatch steps the trials ran: epochs × ⌈n_train / batch⌉, from each trial's (or the spec's) batch size."""
    n_train, base_batch = _split_and_batch(spec)
    total = 0
    for trial in trials:
        batch = (trial.get("params") or {}).get("optim.batch_size", base_batch)
        per_epoch = 1 if batch == "full" else math.ceil(n_train / min(int(batch), n_train))
        total += (trial["epochs"] or 0) * per_epoch
    return total


def _children_cpu() -> float:
    # user + system CPU seconds of every finished child (and the children they waited for):
    # less sensitive than wall time to other jobs on a shared machine
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def no_pruning_spec(spec: Path, folder: Path) -> Path:
    raw = yaml.safe_load(spec.read_text())
    raw["sweep"]["pruner"] = {"name": "none"}
    path = folder / "no_pruning.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def equal_work_spec(spec: Path, folder: Path, lr_values: int = 2) -> Path:
    """The spec as a grid without pruning: 1 and 2 workers then run exactly the same trials.

    Every trial trains with the spec's one seed, so equal parameters mean equal work.
    The grid walks the space's ``choices``; λ (searched on a range, or ``lr: auto``)
    takes ``lr_values`` values spaced evenly on a log scale from half to twice the
    spec's ``optim.lr`` (2: just those two); other ranges keep the spec's base value.
    ``n_trials`` is the grid's size, so that no worker picks a subset.
    """
    raw = yaml.safe_load(spec.read_text())
    space = raw["sweep"].get("space") or {}
    grid = {key: value for key, value in space.items() if isinstance(value, dict) and "choices" in value}
    if space.get("lr") == "auto" or "optim.lr" in space and "optim.lr" not in grid:
        base_lr = float((raw.get("optim") or {}).get("lr", 0.1))
        exponents = [-1 + 2 * i / (lr_values - 1) for i in range(lr_values)] if lr_values > 1 else [0.0]
        grid["optim.lr"] = {"choices": [float(f"{base_lr * 2 ** e:.6g}") for e in exponents]}
    raw["sweep"].update(space=grid, sampler="grid", pruner={"name": "none"},
                        n_trials=math.prod(len(value["choices"]) for value in grid.values()))
    raw["sweep"].pop("lr_find", None)
    path = folder / f"equal_work_{lr_values}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


CORE_CHECK = """
import sys, time
from bpexp.config import config_from_dict
from bpexp.data import load_dataset
from bpexp.train import train
config = config_from_dict({"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [256], "l2": 1e-4},
                           "optim": {"lr": 0.05, "batch_size": 16}, "train": {"max_epochs": 30}})
data = load_dataset(config.data, config.seed)
train(config, data)
started = time.perf_counter()
for _ in range(int(sys.argv[1])):
    train(config, data)
print(time.perf_counter() - started)
"""


def machine_ceiling(runs: int = 10) -> dict[str, float]:
    """What 2 cores give 2 independent trainings: ``runs`` digits MLP trainings alone, then two such processes at once.

    Each process has one BLAS thread, as each of 2 workers has. Returns the seconds
    alone, the slower process's seconds side by side, and the throughput ratio.
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-c", CORE_CHECK, str(runs)]
    alone = float(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
    pair = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    together = max(float(proc.communicate()[0]) for proc in pair)
    return {"alone_s": alone, "side_by_side_s": together, "throughput_ratio": 2 * alone / together}


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="a sweep spec [experiments/digits_sweep.yaml]")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant: tracked or not, 1 or 2 workers, with the spec's pruner or none [2]")
    parser.add_argument("--long-lrs", type=int, default=8,
                        help="λ values of the long equal-work grid, where the one-off costs of a sweep (starting "
                             "Python, importing MLflow, the last writes) weigh little: 8 makes the digits grid 120 "
                             "trials; 0 skips it [8]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bpexp-bench-root-"))
    try:
        template = migrated_store(work)
        log("two trainings side by side against one alone ...")
        ceiling = machine_ceiling()
        flags = {"tracked": [], "--no-track": ["--no-track"]}
        workers = {"1 worker": [], "2 workers": ["--workers", "2"]}
        variants: dict[str, list[dict]] = {f"{k}, {w}": [] for k in flags for w in workers}
        # the spec without its pruner, 1 worker: the epochs pruning saves, and tracking's cost then
        unpruned: dict[str, list[dict]] = {f"{kind}, 1 worker": [] for kind in flags}
        # exactly the same trials for 1 and 2 workers: the spec as a grid, without pruning
        equal: dict[str, list[dict]] = {name: [] for name in variants}
        long: dict[str, list[dict]] = {name: [] for name in variants}
        plan = [(args.spec, variants, workers, ""), (no_pruning_spec(args.spec, work), unpruned, {"1 worker": []}, ", without pruning"),
                (equal_work_spec(args.spec, work), equal, workers, ", equal work (grid)")]
        if args.long_lrs > 0:
            plan.append((equal_work_spec(args.spec, work, args.long_lrs), long, workers, ", long equal work (grid)"))
        for repeat in range(args.repeats):
            # what is compared runs side by side in time, so that the shared machine's drifting
            # load hits both alike: tracked and --no-track as a pair, one first and then the
            # other in turn; the 1-worker pair next to the 2-worker pair
            kinds = list(flags) if repeat % 2 == 0 else list(reversed(flags))
            for spec_path, runs, counts, label in plan:
                for count in counts:
                    for kind in kinds:
                        name = f"{kind}, {count}"
                        log(f"[{repeat + 1}/{args.repeats}] {name}{label} ...")
                        result = run_sweep(spec_path, template, *flags[kind], *workers[count])
                        log(f"    {result['wall']:.1f} s wall, {result['finished_trials']} trials, {result['epochs_total']} epochs")
                        runs[name].append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    tracked = median([r["wall"] for r in variants["tracked, 1 worker"]])
    untracked = median([r["wall"] for r in variants["--no-track, 1 worker"]])
    tracked_cpu = median([r["cpu"] for r in variants["tracked, 1 worker"]])
    untracked_cpu = median([r["cpu"] for r in variants["--no-track, 1 worker"]])
    same_trials = len({r["epochs_total"] for r in variants["tracked, 1 worker"] + variants["--no-track, 1 worker"]}) == 1

    def overheads(runs: dict[str, list[dict]], count: str) -> list[float]:
        """Tracked wall time over --no-track's, pair by pair (each pair ran one after the other), minus one."""
        return [t["wall"] / u["wall"] - 1 for t, u in zip(runs[f"tracked, {count}"], runs[f"--no-track, {count}"])]

    pairs = {(spec, count): overheads(runs, count)
             for spec, runs in (("pruned", variants), ("unpruned", unpruned), ("equal", equal), ("long", long))
             for count in ("1 worker", "2 workers") if runs.get(f"tracked, {count}")}

    def per_minute(runs: list[dict], key: str) -> float:
        return median([r[key] / (r["wall"] / 60) for r in runs])

    def phase_per_minute(runs: list[dict]) -> float:
        return median([r["finished_trials"] / (r["trial_phase"] / 60) for r in runs])

    def paired_speedups(one: list[dict], two: list[dict], key: str) -> list[float]:
        """Per repeat, 2 workers' rate over 1 worker's: runs close in time, so the spread says how far one run can be trusted."""
        return [per_minute([b], key) / per_minute([a], key) for a, b in zip(one, two)]

    def grid_scaling(runs: dict[str, list[dict]], kind: str) -> dict[str, Any] | None:
        """1 against 2 workers on an equal-work grid (None when it was not run)."""
        one, two = runs[f"{kind}, 1 worker"], runs[f"{kind}, 2 workers"]
        if not one:
            return None
        paired = {key: paired_speedups(one, two, key) for key in ("steps_total", "finished_trials")}
        return {"trials": one[0]["finished_trials"],
                "wall_s": [median([r["wall"] for r in one]), median([r["wall"] for r in two])],
                "cpu_s": [median([r["cpu"] for r in one]), median([r["cpu"] for r in two])],
                "speedup_trials": median(paired["finished_trials"]),
                "speedup_trials_runs": [round(x, 2) for x in paired["finished_trials"]],
                "speedup_steps": median(paired["steps_total"]),
                "speedup_trial_phase": phase_per_minute(two) / phase_per_minute(one),
                # the same parameters and seed give the same epochs, so equal totals say the work was equal
                "epochs": [min(r["epochs_total"] for r in one + two), max(r["epochs_total"] for r in one + two)]}

    def scaling(kind: str) -> dict[str, Any]:
        one, two = variants[f"{kind}, 1 worker"], variants[f"{kind}, 2 workers"]
        return {
            "one_worker_trials_per_min": per_minute(one, "finished_trials"),
            "two_workers_trials_per_min": per_minute(two, "finished_trials"),
            "speedup_trials": per_minute(two, "finished_trials") / per_minute(one, "finished_trials"),
            "speedup_steps": per_minute(two, "steps_total") / per_minute(one, "steps_total"),
            "steps": [median([r["steps_total"] for r in one]), median([r["steps_total"] for r in two])],
            "wall_s": [median([r["wall"] for r in one]), median([r["wall"] for r in two])],
            "speedup_trial_phase": phase_per_minute(two) / phase_per_minute(one),
            # what a second worker cannot share, before the first trial and after the last
            "before_first_trial_s": [median([r["before_first_trial"] for r in runs]) for runs in (one, two)],
            "after_last_trial_s": [median([r["after_last_trial"] for r in runs]) for runs in (one, two)],
            "equal_work": grid_scaling(equal, kind),
            "long_equal_work": grid_scaling(long, kind),
            "goal": ">= 1.8",
        }

    pruned = variants["tracked, 1 worker"][0]
    unpruned_one = unpruned["tracked, 1 worker"][0]
    report = {
        "spec": str(args.spec),
        "repeats": args.repeats,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "tracking": {
            "tracked_wall_s": tracked,
            "untracked_wall_s": untracked,
            "overhead_fraction": median(pairs["pruned", "1 worker"]),
            "overhead_runs": [round(x, 3) for x in pairs["pruned", "1 worker"]],
            "unpruned_overhead_fraction": median(pairs["unpruned", "1 worker"]),
            "unpruned_overhead_runs": [round(x, 3) for x in pairs["unpruned", "1 worker"]],
            "two_workers_overhead_fraction": median(pairs["pruned", "2 workers"]),
            "two_workers_equal_work_overhead_fraction": median(pairs["equal", "2 workers"]),
            "two_workers_equal_work_overhead_runs": [round(x, 3) for x in pairs["equal", "2 workers"]],
            "long_equal_work_overhead_fraction": median(pairs["long", "1 worker"]) if ("long", "1 worker") in pairs else None,
            "long_equal_work_overhead_runs": [round(x, 3) for x in pairs.get(("long", "1 worker"), [])],
            "tracked_runs_s": [round(r["wall"], 2) for r in variants["tracked, 1 worker"]],
            "untracked_runs_s": [round(r["wall"], 2) for r in variants["--no-track, 1 worker"]],
            "tracked_cpu_s": tracked_cpu,
            "untracked_cpu_s": untracked_cpu,
            "cpu_overhead_fraction": (tracked_cpu - untracked_cpu) / untracked_cpu,
            "same_trials": same_trials,
            "goal": "<= 0.05",
        },
        "workers": {"tracked": scaling("tracked"), "untracked": scaling("--no-track"), "machine_ceiling": ceiling},
        "pruning": {
            "epochs_with_pruning": pruned["epochs_total"],
            "epochs_without_pruning": unpruned_one["epochs_total"],
            "epochs_saved_fraction": 1 - pruned["epochs_total"] / unpruned_one["epochs_total"],
            "best_with_pruning": pruned["best_trial"]["value"],
            "best_without_pruning": unpruned_one["best_trial"]["value"],
            "pruned_trials": pruned["counts"]["PRUNED"],
            "objective": pruned["objectives"],
        },
    }
    if args.json:
        print(json.dumps(report))
        return 0
    t, w, p = report["tracking"], report["workers"], report["pruning"]
    print(f"sweep speed: {args.spec.name}, {report['cores']} cores, median of {args.repeats} interleaved runs")
    print(f"  tracking    tracked {t['tracked_wall_s']:.1f} s vs --no-track {t['untracked_wall_s']:.1f} s wall (medians); "
          f"pair by pair {100 * t['overhead_fraction']:+.1f} % (median of {[round(100 * x, 1) for x in t['overhead_runs']]} %; "
          f"goal ≤ 5 %); CPU {t['tracked_cpu_s']:.1f} s vs {t['untracked_cpu_s']:.1f} s: {100 * t['cpu_overhead_fraction']:+.1f} %"
          + ("" if t["same_trials"] else "  [the two ran different trials]"))
    print(f"              runs: tracked {t['tracked_runs_s']} s, --no-track {t['untracked_runs_s']} s; "
          f"load average {', '.join(f'{x:.1f}' for x in report['load_average'] or [])}")
    print(f"              without pruning, 1 worker: {100 * t['unpruned_overhead_fraction']:+.1f} % "
          f"(pairs {[round(100 * x, 1) for x in t['unpruned_overhead_runs']]} %); with 2 workers: "
          f"{100 * t['two_workers_overhead_fraction']:+.1f} %, on equal work {100 * t['two_workers_equal_work_overhead_fraction']:+.1f} % "
          f"(pairs {[round(100 * x, 1) for x in t['two_workers_equal_work_overhead_runs']]} %)")
    if t["long_equal_work_overhead_fraction"] is not None:
        print(f"              long equal work, 1 worker: {100 * t['long_equal_work_overhead_fraction']:+.1f} % "
              f"(pairs {[round(100 * x, 1) for x in t['long_equal_work_overhead_runs']]} %)")
    c = report["workers"]["machine_ceiling"]
    print(f"  cores       two digits MLP trainings side by side: {c['side_by_side_s']:.2f} s against {c['alone_s']:.2f} s alone, "
          f"{c['throughput_ratio']:.2f}× the throughput of one (the ceiling for 2 workers)")
    for kind in ("tracked", "untracked"):
        w = report["workers"][kind]
        print(f"  workers     {kind}: 1 worker {w['one_worker_trials_per_min']:.1f} trials/min, 2 workers "
              f"{w['two_workers_trials_per_min']:.1f}: {w['speedup_trials']:.2f}× over the whole command (goal ≥ 1.8×; "
              f"{w['wall_s'][0]:.1f} s vs {w['wall_s'][1]:.1f} s), {w['speedup_trial_phase']:.2f}× from the first trial's start "
              f"to the last one's end")
        print(f"              before the first trial {w['before_first_trial_s'][0]:.2f} s vs {w['before_first_trial_s'][1]:.2f} s, "
              f"after the last one {w['after_last_trial_s'][0]:.2f} s vs {w['after_last_trial_s'][1]:.2f} s")
        print(f"              but other trials, other pruning: {w['steps'][0]} vs {w['steps'][1]} minibatch steps, steps/min "
              f"{w['speedup_steps']:.2f}×")
        for label, g in (("equal work", w["equal_work"]), ("long equal work", w["long_equal_work"])):
            if g is None:
                continue
            print(f"              {label}, the same {g['trials']} grid trials: {g['wall_s'][0]:.1f} s vs {g['wall_s'][1]:.1f} s "
                  f"({g['cpu_s'][0]:.1f} s vs {g['cpu_s'][1]:.1f} s CPU), trials/min {g['speedup_trials']:.2f}× (goal ≥ 1.8×; per "
                  f"repeat {g['speedup_trials_runs']}), steps/min {g['speedup_steps']:.2f}×, {g['speedup_trial_phase']:.2f}× from the "
                  "first trial's start to the last one's end; "
                  + ("{0} epochs in every run".format(g["epochs"][0]) if g["epochs"][0] == g["epochs"][1]
                     else "{0}-{1} epochs: the runs did not train the same epochs".format(*g["epochs"])))
    print(f"  pruning     {p['epochs_with_pruning']} epochs with the pruner ({p['pruned_trials']} trials pruned) vs "
          f"{p['epochs_without_pruning']} without ({100 * p['epochs_saved_fraction']:.0f} % saved); best {p['objective'][0]} "
          f"{p['best_with_pruning']:.4f} vs {p['best_without_pruning']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
