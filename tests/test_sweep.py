"""The sweep: spec validation, the search space, and whole sweeps read back through MLflow and Optuna.

Sweeps here are tiny (iris, a handful of trials of a few epochs) and run against the
real stores: MLflow's SQLite file and Optuna's journal file, the defaults.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from bpexp.cli import cli
from bpexp.errors import ConfigError
from bpexp.sweep import run_sweep, sweep_spec_from_dict
from bpexp.sweep.search import iterations_to_target, objective_value, suggest_params
from bpexp.sweep.spec import Range, apply_params
from bpexp.tracking import CURVE_METRICS, MlflowTracker, load_weights, make_tracker
from bpexp.train import History

BASE = {
    "name": "iris-sweep",
    "data": {"name": "iris"},
    "optim": {"lr": 0.3, "batch_size": 16},
    "schedule": {"name": "triangular", "stepsize_epochs": 1},
    "train": {"max_epochs": 5},
}


def spec_dict(**sweep) -> dict:
    """BASE with a sweep section (n_trials 3 and a λ range unless given)."""
    section = {"n_trials": 3, "space": {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}}, **sweep}
    return {**BASE, "sweep": section}


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


# ------------------------------------------------------------------ bad specs


@pytest.mark.parametrize(
    ("sweep", "field", "words"),
    [
        ({"space": {"optim.lr": {"low": 1.0, "high": 0.1, "log": True}}}, "sweep.space.optim.lr", "inverted"),
        ({"space": {"optim.lr": {"low": 0.1, "high": 0.1}}}, "sweep.space.optim.lr", "empty"),
        ({"space": {"optim.lr": {"low": 0.0, "high": 1.0}}}, "sweep.space.optim.lr", "must be > 0"),
        ({"space": {"schedule.base_lr": {"low": -0.1, "high": 0.1}}}, "sweep.space.schedule.base_lr", "must be > 0"),
        ({"space": {"train.stop_loss": {"low": 0.0, "high": 0.5}}}, "sweep.space.train.stop_loss", "must be > 0"),
        ({"space": {"schedule.name": {"choices": ["constant", "cyclic"]}}}, "sweep.space.schedule.name", "unknown schedule 'cyclic'"),
        ({"objective": "iterations_to_target", "target_accuracy": 1.2}, "sweep.target_accuracy", "can never be reached"),
        ({"objective": "iterations_to_target"}, "sweep.target_accuracy", "is needed"),
        ({"objective": ["val_accuracy", "val_loss"], "pruner": "median"}, "sweep.pruner", "multi-objective"),
        ({"objective": "accuracy"}, "sweep.objective", "unknown objective 'accuracy'"),
        ({"n_trials": 0}, "sweep.n_trials", ">= 1"),
        ({"samplr": "tpe"}, "sweep.samplr", "unknown key"),
        ({"space": {"optim.lrr": {"low": 0.1, "high": 1.0}}}, "sweep.space.optim.lrr", "refused"),
        ({"space": {"optim.batch_size": {"choices": [0, 16]}}}, "sweep.space.optim.batch_size", "refused"),
        ({"space": {"train.patience": {"low": 1.5, "high": 4}}}, "sweep.space.train.patience", "integers"),
        ({"space": {"optim.lr": {"low": 0.1, "high": 1.0}}, "sampler": "grid"}, "sweep.space.optim.lr", "grid sampler"),
        ({"space": {"lr": "auto", "optim.lr": {"low": 0.1, "high": 1.0}}}, "sweep.space", "remove sweep.space.optim.lr"),
        ({"space": {"lr": 0.1}}, "sweep.space.lr", "only value"),
        ({"space": {"schedule.stepsize_epochs": {"low": 1, "high": 4}, "schedule.name": {"choices": ["constant"]}}},
         "sweep.space.schedule.stepsize_epochs", "no schedule in the sweep"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(sweep, field, words):
    raw = {**BASE, "sweep": {"n_trials": 3, "space": {"optim.lr": {"low": 0.01, "high": 1.0}}, **sweep}}
    with pytest.raises(ConfigError) as info:
        sweep_spec_from_dict(raw)
    message = str(info.value)
    assert field in message and words in message, message


def test_a_spec_without_sweep_section_is_refused():
    with pytest.raises(ConfigError, match="needs a 'sweep' section"):
        sweep_spec_from_dict(dict(BASE))


@given(
    low=st.floats(-10, 10, allow_nan=False),
    high=st.floats(-10, 10, allow_nan=False),
    log=st.booleans(),
)
def test_range_accepts_exactly_the_non_empty_ranges(low, high, log):
    ok = low < high and (not log or low > 0)
    try:
        Range(low=low, high=high, log=log)
    except ValueError:
        assert not ok
    else:
        assert ok


def test_bad_spec_exits_2_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec_dict(space={"optim.lr": {"low": 3, "high": 1e-3, "log": True}})))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--json"])
    assert result.exit_code == 2
    assert "sweep.space.optim.lr" in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == [path]  # no study, no tracking store


def test_bad_data_exits_2_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**spec_dict(), "data": {"path": "missing.npz"}}))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--json"])
    assert result.exit_code == 2 and "missing.npz: no such file" in result.stderr
    assert list(tmp_path.iterdir()) == [path]  # no study, no tracking store


def test_unreachable_storage_exits_2_fast(tmp_path, monkeypatch, mlflow_sqlite_uri):
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec_dict()))
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["sweep", str(path), "--storage", f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", "--tracking-uri", mlflow_sqlite_uri]
    )
    assert result.exit_code == 2
    assert "study storage" in result.stderr and "cannot be reached" in result.stderr
    assert time.monotonic() - started < 5
    client = MlflowClient(mlflow_sqlite_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no run was made


# -------------------------------------------------------------------- the space


def test_conditional_schedule_keys_are_asked_only_when_the_schedule_has_them():
    spec = sweep_spec_from_dict(
        spec_dict(
            space={
                "schedule.name": {"choices": ["constant", "triangular2"]},
                "schedule.stepsize_epochs": {"low": 1, "high": 4},
                "optim.lr": {"low": 0.01, "high": 1.0, "log": True},
            }
        )
    )
    constant = suggest_params(optuna.trial.FixedTrial({"schedule.name": "constant", "optim.lr": 0.1}), spec)
    assert constant == {"schedule.name": "constant", "optim.lr": 0.1}
    cyclic = suggest_params(
        optuna.trial.FixedTrial({"schedule.name": "triangular2", "optim.lr": 0.1, "schedule.stepsize_epochs": 2.5}), spec
    )
    assert cyclic["schedule.stepsize_epochs"] == 2.5


def test_auto_lr_centres_lambda_and_the_cycle_on_the_range_test():
    spec = sweep_spec_from_dict(spec_dict(space={"lr": "auto"}, lr_find={"spread": 2}))
    auto = {"base_lr": 0.02, "max_lr": 0.4}
    params = suggest_params(optuna.trial.FixedTrial({"optim.lr": 0.5}), spec, auto)
    assert params == {"optim.lr": 0.5, "schedule.max_lr": 0.5, "schedule.base_lr": 0.02}
    trial = optuna.create_study().ask()
    suggest_params(trial, spec, auto)
    assert trial.distributions["optim.lr"] == optuna.distributions.FloatDistribution(0.2, 0.8, log=True)  # max_lr ÷× 2


def test_changing_the_schedule_keeps_the_fields_it_accepts():
    raw = apply_params(BASE, {"schedule.name": "exp_range", "optim.lr": 0.2})
    assert raw["schedule"] == {"name": "exp_range", "stepsize_epochs": 1}
    raw = apply_params(BASE, {"schedule.name": "constant"})
    assert raw["schedule"] == {"name": "constant"}
    assert BASE["schedule"] == {"name": "triangular", "stepsize_epochs": 1}  # the base is not changed


def test_iterations_to_target_is_the_first_epoch_reaching_it():
    history = History(val_accuracy=[0.5, 0.79, 0.81, 0.9], iterations=[10, 20, 30, 40])
    assert iterations_to_target(history, 0.8) == 30
    assert iterations_to_target(history, 0.9) == 40
    assert iterations_to_target(history, 0.95) == math.inf


# -------------------------------------------------- one sweep with every outcome

MIXED = {
    "name": "mixed",
    "data": {"name": "iris", "imbalance": 1.5},
    "optim": {"lr": 0.3, "batch_size": 16},
    "schedule": {"name": "triangular", "stepsize_epochs": 1},
    "train": {"max_epochs": 5},
    "sweep": {
        "n_trials": 5,
        "sampler": "random",
        "seed": 6,  # a seed whose first trials show every outcome below (sampling is deterministic per seed)
        "pruner": {"name": "median", "startup_trials": 2, "warmup_epochs": 2},
        # λ = 80 diverges (on balanced-enough data); λ = 3e-4 falls behind and is pruned;
        # majority_class 7 does not exist in iris's 3 classes, so that trial raises a DataError
        "space": {"optim.lr": {"choices": [0.3, 80.0, 0.0003]}, "data.majority_class": {"choices": [0, 1, 2, 7]}},
    },
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, _mlflow_template_db):
    """The MIXED sweep run once through the CLI, in a folder with the default stores."""
    import shutil

    folder = tmp_path_factory.mktemp("mixed")
    shutil.copyfile(_mlflow_template_db, folder / "mlflow.db")
    spec = folder / "mixed.yaml"
    spec.write_text(yaml.safe_dump(MIXED))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(cli, ["sweep", str(spec), "--experiment", "mixed", "--json"], env={"MLFLOW_TRACKING_URI": None})
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return folder, json.loads(result.stdout)


def _runs(folder: Path, experiment: str = "mixed"):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_every_outcome_occurs(mixed):
    _, payload = mixed
    states = {(t["state"], t["stop_reason"]) for t in payload["trials"]}
    assert ("COMPLETE", "diverged") in states
    assert ("COMPLETE", "max_epochs") in states
    assert ("PRUNED", "pruned") in states
    assert any(state == "FAIL" for state, _ in states)
    assert payload["counts"]["COMPLETE"] + payload["counts"]["PRUNED"] == 5 and payload["finished"]


def test_mlflow_holds_a_parent_and_one_child_per_trial(mixed):
    folder, payload = mixed
    client, runs = _runs(folder)
    parent = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == payload["parent_run_id"]]
    assert [p.info.run_id for p in parent] == [payload["parent_run_id"]]
    assert len(children) == len(payload["trials"]) == len(runs) - 1
    by_number = {int(r.data.params["trial_number"]): r for r in children}
    assert sorted(by_number) == [t["number"] for t in payload["trials"]]
    for trial in payload["trials"]:
        run = by_number[trial["number"]]
        assert run.info.run_id == trial["run_id"]
        assert run.data.tags["optuna.study_name"] == "mixed"
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[trial["state"]]
        assert run.info.status == expected
        if trial["state"] == "FAIL":
            assert "DataError" in run.data.tags["bpexp.error"] and "majority_class" in run.data.tags["bpexp.error"]
            continue
        for key in CURVE_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == list(range(1, trial["epochs"] + 1))
        assert "grad_norm" not in run.data.metrics  # sweep.metrics: curves; the norms stay in history.json


def test_children_carry_diagnosis_tags_and_loadable_artifacts(mixed, tmp_path):
    folder, payload = mixed
    client, runs = _runs(folder)
    complete = [t for t in payload["trials"] if t["state"] == "COMPLETE"]
    for trial in complete:
        run = client.get_run(trial["run_id"])
        tags = run.data.tags
        modes = trial["diagnosis"]
        assert tags["bpexp.diagnosis"] == (",".join(modes) if modes else "none")
        for mode in modes:
            assert f"bpexp.diagnosis.{mode}" in tags
        assert tags["bpexp.stop_reason"] == trial["stop_reason"]
        names = {a.path for a in client.list_artifacts(trial["run_id"])}
        assert {"history.json", "weights.npz"} <= names
        local = client.download_artifacts(trial["run_id"], "weights.npz", str(tmp_path))
        weights = load_weights(local)  # allow_pickle=False inside
        assert all(np.issubdtype(w.dtype, np.floating) for w in weights.values())
        history = json.loads(Path(client.download_artifacts(trial["run_id"], "history.json", str(tmp_path))).read_text())
        assert len(history["epoch"]) == trial["epochs"]
    diverged = [t for t in complete if t["stop_reason"] == "diverged"]
    assert all(t["diagnosis"] for t in diverged)  # a diverged trial is FINISHED with its diagnosis


def test_parent_carries_the_best_trial_and_the_counts(mixed, tmp_path):
    folder, payload = mixed
    client, _ = _runs(folder)
    parent = client.get_run(payload["parent_run_id"])
    best = payload["best_trial"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["bpexp.best_trial"] == str(best["number"])
    assert float(parent.data.params["optim.lr"]) == best["params"]["optim.lr"]
    assert parent.data.params["trial_number"] == str(best["number"])
    assert parent.data.metrics["best.val_loss"] == pytest.approx(best["value"])
    assert parent.data.metrics["trials.pruned"] == payload["counts"]["PRUNED"]
    for mode, count in payload["diagnosis_counts"].items():
        assert parent.data.metrics[f"diagnosis.{mode}"] == count
    assert sum(payload["diagnosis_counts"].values()) >= payload["counts"]["COMPLETE"]
    names = {a.path for a in client.list_artifacts(payload["parent_run_id"])}
    assert "sweep_spec.yaml" in names
    spec = yaml.safe_load(Path(client.download_artifacts(payload["parent_run_id"], "sweep_spec.yaml", str(tmp_path))).read_text())
    assert spec["sweep"]["space"] == MIXED["sweep"]["space"]
    curves = client.list_artifacts(best["run_id"])
    assert "curves.png" in {a.path for a in curves}  # drawn for the best trial at the end


def test_the_study_is_readable_by_optunas_own_tools(mixed):
    folder, payload = mixed
    study = optuna.load_study(study_name="mixed", storage=journal(folder / "optuna.journal"))
    assert [t.number for t in study.trials] == [t["number"] for t in payload["trials"]]
    assert study.best_trial.number == payload["best_trial"]["number"]
    done = subprocess.run(
        [_optuna_cli(), "trials", "--storage", str(folder / "optuna.journal"), "--study-name", "mixed", "-f", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [row["number"] for row in listed] == [t["number"] for t in payload["trials"]]
    assert [row["state"] for row in listed] == [t["state"] for t in payload["trials"]]


def _optuna_cli() -> str:
    import shutil

    found = shutil.which("optuna") or str(Path(sys.executable).with_name("optuna"))
    assert Path(found).exists(), "the optuna console script is not installed"
    return found


def test_running_again_resumes_without_repeating_a_trial(mixed):
    folder, payload = mixed
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(
            cli, ["sweep", "mixed.yaml", "--experiment", "mixed", "--n-trials", "7", "--json"], env={"MLFLOW_TRACKING_URI": None}
        )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["parent_run_id"] == payload["parent_run_id"]
    assert again["counts"]["COMPLETE"] + again["counts"]["PRUNED"] == 7
    before = {t["number"]: t for t in payload["trials"]}
    for trial in again["trials"][: len(before)]:
        assert trial["state"] == before[trial["number"]]["state"]  # finished trials are kept as they were
    numbers = [t["number"] for t in again["trials"]]
    assert len(numbers) == len(set(numbers))
    client, runs = _runs(folder)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == payload["parent_run_id"]]
    assert len(children) == len(again["trials"])
    assert client.get_run(payload["parent_run_id"]).info.status == "FINISHED"


# ------------------------------------------------------------------ objectives


def test_two_objectives_report_a_pareto_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pareto.yaml"
    raw = spec_dict(
        n_trials=5,
        sampler="random",
        pruner="none",
        objective=["val_accuracy", "iterations_to_target"],
        target_accuracy=0.8,
        space={"optim.lr": {"low": 0.001, "high": 1.0, "log": True}, "optim.batch_size": {"choices": [8, 32]}},
    )
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--no-track", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["directions"] == ["maximize", "minimize"]
    assert payload["parent_run_id"] is None and not (tmp_path / "mlflow.db").exists()
    complete = [t for t in payload["trials"] if t["state"] == "COMPLETE"]
    front = payload["pareto_front"]
    assert front

    def key(t):  # both as "higher is better"; unreached targets (null = inf iterations) are worst
        its = t["values"][1]
        return (t["values"][0], -(its if its is not None else math.inf))

    for member in front:
        assert not any(
            key(o)[0] >= key(member)[0] and key(o)[1] >= key(member)[1] and key(o) != key(member) for o in complete
        )
    for other in complete:
        if other["number"] not in {m["number"] for m in front}:
            assert any(key(m)[0] >= key(other)[0] and key(m)[1] >= key(other)[1] for m in front)


def test_objective_values_follow_their_directions(digits32):
    from bpexp.config import config_from_dict
    from bpexp.train import train

    config = config_from_dict({"data": {"name": "digits"}, "optim": {"lr": 0.1}, "train": {"max_epochs": 3}})
    result = train(config, digits32)
    assert objective_value("val_loss", result, None) == pytest.approx(result.final["val_loss"])
    assert objective_value("val_accuracy", result, None) == pytest.approx(result.final["val_accuracy"])
    reached = objective_value("iterations_to_target", result, 0.5)
    assert reached in result.history.iterations


# ------------------------------------------------------- workers on one machine


def test_two_workers_share_the_default_stores(tmp_path, monkeypatch, _mlflow_template_db):
    """--workers 2 on the SQLite tracking file and the journal: n trials exactly, one run each, lr: auto once."""
    import shutil

    shutil.copyfile(_mlflow_template_db, tmp_path / "mlflow.db")
    raw = {
        **BASE,
        "data": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [128]},
        "optim": {"lr": 0.1, "batch_size": 8},
        # trials of about a second, so that the second process (started while the first
        # already trains) gets its share
        "train": {"max_epochs": 30},
        "sweep": {"n_trials": 8, "pruner": "none", "lr_find": {"epochs": 1}, "space": {"lr": "auto"}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(cli, ["sweep", "s.yaml", "--workers", "2", "--json"], env={"MLFLOW_TRACKING_URI": None})
    assert done.exit_code == 0, done.output
    # the worker process's errors would be echoed here as warnings
    assert "database is locked" not in done.stderr and "warning" not in done.stderr
    payload = json.loads(done.stdout)
    assert payload["counts"] == {"COMPLETE": 8, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    workers = {t["number"]: None for t in payload["trials"]}
    study = optuna.load_study(study_name="iris-sweep", storage=journal(tmp_path / "optuna.journal"))
    pids = {t.user_attrs["bpexp.worker"]["pid"] for t in study.trials}
    assert len(pids) == 2 and len(workers) == 8  # both processes ran trials
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    blas = {t.user_attrs["bpexp.worker"]["blas_threads"] for t in study.trials} - {None}
    assert all(threads <= max(1, (os.cpu_count() or 1) // 2) for threads in blas), (blas, cores)  # no oversubscription
    low, high = (payload["lr_find"]["suggestions"]["max_lr"]["lr"] / 3, payload["lr_find"]["suggestions"]["max_lr"]["lr"] * 3)
    assert all(low <= t["params"]["optim.lr"] <= high for t in payload["trials"])
    client, runs = _runs(tmp_path, "bpexp")
    kinds = [r.data.tags.get("bpexp.kind") for r in runs]
    assert sorted(kinds) == sorted(["sweep", "lr_find"] + ["trial"] * 8)
    trial_runs = [r for r in runs if r.data.tags.get("bpexp.kind") == "trial"]
    assert sorted(int(r.data.params["trial_number"]) for r in trial_runs) == list(range(8))
    assert all(r.info.status == "FINISHED" for r in trial_runs)
    assert all(r.data.tags["mlflow.parentRunId"] == payload["parent_run_id"] for r in runs if r.data.tags.get("bpexp.kind") != "sweep")
    # the best trial's curves on the parent, drawn when its worker ran out of trials or at the
    # end: either way the best trial's own, from its history
    from bpexp.sweep.worker import curves_title
    from bpexp.tracking import curves_png

    best = payload["best_trial"]
    history = History.from_dict(json.loads(Path(client.download_artifacts(best["run_id"], "history.json", str(tmp_path))).read_text()))
    drawn = Path(client.download_artifacts(payload["parent_run_id"], f"best_trial_{best['number']}/curves.png", str(tmp_path))).read_bytes()
    assert drawn == curves_png(history, curves_title("iris-sweep", best["number"]))


def test_a_killed_sweep_resumes(tmp_path, _mlflow_template_db):
    """SIGKILL mid-trial: completed trials kept, the interrupted one FAILED (its run too), n_trials reached on restart."""
    import shutil

    shutil.copyfile(_mlflow_template_db, tmp_path / "mlflow.db")
    raw = {
        **BASE,
        "data": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [64]},
        "optim": {"lr": 0.1, "batch_size": 8},
        "schedule": {"name": "constant"},
        "train": {"max_epochs": 300},  # trials of a second or so: long enough to be caught mid-way
        # and enough of them to outlast the tracking process's start (a trial gets its run id once it exists)
        "sweep": {"n_trials": 5, "pruner": "none", "space": {"optim.lr": {"low": 0.01, "high": 0.05, "log": True}}},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "bpexp.cli", "sweep", "s.yaml", "--json"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage_path = tmp_path / "optuna.journal"
    deadline = time.monotonic() + 90
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if not storage_path.exists():
                continue
            try:
                trials = optuna.load_study(study_name="iris-sweep", storage=journal(storage_path)).trials
            except KeyError:
                continue
            states = [t.state.name for t in trials]
            # mid-trial: its run is open and its params are drawn (a kill between the two
            # would leave no params to run again)
            if (states.count("COMPLETE") >= 1 and states[-1] == "RUNNING"
                    and "bpexp.run_id" in trials[-1].user_attrs and trials[-1].params):
                proc.send_signal(signal.SIGKILL)
                killed_at = trials[-1].number
                break
    finally:
        proc.wait(timeout=30)
    assert killed_at is not None, "the sweep finished before a trial could be interrupted"
    before = optuna.load_study(study_name="iris-sweep", storage=journal(storage_path)).trials
    kept = {t.number: t.value for t in before if t.state.name == "COMPLETE"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # the restart, in this process
        done = CliRunner().invoke(cli, ["sweep", "s.yaml", "--json"], env={"MLFLOW_TRACKING_URI": None})
    finally:
        os.chdir(cwd)
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    states = {t["number"]: t["state"] for t in payload["trials"]}
    assert states[killed_at] == "FAIL"
    assert payload["counts"]["COMPLETE"] == 5
    after = optuna.load_study(study_name="iris-sweep", storage=journal(storage_path))
    assert {t.number: t.value for t in after.trials if t.number in kept} == kept
    retried = [t for t in after.trials if t.system_attrs.get("failed_trial") == killed_at]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == before[killed_at].params  # the interrupted trial's params, run again
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(before[killed_at].user_attrs["bpexp.run_id"])
    assert run.info.status == "FAILED" and "ended during the trial" in run.data.tags["bpexp.error"]
    assert client.get_run(payload["parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("sampler", "pruner"),
    [("cmaes", {"name": "hyperband", "warmup_epochs": 1}), ("grid", "median"), ("tpe", "none")],
)
def test_every_sampler_and_pruner_runs(tmp_path, sampler, pruner):
    space = (
        {"optim.lr": {"choices": [0.05, 0.3]}, "optim.batch_size": {"choices": [16, 32]}}
        if sampler == "grid"
        else {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}, "train.stop_loss": {"low": 0.05, "high": 0.5, "log": True}}
    )
    spec = sweep_spec_from_dict(spec_dict(n_trials=5, sampler={"name": sampler, "startup_trials": 2}, pruner=pruner, space=space))
    outcome = run_sweep(spec, make_tracker(enabled=False), storage=str(tmp_path / "study.journal"))
    expected = 4 if sampler == "grid" else 5  # the grid has 2 × 2 points
    assert outcome.counts["COMPLETE"] + outcome.counts["PRUNED"] == expected and outcome.finished
    if sampler == "grid":
        assert sorted((t.params["optim.lr"], t.params["optim.batch_size"]) for t in outcome.trials) == [
            (0.05, 16), (0.05, 32), (0.3, 16), (0.3, 32)
        ]
    study = optuna.load_study(study_name="iris-sweep", storage=journal(tmp_path / "study.journal"))
    for trial in study.trials:  # every finished trial reported one value per epoch it ran
        assert sorted(trial.intermediate_values) == (list(range(1, trial.user_attrs["bpexp.epochs"] + 1)) if pruner != "none" else [])


def test_workers_on_one_grid_run_every_point_once():
    # Two workers (their own samplers, seeded per worker as run_worker seeds them) ask for
    # trials in turn on one study, each trial running while the other is asked for.
    from bpexp.sweep.search import make_sampler, worker_seed
    from bpexp.sweep.worker import _tell  # as the workers tell: a used-up grid's study.stop() is refused outside optimize()

    space = {"optim.lr": {"choices": [0.05, 0.1, 0.3]}, "optim.batch_size": {"choices": [8, 16, 32, 64]}}
    spec = sweep_spec_from_dict(spec_dict(n_trials=12, sampler="grid", pruner="none", space=space))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="grid", storage=storage)
    workers = [optuna.load_study(study_name="grid", storage=storage, sampler=make_sampler(spec, worker_seed(spec, index)))
               for index in range(2)]
    points = []
    for _ in range(6):
        trials = [study.ask() for study in workers]
        for study, trial in zip(workers, trials):
            points.append(tuple(trial.suggest_categorical(key, dist.choices) for key, dist in spec.space.items()))
            _tell(study, trial, 0.0)
    assert sorted(points) == sorted((lr, batch) for lr in (0.05, 0.1, 0.3) for batch in (8, 16, 32, 64))


def test_a_used_up_grid_leaves_every_trial_run_finished(tmp_path, mlflow_sqlite_uri):
    # GridSampler stops the study when its grid is used up, which Optuna refuses outside
    # optimize(); that refusal must not turn the last trial's MLflow run FAILED.
    space = {"optim.lr": {"choices": [0.05, 0.3]}, "optim.batch_size": {"choices": [16, 32]}}
    spec = sweep_spec_from_dict(spec_dict(n_trials=4, sampler="grid", pruner="none", space=space))
    outcome = run_sweep(spec, make_tracker(mlflow_sqlite_uri, "grid"), storage=str(tmp_path / "study.journal"))
    assert outcome.counts["COMPLETE"] == 4
    client = MlflowClient(mlflow_sqlite_uri)
    statuses = [client.get_run(t.run_id).info.status for t in outcome.trials]
    assert statuses == ["FINISHED"] * 4
    assert all("bpexp.error" not in client.get_run(t.run_id).data.tags for t in outcome.trials)


def test_a_run_left_running_by_a_dead_worker_is_closed(tmp_path, mlflow_sqlite_uri):
    from bpexp.sweep.worker import close_unfinished_runs, identity

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(study_name="left", storage=journal(tmp_path / "j.journal"))
    tracker = MlflowTracker(mlflow_sqlite_uri, "left")
    tracker.check()
    runs = []
    for worker in ({**identity(), "pid": dead.pid, "started": None}, identity()):  # a dead worker, then this live one
        trial = study.ask()
        trial.set_user_attr("bpexp.worker", worker)
        run_id = tracker.start_run("t", tags={"bpexp.kind": "trial", "optuna.study_name": "left", "optuna.trial_number": trial.number})
        study.tell(trial, 1.0)  # told, but the run was never finished
        runs.append(run_id)
    assert close_unfinished_runs(study, tracker) == [runs[0]]
    assert tracker.read_run(runs[0]).status == "FAILED"
    assert "before this run was fully written" in tracker.read_run(runs[0]).tags["bpexp.error"]
    assert tracker.read_run(runs[1]).status == "RUNNING"  # its worker (this process) may still be writing it


@pytest.mark.parametrize("direction,values,drawn", [
    ("minimize", [0.5, 0.7, float("nan"), 0.4, 0.4], [0, 3]),
    ("maximize", [0.5, 0.7, 0.6, float("inf")], [1]),  # trial 1 beat trial 0 at once: 0 is never drawn
    ("minimize", [0.5, 0.4, 0.3, None, 0.2], [2]),  # None: pruned; the last trial's best is drawn at the end
])
def test_best_curves_are_drawn_ahead_for_each_best_that_outlives_the_next_trial(direction, values, drawn):
    from types import SimpleNamespace

    from bpexp.sweep.worker import BestCurves

    class Study:
        @property
        def best_value(self):
            raise ValueError("no complete trial")

    prepared = []
    tracker = SimpleNamespace(prepare_curves=lambda run_id, history, title: prepared.append((run_id, title)))
    spec = SimpleNamespace(study_name="s", sweep=SimpleNamespace(directions=[direction]))
    best = BestCurves(tracker, spec, Study())
    for number, value in enumerate(values):
        if value is not None:
            best.offer(f"run-{number}", number, value, history=None)
        best.trial_ended(number)
    assert prepared == [(f"run-{n}", f"s trial {n}") for n in drawn]


@pytest.mark.parametrize("study_best,others_running,drawn", [
    (3, 1, [("run-3", "own history", "s trial 3")]),  # its own trial: drawn from the history it holds
    (7, 1, [("mlflow-7", None, "s trial 7")]),  # another worker's: from the history.json stored for it
    (3, 0, []),  # the last worker to finish: the sweep's end draws it, or stores what was drawn ahead
    (None, 1, []),  # no complete trial
])
def test_one_of_several_workers_draws_the_best_only_when_it_runs_out_of_trials_before_the_others(study_best, others_running, drawn):
    # beside other workers a drawing takes their CPU: nothing while this worker has trials left
    from types import SimpleNamespace

    from optuna.trial import TrialState

    from bpexp.sweep.worker import BestCurves

    class Study:
        @property
        def best_value(self):
            raise ValueError("no complete trial")

        @property
        def best_trial(self):
            if study_best is None:
                raise ValueError("no complete trial")
            return SimpleNamespace(number=study_best, user_attrs={"bpexp.run_id": f"mlflow-{study_best}"})

        def get_trials(self, deepcopy, states):
            return [SimpleNamespace(state=TrialState.COMPLETE)] * 5 + [SimpleNamespace(state=TrialState.RUNNING)] * others_running

    prepared = []
    tracker = SimpleNamespace(prepare_curves=lambda run_id, history, title: prepared.append((run_id, history, title)))
    spec = SimpleNamespace(study_name="s", sweep=SimpleNamespace(directions=["minimize"]))
    best = BestCurves(tracker, spec, Study(), mode="at_finish")
    for number, value in [(1, 0.5), (3, 0.2), (5, 0.4)]:
        best.offer(f"run-{number}", number, value, history="own history" if number == 3 else "other")
        best.trial_ended(number)
    assert prepared == []
    best.finish(Study())
    assert prepared == drawn
