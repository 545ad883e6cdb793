"""What writing one sweep trial's MLflow run costs, with the learning curves or every History series.

A trial run is written as a sweep writes it: ``start_run`` nested under a parent,
one ``log_batch`` (the per-epoch metrics, the final metrics, the flattened config,
the tags), the artifacts (history.json and weights.npz) and ``end_run``. This
script writes ``--trials`` such runs of a digits MLP trained for ``--epochs``
epochs into a fresh SQLite store, in this process, and prints the CPU time per run
for ``sweep.metrics: curves`` (5 series per epoch) and ``all`` (11), interleaved.

    python benchmarks/tracking_write_cost.py
    python benchmarks/tracking_write_cost.py --trials 40 --json

Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="runs written per variant and round [20]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported [3]")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the trained run [60, the digits sweep's budget]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    from bpexp.config import config_from_dict
    from bpexp.tracking import CURVE_METRICS, EPOCH_METRICS, EpochLogger, MlflowTracker, log_result
    from bpexp.train import train

    config = config_from_dict({"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [256], "l2": 1e-4},
                               "optim": {"lr": 0.05, "batch_size": 32}, "train": {"max_epochs": args.epochs}})
    result = train(config)
    variants = {"curves": CURVE_METRICS, "all": EPOCH_METRICS}
    per_run: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bpexp-bench-") as folder:
        tracker = MlflowTracker(f"sqlite:///{Path(folder, 'mlflow.db')}", "write-cost")
        tracker.check()
        parent = tracker.start_run("parent")

        def write(keys: tuple[str, ...]) -> None:
            run_id = tracker.start_run("trial", parent_run_id=parent, tags={"bpexp.kind": "trial"})
            log_result(tracker, run_id, result, params={"trial_number": 0}, curves=False,
                       logger=EpochLogger(tracker, run_id, keys=keys))
            tracker.end_run(run_id, "FINISHED")

        for keys in variants.values():  # warm up: the first runs of a store pay for its caches
            write(keys)
        for _ in range(args.rounds):
            for name, keys in variants.items():
                started = time.process_time()
                for _ in range(args.trials):
                    write(keys)
                per_run[name].append((time.process_time() - started) / args.trials)
    summary = {name: {"series_per_epoch": len(variants[name]), "metric_rows": len(variants[name]) * result.epochs,
                      "cpu_ms_per_run": 1e3 * statistics.median(values)} for name, values in per_run.items()}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"one trial run ({result.epochs} epochs) written to a SQLite store, CPU time per run, median of {args.rounds} rounds")
    for name, row in summary.items():
        print(f"  sweep.metrics: {name:<6}  {row['series_per_epoch']:2d} series, {row['metric_rows']:4d} per-epoch rows: "
              f"{row['cpu_ms_per_run']:6.1f} ms")
    ratio = summary["curves"]["cpu_ms_per_run"] / summary["all"]["cpu_ms_per_run"]
    print(f"  curves / all: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
