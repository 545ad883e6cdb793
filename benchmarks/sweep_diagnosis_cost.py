"""What does diagnosis cost on a real sweep's trials, against their training?

The labelled suite (benchmarks/diagnosis_eval.py) measures cases built to show one
failure each. A sweep's trials are another population: many end on their epoch budget
with ``stop_loss`` not met, which sends non_convergence to its physical check (λ_max
and a few full-batch steps from the final weights). This script runs the sweep spec
without tracking, then trains every complete trial's config again and diagnoses it,
timing both in this thread's CPU with one BLAS thread, and prints the distribution of
diagnosis / training and which checks the costly ones ran.

    python benchmarks/sweep_diagnosis_cost.py                        # experiments/digits_sweep.yaml
    python benchmarks/sweep_diagnosis_cost.py --spec my_sweep.yaml --json

Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "experiments" / "digits_sweep.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="a sweep spec [experiments/digits_sweep.yaml]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from threadpoolctl import threadpool_limits

    from bpexp.config import config_from_dict
    from bpexp.data import load_dataset
    from bpexp.diagnose import diagnose
    from bpexp.sweep.worker import ATTR_CONFIG
    from bpexp.train import train

    with tempfile.TemporaryDirectory(prefix="bpexp-bench-") as folder:
        done = subprocess.run([sys.executable, "-m", "bpexp.cli", "sweep", str(args.spec.resolve()), "--no-track", "--no-report",
                               "--json"], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bpexp sweep failed:\n{done.stderr[-2000:]}")
        payload = json.loads(done.stdout)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=payload["study_name"],
                                  storage=JournalStorage(JournalFileBackend(str(Path(folder, "optuna.journal")))))
        trials = [t for t in study.trials if t.state.name == "COMPLETE" and t.user_attrs.get(ATTR_CONFIG)]

    rows = []
    datasets: dict[str, object] = {}
    with threadpool_limits(limits=1):
        for trial in trials:
            config = config_from_dict(trial.user_attrs[ATTR_CONFIG])
            key = json.dumps([config.data.model_dump(mode="json"), config.seed, config.model.dtype], sort_keys=True)
            if key not in datasets:
                datasets[key] = load_dataset(config.data, config.seed, dtype=config.model.dtype)
            cpu = time.thread_time()
            result = train(config, datasets[key])
            train_cpu = time.thread_time() - cpu
            cpu = time.thread_time()
            findings = diagnose(result, twin=False)
            diagnosis_cpu = time.thread_time() - cpu
            rows.append({"trial": trial.number, "epochs": result.epochs, "stop_reason": result.stop_reason,
                         "stop_loss": config.train.stop_loss, "train_ms": 1e3 * train_cpu, "diagnosis_ms": 1e3 * diagnosis_cpu,
                         "share": diagnosis_cpu / train_cpu if train_cpu > 0 else float("nan"),
                         "checks": sorted(findings.check_cpu_seconds), "found": [f.mode for f in findings],
                         "check_ms": {k: round(1e3 * v, 1) for k, v in findings.check_cpu_seconds.items()}})

    shares = sorted(r["share"] for r in rows)
    summary = {
        "spec": str(args.spec), "trials": len(rows),
        "median": statistics.median(shares) if shares else None,
        "p90": shares[int(0.9 * (len(shares) - 1))] if shares else None,
        "max": shares[-1] if shares else None,
        "total": sum(r["diagnosis_ms"] for r in rows) / max(1e-9, sum(r["train_ms"] for r in rows)),
        "checks_run": dict(Counter(c for r in rows for c in r["checks"])),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"diagnosis CPU / training CPU over the {len(rows)} complete trials of {args.spec.name} (1 BLAS thread)")
    print(f"  median {100 * summary['median']:.1f} %, 90th percentile {100 * summary['p90']:.1f} %, max {100 * summary['max']:.1f} %; "
          f"all trials together {100 * summary['total']:.1f} %")
    print(f"  physical checks run: {summary['checks_run'] or 'none'}")
    for row in sorted(rows, key=lambda r: -r["share"])[:5]:
        print(f"  trial {row['trial']:3d}: {row['diagnosis_ms']:6.1f} ms of diagnosis for {row['train_ms']:6.1f} ms of training "
              f"({100 * row['share']:.0f} %), {row['epochs']} epochs, {row['stop_reason']}, stop_loss {row['stop_loss']}, "
              f"checks {', '.join(f'{k} {v} ms' for k, v in row['check_ms'].items()) or 'none'}, found {', '.join(row['found']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
