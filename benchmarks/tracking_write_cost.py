"""What writing one sweep trial's MLflow run costs, with the learning curves or every History series.

A trial run is written as a sweep writes it: ``start_run`` nested under a parent,
one ``log_batch`` (the per-epoch metrics, the final metrics, the flattened config,
the tags), the artifacts (history.json and weights.npz) and ``end_run``. This
script writes ``--trials`` such runs of a digits MLP trained for ``--epochs``
epochs and prints the CPU time per run for ``sweep.metrics: curves`` (5 series per
epoch) and ``all`` (11), interleaved, in this process:

- into a fresh SQLite store, the default: this process runs MLflow's SQLAlchemy
  store, so the figure is all the CPU a run costs; written as bpexp writes it, past
  MLflow's ORM (``bpexp.tracking_sql``), as the sweep's tracking process writes it
  without MLflow (``bpexp.tracking_direct``), and through MLflow's own ``create_run``,
  ``log_batch`` and ``set_terminated``, with the ratios;
- with ``--server``, also through a real ``mlflow server`` on 127.0.0.1 over its
  own SQLite store, as a team's tracking server: the client's CPU per run (what the
  sweep's machine spends) and the server's (read from /proc, Linux only).

It also prints what a tracking process pays once, in a fresh interpreter: opening
the store as a sweep's tracking process does (``open_tracker``: no MLflow import on
a migrated SQL store), and importing MLflow and opening it with MlflowTracker.

    python benchmarks/tracking_write_cost.py
    python benchmarks/tracking_write_cost.py --server --trials 40 --json

Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log  # noqa: E402

OPEN_COST = """
import sys, time
started = time.process_time()
if sys.argv[2] == "direct":
    from bpexp.tracking_direct import open_tracker
    tracker = open_tracker(sys.argv[1], "open-cost")
else:
    from bpexp.tracking import MlflowTracker
    tracker = MlflowTracker(sys.argv[1], "open-cost")
    tracker.check()
print(time.process_time() - started, type(tracker).__name__, "mlflow" in sys.modules)
"""
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def open_cost(uri: str, how: str) -> dict:
    """CPU seconds a fresh interpreter spends opening ``uri`` (``how``: "direct" as a sweep's tracking process opens it, or "mlflow").

    Returns the seconds, the tracker's class and whether MLflow was imported.
    """
    done = subprocess.run([sys.executable, "-c", OPEN_COST, uri, how], env=ENV, check=True, capture_output=True, text=True)
    seconds, tracker, imported = done.stdout.split()[-3:]
    return {"cpu_s": float(seconds), "tracker": tracker, "mlflow_imported": imported == "True"}


def session_cpu(session: int) -> float | None:
    """CPU seconds of every live process in ``session`` (a server and its workers), from /proc; None off Linux."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except FileNotFoundError:
        return None
    for pid in pids:
        try:
            fields = Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 of stat, the session id
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 120.0) -> Iterator[tuple[str, int]]:
    """``mlflow server`` on 127.0.0.1 over a fresh SQLite store, as ``bpexp ui`` starts it; yields its URI and session id."""
    from bpexp.cli.ui_cmd import server_command, wait_for_health

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = server_command(f"sqlite:///{folder / 'server.db'}", "127.0.0.1", port, str(folder / "server-artifacts"), auth=False)
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen(command + ["--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(uri, proc, timeout)
        yield uri, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="runs written per variant and round [20]")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported [3]")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the trained run [60, the digits sweep's budget]")
    parser.add_argument("--server", action="store_true", help="also write through a real mlflow server on 127.0.0.1")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from bpexp.config import config_from_dict
    from bpexp.tracking import CURVE_METRICS, EPOCH_METRICS, EpochLogger, MlflowTracker, log_result
    from bpexp.tracking_direct import DirectSqlTracker
    from bpexp.train import train

    config = config_from_dict({"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [256], "l2": 1e-4},
                               "optim": {"lr": 0.05, "batch_size": 32}, "train": {"max_epochs": args.epochs}})
    result = train(config)
    variants = {"curves": CURVE_METRICS, "all": EPOCH_METRICS}
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bpexp-bench-") as folder, contextlib.ExitStack() as stack:
        stores = {"sqlite": (f"sqlite:///{Path(folder, 'mlflow.db')}", None)}
        if args.server:
            stores["server"] = stack.enter_context(mlflow_server(Path(folder)))
        for store, (uri, session) in stores.items():
            # on a SQL store, runs are written past MLflow's ORM (bpexp.tracking_sql) and, for
            # the ratio, through MLflow's own create_run, log_batch and set_terminated, interleaved
            writers = {"sql": True, "mlflow": False} if store == "sqlite" else {"mlflow": False}
            trackers = {name: MlflowTracker(uri, "write-cost", sql_writes=sql) for name, sql in writers.items()}
            parent = None
            for tracker in trackers.values():
                tracker.check()
                parent = parent or tracker.start_run("parent")
            if store == "sqlite":  # the store is migrated now: what the sweep's tracking process does
                direct = DirectSqlTracker.open(uri, "write-cost")
                assert direct is not None, "the direct tracker does not serve a store MLflow just made"
                direct.check()
                trackers = {"sql": trackers["sql"], "direct": direct, "mlflow": trackers["mlflow"]}

            def write(tracker: MlflowTracker, keys: tuple[str, ...]) -> None:
                run_id = tracker.start_run("trial", parent_run_id=parent, tags={"bpexp.kind": "trial"})
                log_result(tracker, run_id, result, params={"trial_number": 0}, curves=False,
                           logger=EpochLogger(tracker, run_id, keys=keys))
                tracker.end_run(run_id, "FINISHED")

            cases = [(writer, name) for writer in trackers for name in variants]
            for writer, name in cases:  # warm up: the first runs of a store pay for its caches
                write(trackers[writer], variants[name])
            client: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
            server: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
            for _ in range(args.rounds):
                for writer, name in cases:
                    server_before = session_cpu(session) if session is not None else None
                    started = time.process_time()
                    for _ in range(args.trials):
                        write(trackers[writer], variants[name])
                    client[writer, name].append((time.process_time() - started) / args.trials)
                    if server_before is not None:
                        server[writer, name].append((session_cpu(session) - server_before) / args.trials)
            log(f"{store}: opening the store in a fresh interpreter ...")
            summary[store] = {
                "uri": uri.split("://")[0],
                "open": {how: open_cost(uri, how) for how in ("direct", "mlflow")},
                "writers": {
                    writer: {
                        name: {"series_per_epoch": len(variants[name]), "metric_rows": len(variants[name]) * result.epochs,
                               "cpu_ms_per_run": 1e3 * statistics.median(client[writer, name]),
                               "server_cpu_ms_per_run": 1e3 * statistics.median(server[writer, name]) if server[writer, name] else None}
                        for name in variants
                    }
                    for writer in trackers
                },
            }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"one trial run ({result.epochs} epochs) written as a sweep writes it, CPU time per run, median of {args.rounds} rounds")
    for store, row in summary.items():
        where = "a SQLite store, in this process" if store == "sqlite" else "an mlflow server on 127.0.0.1 (SQLite behind it)"
        opened = row["open"]
        print(f"  {where}: opening the store once: {opened['mlflow']['cpu_s']:.2f} s with MLflow's import (MlflowTracker), "
              f"{opened['direct']['cpu_s']:.2f} s as a sweep's tracking process opens it ({opened['direct']['tracker']}, "
              f"MLflow {'imported' if opened['direct']['mlflow_imported'] else 'not imported'})")
        for writer, costs in row["writers"].items():
            how = {"sql": "past MLflow's ORM (bpexp.tracking_sql)", "direct": "without MLflow (bpexp.tracking_direct)",
                   "mlflow": "through MLflow's create_run, log_batch and set_terminated"}[writer]
            for name, cost in costs.items():
                server_part = (f", the server {cost['server_cpu_ms_per_run']:6.1f} ms" if cost["server_cpu_ms_per_run"] is not None
                               else "")
                print(f"    {how}, sweep.metrics: {name:<6}  {cost['series_per_epoch']:2d} series, "
                      f"{cost['metric_rows']:4d} per-epoch rows: {cost['cpu_ms_per_run']:6.1f} ms{server_part}")
        for ours, label in (("sql", "past the ORM"), ("direct", "without MLflow")):
            if ours in row["writers"]:
                for name in variants:
                    ratio = row["writers"]["mlflow"][name]["cpu_ms_per_run"] / row["writers"][ours][name]["cpu_ms_per_run"]
                    print(f"    sweep.metrics: {name}: MLflow's API / {label}: {ratio:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
