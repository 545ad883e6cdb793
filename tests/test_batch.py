"""Tests of bpexp.batch: batch files, the ledger, resume and --force, failures, stop requests, locks, the CLI.

Every batch here runs for real against MLflow's SQLite store (a fresh copy per test)
on iris, a few epochs per run; sweeps use the journal file storage beside it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.batch import batch_from_dict, load_batch, run_batch
from bpexp.batch.ledger import Ledger
from bpexp.batch.locks import try_lock
from bpexp.batch.runner import BatchBusy, study_name_for
from bpexp.cli import cli
from bpexp.errors import ConfigError
from bpexp.tracking import RUN_TAGS_ENV

REPO = Path(__file__).resolve().parent.parent
IRIS = {"data": {"name": "iris"}, "optim": {"lr": 0.1}, "train": {"max_epochs": 3}}
IRIS_SWEEP = {
    **IRIS,
    "sweep": {
        "n_trials": 3,
        "sampler": "random",
        "pruner": "none",
        "curves": "none",
        "space": {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}},
    },
}


def write_batch(folder: Path, experiments: list[dict], name: str = "b") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiments": experiments}, sort_keys=False))
    return path


def all_runs(uri: str, experiment: str = "b") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run in the test's tmp folder (reports and journals land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_TAGS_ENV, raising=False)
    return tmp_path


# --------------------------------------------------------------------- batch files


@pytest.mark.parametrize(
    "experiments, expected",
    [
        ([{"name": "x", "kind": "retrain", "spec": IRIS}], "experiments[0] 'x' has an unknown kind 'retrain'"),
        ([{"name": "x", "spec": IRIS}], "experiments[0] 'x' has no kind"),
        ([{"name": "x", "kind": "train", "spec": "missing.yaml"}], "experiments[0] 'x': spec file 'missing.yaml' does not exist"),
        ([{"name": "x", "kind": "train", "spec": "gallery/*.yaml"}], "spec pattern 'gallery/*.yaml' matches no file"),
        ([{"name": "x", "kind": "train", "spec": {**IRIS, "optim": {"lr": -1}}}], "experiments[0] 'x': b.yaml#x: optim.lr must be > 0"),
        ([{"name": "x", "kind": "sweep", "spec": IRIS}], "experiments[0] 'x': b.yaml#x: a sweep spec needs a 'sweep' section"),
        ([{"name": "x", "kind": "train", "spec": IRIS_SWEEP}], "has a 'sweep' section (use kind: sweep)"),
        ([{"name": "x", "kind": "train", "spec": IRIS, "n_trials": 3}], "unknown key 'experiments.0.n_trials'"),
        ([{"name": "x", "kind": "train", "spec": IRIS}] * 2, "two experiments are named 'x'"),
        ([{"name": "x", "kind": "lr_find", "spec": IRIS, "start_lr": 1, "end_lr": 0.1}], "start_lr must be < end_lr"),
        ([], "experiments: List should have at least 1 item"),
    ],
)
def test_a_bad_batch_file_is_one_line_and_exit_2_with_nothing_written(here, experiments, expected):
    path = write_batch(here, experiments)
    with pytest.raises(ConfigError, match="^b.yaml: " if "b.yaml#" not in expected else "b.yaml"):
        load_batch(path.name)
    result = CliRunner().invoke(cli, ["batch", "run", path.name, "--tracking-uri", f"sqlite:///{here / 'm.db'}"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpexp: error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (here / "m.db").exists()  # refused before any store was opened


def test_spec_files_resolve_against_the_batch_file_and_patterns_expand_in_order(tmp_path):
    (tmp_path / "specs").mkdir()
    for stem in ("b_second", "a_first"):
        (tmp_path / "specs" / f"{stem}.yaml").write_text(yaml.safe_dump({**IRIS, "name": stem}))
    path = write_batch(tmp_path, [
        {"name": "one", "kind": "lr-find", "spec": "specs/a_first.yaml", "set": {"optim.lr": 0.3}, "iterations": 20},
        {"name": "gallery", "kind": "train", "spec": "specs/*.yaml"},
    ])
    batch = load_batch(path)  # from another working directory: paths are the batch file's
    assert batch.names() == ["one", "gallery/a_first", "gallery/b_second"]
    assert batch.experiments[0].kind == "lr_find" and batch.experiments[0].config.optim.lr == 0.3
    assert batch.experiment == "b" and batch.workers == 1


def test_the_nightly_batch_names_real_specs_that_validate():
    batch = load_batch(REPO / "experiments" / "nightly.yaml")
    kinds = {e.kind for e in batch.experiments}
    assert kinds == {"train", "lr_find", "sweep"}
    gallery = sorted(p.stem for p in (REPO / "experiments" / "failure_modes").glob("*.yaml"))
    assert gallery, "the failure-mode gallery is empty"
    assert [e.name for e in batch.experiments if e.kind == "train"] == [f"failure-modes/{stem}" for stem in gallery]
    for experiment in batch.experiments:
        assert Path(experiment.source).is_file()


names = st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(names=names)
def test_batch_files_keep_order_and_refuse_duplicate_names(names):
    raw = {"name": "p", "experiments": [{"name": n, "kind": "train", "spec": {"train": {"max_epochs": 1}}} for n in names]}
    if len(set(names)) < len(names):
        with pytest.raises(ConfigError, match="two experiments are named"):
            batch_from_dict(raw)
    else:
        assert batch_from_dict(raw).names() == names


@settings(max_examples=40, deadline=None)
@given(name=st.text(min_size=1, max_size=20))
def test_batch_names_outside_letters_digits_dot_dash_underscore_are_refused(name):
    import re

    raw = {"name": name, "experiments": [{"name": "x", "kind": "train", "spec": {}}]}
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        assert batch_from_dict(raw).name == name
    else:
        with pytest.raises(ConfigError, match="name"):
            batch_from_dict(raw)


# ----------------------------------------------------------------- $BPEXP_RUN_TAGS


def test_run_tags_from_the_environment_go_on_every_run_and_given_tags_win(mlflow_sqlite_uri, monkeypatch):
    from bpexp.tracking import MlflowTracker

    tracker = MlflowTracker(mlflow_sqlite_uri, "tags")
    parent = tracker.start_run("parent")
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps({"team": "vision", "mlflow.parentRunId": parent, "bpexp.kind": "env"}))
    child = tracker.start_run("child", tags={"bpexp.kind": "train"})
    other = MlflowTracker(mlflow_sqlite_uri, "tags").start_run("nested", parent_run_id=child)
    tags = {r: tracker.read_run(r).tags for r in (child, other)}
    assert tags[child]["team"] == "vision" and tags[child]["bpexp.kind"] == "train"
    assert tags[child]["mlflow.parentRunId"] == parent
    assert tags[other]["mlflow.parentRunId"] == child  # an explicit parent wins
    monkeypatch.setenv(RUN_TAGS_ENV, "[1, 2]")
    with pytest.raises(ConfigError, match=RUN_TAGS_ENV):
        tracker.start_run("bad")


# --------------------------------------------------------------------- batch runs


def test_a_batch_runs_each_experiment_tags_every_run_and_is_idempotent(here, mlflow_sqlite_uri):
    path = write_batch(here, [
        {"name": "iris-train", "kind": "train", "spec": IRIS},
        {"name": "iris-range", "kind": "lr_find", "spec": IRIS, "iterations": 30},
        {"name": "iris-sweep", "kind": "sweep", "spec": IRIS_SWEEP, "report": False},
    ])
    batch = load_batch(path)
    lines: list[str] = []
    outcome = run_batch(batch, tracking_uri=mlflow_sqlite_uri, echo=lines.append)
    assert outcome.status == "finished" and outcome.exit_code == 0, outcome
    assert [e.state for e in outcome.experiments] == ["finished"] * 3
    assert RUN_TAGS_ENV not in os.environ  # restored
    batch_id = outcome.batch_run_id

    runs = {r.info.run_id: r for r in all_runs(mlflow_sqlite_uri)}
    own = runs[batch_id]
    assert own.info.run_name == "batch b" and own.info.status == "FINISHED"
    assert own.data.tags["bpexp.kind"] == "batch" and own.data.tags["bpexp.batch_run"] == batch_id
    assert own.data.metrics["experiments.finished"] == 3
    by_experiment = {e.name: e for e in outcome.experiments}
    sweep_parent = by_experiment["iris-sweep"].run_id
    for run_id, run in runs.items():
        if run_id == batch_id:
            continue
        tags = run.data.tags
        assert tags["bpexp.batch"] == "b" and tags["bpexp.batch_run"] == batch_id, run.info.run_name
        assert tags["bpexp.batch_experiment"] in by_experiment
        expected_parent = sweep_parent if tags.get("bpexp.kind") == "trial" else batch_id
        assert tags["mlflow.parentRunId"] == expected_parent, run.info.run_name
        assert run.info.status == "FINISHED"
    trials = [r for r in runs.values() if r.data.tags.get("bpexp.kind") == "trial"]
    assert len(trials) == 3 and len(runs) == 1 + 3 + 3
    assert runs[by_experiment["iris-train"].run_id].data.tags["bpexp.kind"] == "train"
    assert runs[by_experiment["iris-range"].run_id].data.tags["bpexp.kind"] == "lr_find"
    assert by_experiment["iris-sweep"].study_name == study_name_for("b", "iris-sweep", batch_id)

    from mlflow import MlflowClient

    artifacts = {a.path for a in MlflowClient(tracking_uri=mlflow_sqlite_uri).list_artifacts(batch_id)}
    assert {"batch.yaml", "batch_summary.json"} <= artifacts

    ledger = Ledger(mlflow_sqlite_uri)  # the ledger sits in the tracking database
    row = ledger.get_run(batch_id)
    assert row.status == "finished" and row.trigger == "manual" and row.ended_at is not None
    assert [(e.name, e.state, e.run_id, e.attempts) for e in row.experiments] == [
        (e.name, "finished", e.run_id, 1) for e in outcome.experiments
    ]

    again = run_batch(batch, tracking_uri=mlflow_sqlite_uri)  # all finished: says so, does nothing
    assert again.status == "up_to_date" and again.exit_code == 0 and again.batch_run_id == batch_id
    assert "--force" in again.message
    assert len(all_runs(mlflow_sqlite_uri)) == len(runs)

    forced = run_batch(batch, tracking_uri=mlflow_sqlite_uri, force=True)
    assert forced.status == "finished" and forced.batch_run_id != batch_id and not forced.resumed
    assert len(all_runs(mlflow_sqlite_uri)) == 2 * len(runs)
    assert [r.id for r in ledger.list_runs("b")] == [forced.batch_run_id, batch_id]
    ledger.dispose()


def test_a_failing_experiment_does_not_stop_the_batch_and_a_rerun_retries_only_it(here, mlflow_sqlite_uri):
    late = here / "late.csv"
    path = write_batch(here, [
        {"name": "first", "kind": "train", "spec": IRIS},
        {"name": "late-data", "kind": "train", "spec": {"data": {"path": str(late)}, "train": {"max_epochs": 2}}},
        {"name": "last", "kind": "train", "spec": IRIS},
    ])
    runner = CliRunner()
    args = ["batch", "run", str(path), "--tracking-uri", mlflow_sqlite_uri, "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "failed" and payload["exit_code"] == 1
    states = {e["name"]: e for e in payload["experiments"]}
    assert [states[n]["state"] for n in ("first", "late-data", "last")] == ["finished", "failed", "finished"]
    assert "late.csv" in states["late-data"]["error"] and "Traceback" not in result.output
    first_runs = len(all_runs(mlflow_sqlite_uri))

    import numpy as np

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (20, 2)), rng.normal(3, 1, (20, 2))])
    rows = ["x1,x2,label"] + [f"{a:.4f},{b:.4f},{int(i >= 20)}" for i, (a, b) in enumerate(X)]
    late.write_text("\n".join(rows) + "\n")

    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    assert resumed["resumed"] and resumed["batch_run_id"] == payload["batch_run_id"]
    assert [e["state"] for e in resumed["experiments"]] == ["skipped", "finished", "skipped"]
    # only the retried experiment made a run; the batch's own run was reopened, not repeated
    assert len(all_runs(mlflow_sqlite_uri)) == first_runs + 1
    ledger = Ledger(mlflow_sqlite_uri)
    row = ledger.get_run(payload["batch_run_id"])
    assert row.status == "finished" and [e.attempts for e in row.experiments] == [1, 2, 1]
    ledger.dispose()


def test_a_stop_request_ends_the_sweep_between_trials_and_a_rerun_resumes_its_study(here, mlflow_sqlite_uri):
    import optuna

    from bpexp.sweep.storage import default_storage

    spec = {**IRIS_SWEEP, "sweep": {**IRIS_SWEEP["sweep"], "n_trials": 4}}
    batch = load_batch(write_batch(here, [
        {"name": "sweep", "kind": "sweep", "spec": spec, "report": False},
        {"name": "after", "kind": "train", "spec": IRIS},
    ]))
    stop = threading.Event()

    def echo(line: str) -> None:
        if "1/4 trials" in line:
            stop.set()  # as SIGTERM's handler does

    outcome = run_batch(batch, tracking_uri=mlflow_sqlite_uri, stop=stop, echo=echo)
    assert outcome.status == "interrupted" and outcome.exit_code == 130
    assert [e.state for e in outcome.experiments] == ["pending", "pending"]
    study_name = study_name_for("b", "sweep", outcome.batch_run_id)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(default_storage(mlflow_sqlite_uri)))
    states = [t.state.name for t in optuna.load_study(study_name=study_name, storage=storage).trials]
    assert states == ["COMPLETE"]  # the trial ran to its end; none failed or left running
    runs = all_runs(mlflow_sqlite_uri)
    statuses = {r.data.tags.get("bpexp.kind"): r.info.status for r in runs}
    assert statuses == {"batch": "KILLED", "sweep": "KILLED", "trial": "FINISHED"}

    resumed = run_batch(batch, tracking_uri=mlflow_sqlite_uri)
    assert resumed.status == "finished" and resumed.resumed and resumed.batch_run_id == outcome.batch_run_id
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # 1 + 3 more: the study resumed
    runs = all_runs(mlflow_sqlite_uri)
    assert sum(r.data.tags.get("bpexp.kind") == "trial" for r in runs) == 4
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_train_experiment_stops_between_epochs(here, mlflow_sqlite_uri):
    # digits through an MLP for 5000 epochs: minutes, unless the stop request ends it
    spec = {"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [32]}, "train": {"max_epochs": 5000}}
    batch = load_batch(write_batch(here, [{"name": "long", "kind": "train", "spec": spec}]))
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)

    def echo(line: str) -> None:
        if "train long ..." in line:
            timer.start()  # half a second into the experiment

    started = time.perf_counter()
    outcome = run_batch(batch, tracking_uri=mlflow_sqlite_uri, stop=stop, echo=echo)
    timer.cancel()
    assert outcome.status == "interrupted", outcome
    assert outcome.experiments[0].state == "pending"
    run = next(r for r in all_runs(mlflow_sqlite_uri) if r.data.tags.get("bpexp.kind") == "train")
    assert run.info.status == "KILLED"
    assert time.perf_counter() - started < 60


# -------------------------------------------------------------------- locks, busy


@pytest.fixture(params=["sqlite", "postgresql"])
def lock_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lock.db'}"
    return request.getfixturevalue("pg_databases")("locks")


def test_the_batch_lock_is_held_by_one_holder_at_a_time(lock_db):
    first = try_lock(lock_db, "batch-x")
    assert first is not None
    assert try_lock(lock_db, "batch-x") is None  # another holder (a second connection, or open file) is refused
    other = try_lock(lock_db, "batch-y")
    assert other is not None  # another batch has its own lock
    other.release()
    first.release()
    first.release()  # idempotent
    again = try_lock(lock_db, "batch-x")
    assert again is not None
    again.release()


def test_a_busy_batch_is_refused_by_hand_and_skipped_by_a_firing(here, mlflow_sqlite_uri):
    path = write_batch(here, [{"name": "t", "kind": "train", "spec": IRIS}])
    batch = load_batch(path)
    with try_lock(mlflow_sqlite_uri, "batch-b"):
        with pytest.raises(BatchBusy, match="running already"):
            run_batch(batch, tracking_uri=mlflow_sqlite_uri)
        skipped = run_batch(batch, tracking_uri=mlflow_sqlite_uri, key="cron-2030-01-01T02:00:00+00:00", trigger="schedule")
        assert skipped.status == "skipped" and skipped.exit_code == 0
        result = CliRunner().invoke(cli, ["batch", "run", str(path), "--tracking-uri", mlflow_sqlite_uri])
        assert result.exit_code == 2 and "running already" in result.stderr and "Traceback" not in result.output
    assert not [r for r in all_runs(mlflow_sqlite_uri)]


def test_a_scheduled_key_runs_once(here, mlflow_sqlite_uri):
    batch = load_batch(write_batch(here, [{"name": "t", "kind": "train", "spec": {**IRIS, "train": {"max_epochs": 1}}}]))
    key = "cron-2030-01-01T02:00:00+00:00"
    first = run_batch(batch, tracking_uri=mlflow_sqlite_uri, key=key, trigger="schedule")
    second = run_batch(batch, tracking_uri=mlflow_sqlite_uri, key=key, trigger="schedule")  # a second scheduler, same firing
    assert first.status == "finished" and second.status == "skipped" and second.batch_run_id == first.batch_run_id
    assert len(all_runs(mlflow_sqlite_uri)) == 2


# ------------------------------------------------------------------ services, CLI


def test_an_unreachable_postgresql_at_start_is_exit_2_within_seconds(here):
    path = write_batch(here, [{"name": "t", "kind": "train", "spec": IRIS}])
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["batch", "run", str(path), "--tracking-uri", "postgresql+psycopg://postgres@127.0.0.1:1/bpexp"])
    assert result.exit_code == 2, result.output
    assert "cannot be reached" in result.stderr and "127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert time.perf_counter() - started < 30


def test_a_tracking_server_needs_an_rdb_storage_for_the_ledger(here):
    path = write_batch(here, [{"name": "t", "kind": "train", "spec": IRIS}])
    for extra in ([], ["--storage", "studies.journal"]):
        result = CliRunner().invoke(cli, ["batch", "run", str(path), "--tracking-uri", "http://127.0.0.1:1", *extra])
        assert result.exit_code == 2, result.output
        assert "give --storage an RDB URL" in result.stderr and "Traceback" not in result.output


def test_status_lists_past_runs_as_json(here, mlflow_sqlite_uri):
    path = write_batch(here, [{"name": "t", "kind": "train", "spec": {**IRIS, "train": {"max_epochs": 1}}}])
    outcome = run_batch(load_batch(path), tracking_uri=mlflow_sqlite_uri)
    result = CliRunner().invoke(cli, ["batch", "status", str(path), "--tracking-uri", mlflow_sqlite_uri, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [r["id"] for r in payload["runs"]] == [outcome.batch_run_id]
    assert payload["runs"][0]["status"] == "finished" and not payload["runs"][0]["stale"]
    assert payload["schedules"] == {"b": None}
    text = CliRunner().invoke(cli, ["batch", "status", "b", "--tracking-uri", mlflow_sqlite_uri])
    assert outcome.batch_run_id in text.stdout and "not scheduled" in text.stdout
