"""DirectSqlTracker against MLflow itself: the same calls, the same store contents, and no MLflow import on a sweep's path.

The oracle is MlflowTracker with every write through MLflow's own API
(``sql_writes=False``): each test makes the same calls through both trackers, on
SQLite and on PostgreSQL, and compares what MLflow reads back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from bpexp.errors import ServiceError
from bpexp.tracking import SQL_WRITES_ENV, MlflowTracker
from bpexp.tracking_direct import DirectSqlTracker, installed_schema_head, local_path, open_tracker

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _direct(uri: str, experiment: str) -> DirectSqlTracker:
    tracker = DirectSqlTracker.open(uri, experiment)
    assert tracker is not None
    tracker.check()
    return tracker


def _sweep_calls(tracker: MlflowTracker, folder: Path) -> dict[str, str]:
    """What a sweep's tracking process does, in its order; returns the run ids by role."""
    parent = tracker.start_run("sweep", tags={"bpexp.kind": "sweep", "optuna.study_name": "s"})
    trial = tracker.start_run("sweep-trial-0", parent_run_id=parent,
                              tags={"bpexp.kind": "trial", "optuna.study_name": "s", "mlflow.user": "ada"})
    tracker.log_batch(trial, metrics=[("loss", 1.0 / s, s) for s in range(1, 31)] + [("lr", float("nan"), 1)],
                      params={"optim.lr": 0.1, "trial_number": 0}, tags={"bpexp.diagnosis": "none"})
    tracker.log_batch(trial, metrics=[("val_loss", float("inf"), 2)], tags={"bpexp.diagnosis": "overfitting"})
    (folder / "sub").mkdir(parents=True)
    (folder / "history.json").write_text(json.dumps({"epoch": [1]}))
    (folder / "sub" / "weights.npz").write_bytes(b"\x00\x01")
    tracker.log_artifacts(trial, folder)
    tracker.end_run(trial, "KILLED")
    tracker.log_batch(parent, metrics=[("best.val_loss", 0.25, 0)], params={"best.optim.lr": 0.1})
    return {"parent": parent, "trial": trial}


def _as_read(tracker: MlflowTracker, ids: dict[str, str]) -> dict:
    """The runs as MLflow reads them back, ids replaced by roles."""
    names = {run_id: role for role, run_id in ids.items()}
    out = {}
    for role, run_id in ids.items():
        record = tracker.read_run(run_id)
        tags = {k: names.get(v, v) for k, v in record.tags.items()}
        metrics = {key: [(step, repr(value)) for step, value in values] for key, values in record.metrics.items()}  # NaN == NaN
        out[role] = (record.name, record.status, record.params, metrics, tags, record.artifacts)
    found = tracker.find_runs({"optuna.study_name": "s", "bpexp.kind": "trial"}, "KILLED")
    out["found"] = [(names[run_id], {k: names.get(v, v) for k, v in tags.items()}) for run_id, tags in found]
    out["found_running"] = [names[run_id] for run_id, _ in tracker.find_runs({"optuna.study_name": "s"}, "RUNNING")]
    return out


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_sweeps_calls_leave_what_mlflow_leaves(store, request, tmp_path, monkeypatch):
    uri = request.getfixturevalue("mlflow_sqlite_uri" if store == "sqlite" else "mlflow_pg_uri")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root on PostgreSQL: ./mlruns
    name = f"direct-{os.urandom(3).hex()}"
    ours = _direct(uri, name)
    theirs = MlflowTracker(uri, name + "-mlflow", sql_writes=False)
    theirs.check()
    ours_ids, theirs_ids = _sweep_calls(ours, tmp_path / "a"), _sweep_calls(theirs, tmp_path / "b")
    read = _as_read(ours, ours_ids)
    assert read == _as_read(theirs, theirs_ids)
    assert read["found"][0][0] == "trial" and read["found_running"] == ["parent"]
    assert read["trial"][1] == "KILLED" and read["trial"][5] == ["history.json", "sub/weights.npz"]
    assert read["trial"][3]["lr"] == [(1, "nan")] and read["trial"][3]["val_loss"] == [(2, repr(1.7976931348623157e308))]
    # the run rows themselves, as both left them (what MlflowClient no longer shows included)
    writer = ours._batch_writer
    runs, experiments = writer.runs, writer.experiments
    rows = {}
    with ours.engine.connect() as connection:
        for role, tracker, run_id in (("ours", ours, ours_ids["trial"]), ("theirs", theirs, theirs_ids["trial"])):
            row = dict(connection.execute(sa.select(runs).where(runs.c.run_uuid == run_id)).one()._mapping)
            location = connection.execute(sa.select(experiments.c.artifact_location)
                                          .where(experiments.c.experiment_id == int(tracker.experiment_id))).scalar_one()
            assert row.pop("artifact_uri") == f"{location}/{run_id}/artifacts"
            for column in ("run_uuid", "start_time", "end_time", "experiment_id"):
                row.pop(column)
            rows[role] = row
    assert rows["ours"] == rows["theirs"]


def test_a_new_experiment_is_the_row_mlflow_makes(mlflow_sqlite_uri):
    ours = _direct(mlflow_sqlite_uri, "made-here")
    theirs = MlflowTracker(mlflow_sqlite_uri, "made-by-mlflow")
    theirs.check()
    table = ours._batch_writer.experiments
    with ours.engine.connect() as connection:
        rows = {row.name: dict(row._mapping) for row in connection.execute(sa.select(table))}
    made, reference = rows["made-here"], rows["made-by-mlflow"]
    assert made["artifact_location"].endswith("/mlruns/made-here") and made["creation_time"] == made["last_update_time"]
    for row, name in ((made, "made-here"), (reference, "made-by-mlflow")):
        for column in ("experiment_id", "name", "creation_time", "last_update_time"):
            row.pop(column)
        row["artifact_location"] = row["artifact_location"].replace(name, "<name>")
    assert made == reference
    experiment = theirs.client.get_experiment_by_name("made-here")  # MLflow reads it as its own
    assert (experiment.experiment_id, experiment.lifecycle_stage) == (ours.experiment_id, "active")
    assert _direct(mlflow_sqlite_uri, "made-here").experiment_id == ours.experiment_id  # found, not made twice


def test_a_deleted_experiment_is_refused_as_mlflowtracker_refuses_it(mlflow_sqlite_uri):
    first = _direct(mlflow_sqlite_uri, "gone")
    first.client.delete_experiment(first.experiment_id)
    with pytest.raises(ServiceError, match="deleted; restore it") as ours:
        _direct(mlflow_sqlite_uri, "gone")
    with pytest.raises(ServiceError) as theirs:
        MlflowTracker(mlflow_sqlite_uri, "gone").check()
    assert str(ours.value) == str(theirs.value)


def test_a_run_under_a_remote_artifact_location_is_created_by_mlflow(mlflow_sqlite_uri):
    from mlflow import MlflowClient

    MlflowClient(mlflow_sqlite_uri).create_experiment("remote-artifacts", artifact_location="s3://bucket/kept")
    tracker = _direct(mlflow_sqlite_uri, "remote-artifacts")
    run_id = tracker.start_run("trial")
    info = tracker.client.get_run(run_id).info
    assert info.artifact_uri == f"s3://bucket/kept/{run_id}/artifacts"  # MLflow's own URI
    assert tracker._local_artifacts(run_id) is None  # its artifacts go through MLflow too


def test_artifacts_read_back_and_a_missing_one_says_so(mlflow_sqlite_uri, tmp_path):
    tracker = _direct(mlflow_sqlite_uri, "artifacts")
    run_id = tracker.start_run("trial")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "history.json").write_text(json.dumps({"epoch": [1, 2]}))
    tracker.log_artifacts(run_id, tmp_path / "src")
    tracker.end_run(run_id)
    got = tracker.download_artifact(run_id, "history.json", tmp_path / "dst")
    assert got == tmp_path / "dst" / "history.json" and json.loads(got.read_text()) == {"epoch": [1, 2]}
    with pytest.raises(FileNotFoundError):
        tracker.download_artifact(run_id, "curves.png", tmp_path / "dst")
    assert tracker.stored_history("0" * 32) is None  # no such run


def test_the_schema_head_read_from_the_files_is_mlflows():
    from mlflow.store.db.utils import _get_latest_schema_revision

    assert installed_schema_head() == _get_latest_schema_revision()


def _set_revision(uri: str, revision: str) -> None:
    with sa.create_engine(uri).begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_stores_mlflow_would_not_open_as_they_stand_are_left_to_it(mlflow_sqlite_uri, tmp_path, monkeypatch):
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is not None
    assert DirectSqlTracker.open(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", "x") is None  # MLflow creates it
    assert not (tmp_path / "new" / "mlflow.db").exists()
    monkeypatch.setenv(SQL_WRITES_ENV, "0")
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is None
    monkeypatch.delenv(SQL_WRITES_ENV)
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is None
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES")
    with pytest.raises(ServiceError, match="Can't load plugin"):  # fails fast, as MlflowTracker.check does
        DirectSqlTracker.open("postgresql+nosuchdriver://postgres@127.0.0.1:5432/test", "x")
    _set_revision(mlflow_sqlite_uri, "0000older000")
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is None
    with pytest.raises(ServiceError, match="out-of-date database schema"):  # and MLflow says what to do
        open_tracker(mlflow_sqlite_uri, "x")


def test_a_table_with_another_column_or_a_foreign_workspace_is_left_to_mlflow(mlflow_sqlite_uri):
    from bpexp.tracking_sql import DEFAULT_WORKSPACE

    engine = sa.create_engine(mlflow_sqlite_uri)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO experiments (name, lifecycle_stage, workspace) VALUES ('t', 'active', 'team-a')"))
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is None
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE experiments SET workspace = :w"), {"w": DEFAULT_WORKSPACE})
        connection.execute(sa.text("ALTER TABLE params ADD COLUMN note VARCHAR(20)"))
    assert DirectSqlTracker.open(mlflow_sqlite_uri, "x") is None


def test_the_tracking_process_serves_a_migrated_store_without_mlflow(mlflow_sqlite_uri, tmp_path):
    from bpexp.tracking_process import _Writer

    writer = _Writer()
    writer.handle("open", (mlflow_sqlite_uri, "served"), {})
    assert isinstance(writer.tracker, DirectSqlTracker)
    fresh = _Writer()
    fresh.handle("open", (f"sqlite:///{tmp_path / 'fresh.db'}", "served"), {})
    assert type(fresh.tracker) is MlflowTracker  # a new store: MLflow creates its schema


IMPORT_CHECK = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    from bpexp.tracking_direct import open_tracker
    tracker = open_tracker(sys.argv[1], "no-import")
    run_id = tracker.start_run("trial", tags={"bpexp.kind": "trial", "optuna.study_name": "s"})
    tracker.log_batch(run_id, metrics=[("loss", 0.5, 1)], params={"optim.lr": 0.1}, tags={"bpexp.diagnosis": "none"})
    folder = Path(tempfile.mkdtemp())
    (folder / "history.json").write_text("{}")
    tracker.log_artifacts(run_id, folder)
    tracker.end_run(run_id)
    tracker.find_runs({"optuna.study_name": "s"}, "RUNNING")
    tracker.download_artifact(run_id, "history.json", tempfile.mkdtemp())
    before = "mlflow" in sys.modules
    try:
        tracker.log_batch(run_id, tags={"bad?key": "x"})  # not plain: MLflow judges it
    except Exception as exc:
        refused = type(exc).__name__
    print(json.dumps({"before": before, "after": "mlflow" in sys.modules, "refused": refused}))
""")


def test_a_sweeps_path_never_imports_mlflow_and_a_call_it_does_not_serve_does(mlflow_sqlite_uri):
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK, mlflow_sqlite_uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"before": False, "after": True, "refused": "MlflowException"}


def test_local_paths_are_read_as_mlflow_reads_file_uris(tmp_path):
    from mlflow.utils.file_utils import local_file_uri_to_path

    folder = tmp_path / "with space" / "é"
    for uri in (folder.as_uri(), str(folder)):
        assert local_path(uri) == Path(local_file_uri_to_path(uri))
    for uri in ("s3://b/x", "mlflow-artifacts:/x", "file://host/x", None, ""):
        assert local_path(uri) is None


def test_commands_get_the_direct_tracker_on_a_migrated_store_and_mlflows_elsewhere(mlflow_sqlite_uri, tmp_path):
    from bpexp.tracking import make_tracker

    assert isinstance(make_tracker(mlflow_sqlite_uri, "cmd"), DirectSqlTracker)
    assert type(make_tracker(f"sqlite:///{tmp_path / 'new.db'}", "cmd")) is MlflowTracker  # MLflow makes the schema
    assert type(make_tracker("http://127.0.0.1:1", "cmd")) is MlflowTracker
    unreachable = make_tracker("postgresql+psycopg://postgres@127.0.0.1:1/none", "cmd")
    assert type(unreachable) is MlflowTracker  # no error yet: the command's check reports it, as before
    with pytest.raises(ServiceError, match="cannot be reached"):
        unreachable.check()


TRAIN_CHECK = textwrap.dedent("""
    import json, sys
    from bpexp.cli import cli
    try:
        cli.main(["train", "--dataset", "iris", "--max-epochs", "3", "--json", "--tracking-uri", sys.argv[1],
                  "--experiment", "direct-train"], standalone_mode=False)
    finally:
        print(json.dumps({"mlflow imported": "mlflow" in sys.modules}), file=sys.stderr)
""")


def test_bpexp_train_on_a_migrated_store_records_its_run_without_importing_mlflow(mlflow_sqlite_uri):
    done = subprocess.run([sys.executable, "-c", TRAIN_CHECK, mlflow_sqlite_uri], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"mlflow imported": False}
    payload = json.loads(done.stdout)
    record = MlflowTracker(mlflow_sqlite_uri, "direct-train").read_run(payload["run_id"])  # read back by MLflow
    assert record.status == "FINISHED" and record.tags["bpexp.kind"] == "train"
    assert [step for step, _ in record.metrics["train_loss"]] == [1, 2, 3]
    assert {"curves.png", "history.json", "weights.npz"} <= set(record.artifacts)
