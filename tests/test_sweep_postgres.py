"""Sweeps on PostgreSQL: the Optuna storage and the MLflow backend store, each a fresh database.

The server already runs on 127.0.0.1:5432 (trust auth, user postgres); the
``pg_databases`` fixture makes the databases and drops them at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import yaml
from mlflow import MlflowClient

from bpexp.sweep import sweep_spec_from_dict
from bpexp.sweep.storage import open_storage
from bpexp.sweep.worker import ATTR_RUN_ID, ATTR_WORKER, late_run_ids, reap_dead_trials, trial_run_id
from bpexp.tracking import MlflowTracker

SPEC = {
    "name": "pg-sweep",
    "experiment": "pg-sweep",
    "data": {"name": "iris"},
    "optim": {"lr": 0.3, "batch_size": 16},
    "train": {"max_epochs": 4},
    "sweep": {
        "n_trials": 4,
        "pruner": "none",
        "space": {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}, "schedule.name": {"choices": ["constant", "one_cycle"]}},
    },
}


EPOCHS, TRIALS = 150, 8  # trials of most of a second


def test_two_machines_share_one_study_on_postgresql(tmp_path, pg_databases, mlflow_pg_uri):
    """Two `bpexp sweep` processes started at once on an empty study database, as two machines would."""
    storage = pg_databases("optuna")
    tracking = mlflow_pg_uri
    # trials long and many enough that the second process, which waits for the first one's
    # setup (range of the study, parent run), still finds trials to run
    spec = {**SPEC, "data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [64]},
            "optim": {"lr": 0.05, "batch_size": 8}, "train": {"max_epochs": EPOCHS},
            "sweep": {**SPEC["sweep"], "n_trials": TRIALS, "space": {"optim.lr": {"low": 0.01, "high": 0.1, "log": True}}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "bpexp.cli", "sweep", "s.yaml", "--storage", storage, "--tracking-uri", tracking, "--json"]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=150) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "UniqueViolation" not in err and "Traceback" not in err
    payloads = [json.loads(out) for out, _ in outputs]
    assert payloads[0]["parent_run_id"] == payloads[1]["parent_run_id"]  # one parent for the study

    study = optuna.load_study(study_name="pg-sweep", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == TRIALS and len(states) == TRIALS
    pids = {t.user_attrs[ATTR_WORKER]["pid"] for t in study.trials}
    assert len(pids) == 2  # both processes ran trials

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("pg-sweep")
    runs = client.search_runs([experiment.experiment_id])
    parent = payloads[0]["parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == TRIALS + 1 and len(children) == TRIALS
    assert sorted(int(r.data.params["trial_number"]) for r in children) == list(range(TRIALS))
    late = late_run_ids(study.user_attrs)  # the ids the tracking process gave after a trial ended
    assert {r.info.run_id for r in children} == {trial_run_id(t, late) for t in study.trials}
    for run in children:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == EPOCHS
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_trial_without_heartbeat_is_failed_and_queued_again(pg_databases, mlflow_sqlite_uri):
    """A worker on another machine dies mid-trial: after the grace period the trial is FAILED, its run too, and retried."""
    storage_url = pg_databases("heartbeat")
    spec = sweep_spec_from_dict({**SPEC, "sweep": {**SPEC["sweep"], "heartbeat_interval": 1, "grace_period": 2}})
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="hb", storage=storage)
    tracker = MlflowTracker(mlflow_sqlite_uri, "hb")
    tracker.check()
    trial = study.ask()
    trial.suggest_float("optim.lr", 0.01, 1.0, log=True)
    trial.set_user_attr(ATTR_WORKER, {"host": "another-machine", "pid": 1, "started": None})
    run_id = tracker.start_run("hb-trial-0")
    trial.set_user_attr(ATTR_RUN_ID, run_id)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("hb"), trial.number)
    storage.record_heartbeat(trial_id)  # one beat, then the worker "dies"
    assert reap_dead_trials(study, storage, tracker) == []  # still within the grace period
    time.sleep(3)
    assert reap_dead_trials(study, storage, tracker) == [0]
    trials = study.get_trials()
    assert trials[0].state.name == "FAIL"
    assert trials[1].state.name == "WAITING" and trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0
    record = tracker.read_run(run_id)
    assert record.status == "FAILED" and "heartbeat" in record.tags["bpexp.error"]
    assert spec.sweep.grace_period == 2
