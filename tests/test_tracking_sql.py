"""SqlRunWriter against MLflow itself: the same batches, written past the ORM and by MLflow, read back the same.

MLflow's own ``log_batch`` and ``set_terminated`` are the oracle. Each test writes
one run through :class:`bpexp.tracking_sql.SqlRunWriter` and a twin run through
MlflowClient, then compares what MlflowClient reads back from both: every metric's
whole history, the latest values, params, tags, status and end time.
"""

from __future__ import annotations

import math
import os

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpexp.tracking import SQL_WRITES_ENV, MlflowTracker
from bpexp.tracking_sql import SqlRunWriter, _fills

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _client_and_writer(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    writer = SqlRunWriter.for_store(client._tracking_client.store)
    assert writer is not None
    name = f"sql-writer-{os.urandom(4).hex()}"
    experiment_id = client.create_experiment(name)
    return client, writer, experiment_id


def _entities(batch):
    from mlflow.entities import Metric, Param, RunTag

    metrics, params, tags = batch
    return ([Metric(k, v, ts, step) for k, v, ts, step in metrics], [Param(k, v) for k, v in params.items()],
            [RunTag(k, v) for k, v in tags.items()])


def _same(value: float) -> str:
    # exact, and NaN equal to NaN: compare the values' reprs
    return repr(float(value))


def _read(client, run_id: str) -> dict:
    run = client.get_run(run_id)
    history = {
        key: sorted((m.step, m.timestamp, _same(m.value)) for m in client.get_metric_history(run_id, key))
        for key in run.data.metrics
    }
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}
    return {"latest": {k: _same(v) for k, v in run.data.metrics.items()}, "history": history,
            "params": dict(run.data.params), "tags": tags, "status": run.info.status, "end_time": run.info.end_time}


def _write_both(uri: str, batches) -> tuple[dict, dict]:
    """Write ``batches`` to one run past the ORM and to a twin by MLflow; return both as read back."""
    client, writer, experiment_id = _client_and_writer(uri)
    ours = client.create_run(experiment_id).info.run_id
    theirs = client.create_run(experiment_id).info.run_id
    for batch in batches:
        metrics, params, tags = _entities(batch)
        assert writer.write(ours, metrics, params, tags)
        client.log_batch(theirs, metrics=metrics, params=params, tags=tags, synchronous=True)
    return _read(client, ours), _read(client, theirs)


KEYS = st.sampled_from(["loss", "val_loss", "lr", "final.val_accuracy"])
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0]),
)
METRIC = st.tuples(KEYS, VALUES, st.integers(0, 3).map(lambda t: 1_700_000_000_000 + t), st.integers(-2, 6))
BATCH = st.tuples(
    st.lists(METRIC, max_size=25),
    st.dictionaries(st.sampled_from(["optim.lr", "seed", "trial_number"]), st.sampled_from(["0.1", "7"]), max_size=2),
    st.dictionaries(st.sampled_from(["bpexp.diagnosis", "bpexp.stop_reason"]), st.text(max_size=12), max_size=2),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(BATCH, min_size=1, max_size=3))
def test_reads_back_as_mlflow_writes_on_sqlite(batches, mlflow_sqlite_uri):
    # several batches per run: a later batch's values must replace a key's latest only by
    # MLflow's rule, (step, timestamp, value) greater; repeated identical rows stored once;
    # NaN and ±inf sanitised as MLflow stores them. A param that would change value is left
    # to MLflow, which refuses it: keep each param key's first value across batches.
    first: dict[str, str] = {}
    fixed = []
    for metrics, params, tags in batches:
        params = {k: first.setdefault(k, v) for k, v in params.items()}
        fixed.append((metrics, params, tags))
    ours, theirs = _write_both(mlflow_sqlite_uri, fixed)
    assert ours == theirs


def test_reads_back_as_mlflow_writes_on_postgres(mlflow_pg_uri):
    ts = 1_700_000_000_000
    batches = [
        ([("loss", 2.0, ts, 1), ("loss", 1.5, ts, 2), ("loss", math.nan, ts, 3), ("lr", math.inf, ts, 1),
          ("loss", 1.5, ts, 2)], {"optim.lr": "0.1", "seed": "0"}, {"bpexp.diagnosis": "none"}),
        ([("loss", 1.0, ts + 5, 2), ("lr", -math.inf, ts, 4), ("val_loss", 0.5, ts, 0)], {"trial_number": "3"},
         {"bpexp.diagnosis": "overfitting", "bpexp.stop_reason": "patience"}),
    ]
    ours, theirs = _write_both(mlflow_pg_uri, batches)
    assert ours == theirs
    assert ours["latest"]["loss"] == "nan"  # step 3 is the latest, as MLflow keeps it
    assert ours["latest"]["lr"] == repr(-1.7976931348623157e308)  # -inf as MLflow stores it
    assert len(ours["history"]["loss"]) == 4  # the repeated row once


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_end_sets_what_set_terminated_sets(store, request):
    uri = request.getfixturevalue("mlflow_sqlite_uri" if store == "sqlite" else "mlflow_pg_uri")
    client, writer, experiment_id = _client_and_writer(uri)
    ours = client.create_run(experiment_id).info.run_id
    theirs = client.create_run(experiment_id).info.run_id
    assert writer.end(ours, "KILLED", 1_700_000_000_123)
    client.set_terminated(theirs, "KILLED", end_time=1_700_000_000_123)
    assert _read(client, ours) == _read(client, theirs)
    assert _read(client, ours)["status"] == "KILLED"


def test_a_deleted_run_is_left_to_mlflow(mlflow_sqlite_uri):
    from mlflow.entities import Metric

    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    run_id = client.create_run(experiment_id).info.run_id
    client.delete_run(run_id)
    assert writer.write(run_id, [Metric("loss", 1.0, 1, 1)]) is False
    assert writer.end(run_id, "FINISHED", 1) is False
    client.restore_run(run_id)
    assert client.get_metric_history(run_id, "loss") == []
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_changed_param_writes_nothing_and_is_left_to_mlflow(mlflow_sqlite_uri):
    from mlflow.entities import Metric, Param, RunTag

    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    run_id = client.create_run(experiment_id).info.run_id
    assert writer.write(run_id, params=[Param("optim.lr", "0.1")])
    assert writer.write(run_id, [Metric("loss", 1.0, 1, 1)], [Param("optim.lr", "0.2")], [RunTag("t", "x")]) is False
    data = client.get_run(run_id).data
    assert (data.params, data.metrics, "t" in data.tags) == ({"optim.lr": "0.1"}, {}, False)  # rolled back whole


def test_the_run_name_tag_is_left_to_mlflow(mlflow_sqlite_uri):
    from mlflow.entities import RunTag

    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    run_id = client.create_run(experiment_id, run_name="before").info.run_id
    assert writer.write(run_id, tags=[RunTag("mlflow.runName", "after")]) is False
    assert client.get_run(run_id).info.run_name == "before"


def test_rows_the_store_holds_are_skipped_and_the_rest_written(mlflow_sqlite_uri):
    from mlflow.entities import Metric

    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    run_id = client.create_run(experiment_id).info.run_id
    assert writer.write(run_id, [Metric("loss", 1.0, 5, 1)])
    assert writer.write(run_id, [Metric("loss", 0.5, 5, 2), Metric("loss", 1.0, 5, 1)])
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert client.get_run(run_id).data.metrics == {"loss": 0.5}


def test_another_mlflow_major_version_is_left_to_mlflow(mlflow_sqlite_uri, monkeypatch):
    import mlflow.version
    from mlflow import MlflowClient

    store = MlflowClient(tracking_uri=mlflow_sqlite_uri)._tracking_client.store
    assert SqlRunWriter.for_store(store) is not None
    monkeypatch.setattr(mlflow.version, "VERSION", "4.0.0")
    assert SqlRunWriter.for_store(store) is None


def test_only_sql_stores_with_the_known_columns_are_served(mlflow_server):
    from mlflow import MlflowClient

    assert SqlRunWriter.for_store(MlflowClient(tracking_uri=mlflow_server)._tracking_client.store) is None  # REST
    assert SqlRunWriter.for_store(object()) is None
    def params_table(*more: sa.Column) -> sa.Table:
        return sa.Table("params", sa.MetaData(), sa.Column("run_uuid", sa.String, primary_key=True),
                        sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.String), *more)

    assert _fills(params_table())
    assert not _fills(params_table(sa.Column("workspace", sa.String, nullable=False)))  # a NOT NULL column left empty
    assert _fills(params_table(sa.Column("workspace", sa.String, nullable=False, server_default="default")))
    assert not _fills(sa.Table("params", sa.MetaData(), sa.Column("key", sa.String), sa.Column("value", sa.String)))


# ------------------------------------------------------------------- run creation


def _created(client, writer, run_id: str) -> dict:
    """A new run as MlflowClient reads it back and as its rows stand in the store (some columns MLflow no longer shows), its id taken out."""
    run = client.get_run(run_id)
    info = {k: v for k, v in vars(run.info).items() if k not in ("_run_id", "_run_uuid", "_artifact_uri")}
    with writer.engine.connect() as connection:
        row = dict(connection.execute(sa.select(writer.runs).where(writer.runs.c.run_uuid == run_id)).one()._mapping)
    row = {k: (v.replace(run_id, "<id>") if isinstance(v, str) else v) for k, v in row.items()}
    return {"info": info, "artifact_uri": run.info.artifact_uri.replace(run_id, "<id>"), "tags": dict(run.data.tags),
            "params": dict(run.data.params), "metrics": dict(run.data.metrics), "inputs": run.inputs.dataset_inputs, "row": row}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_create_makes_the_run_create_run_makes(store, request):
    uri = request.getfixturevalue("mlflow_sqlite_uri" if store == "sqlite" else "mlflow_pg_uri")
    client, writer, experiment_id = _client_and_writer(uri)
    parent = client.create_run(experiment_id).info.run_id
    tags = {"bpexp.kind": "trial", "mlflow.parentRunId": parent, "mlflow.user": "ada", "bpexp.note": "ü" * 40}
    created = writer.create(experiment_id, "trial-3", tags, 1_700_000_000_456)
    assert created is not None
    ours, artifact_uri = created
    theirs = client.create_run(experiment_id, start_time=1_700_000_000_456, tags=tags, run_name="trial-3").info.run_id
    assert _created(client, writer, ours) == _created(client, writer, theirs)
    run = client.get_run(ours)
    assert (run.info.run_name, run.info.status, run.info.user_id, run.info.start_time) == ("trial-3", "RUNNING", "ada", 1_700_000_000_456)
    assert run.info.artifact_uri == artifact_uri and artifact_uri.endswith(f"/{ours}/artifacts")
    assert [r.info.run_id for r in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")] in (
        [ours, theirs], [theirs, ours])
    assert writer.write(ours, params=_entities(((), {"optim.lr": "0.1"}, {}))[1])  # a run it made is one it writes to
    assert client.get_run(ours).data.params == {"optim.lr": "0.1"}


def test_create_leaves_to_mlflow_what_create_run_does_its_own_way(mlflow_sqlite_uri):
    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    assert writer.create(experiment_id, None, {}, 1) is None  # MLflow draws a name
    assert writer.create(experiment_id, "a", {"mlflow.runName": "b"}, 1) is None  # MLflow checks the two agree
    assert writer.create(experiment_id, "a", {"t": "x" * 10_000}, 1) is None  # create_run would store it uncut
    assert writer.create(experiment_id, "a", {"bad key?": "x"}, 1) is None
    assert writer.create("999999", "a", {}, 1) is None  # no such experiment: MLflow says so
    client.delete_experiment(experiment_id)
    assert writer.create(experiment_id, "a", {}, 1) is None  # a deleted experiment: MLflow refuses
    client.restore_experiment(experiment_id)
    assert client.search_runs([experiment_id]) == []  # none of the refusals created anything


def test_create_needs_the_exact_columns_it_fills(mlflow_sqlite_uri, monkeypatch):
    from mlflow.store.tracking.dbmodels.models import SqlRun

    client, writer, experiment_id = _client_and_writer(mlflow_sqlite_uri)
    assert writer.experiments is not None
    store = client._tracking_client.store
    later = sa.Table("runs", sa.MetaData(), *(sa.Column(c.name, c.type) for c in SqlRun.__table__.columns),
                     sa.Column("workspace", sa.String, nullable=True))
    monkeypatch.setattr(SqlRun, "__table__", later)  # a later schema's runs table: one column more
    other = SqlRunWriter.for_store(store)
    assert other is not None and other.experiments is None  # still writes batches, creates nothing
    assert other.create(experiment_id, "a", {}, 1) is None


# ------------------------------------------------------------------- MlflowTracker


def _counting(tracker, monkeypatch) -> list[str]:
    calls: list[str] = []
    client = tracker.client
    for name in ("create_run", "log_batch", "set_terminated"):
        original = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _n=name, _o=original, **k: calls.append(_n) or _o(*a, **k))
    return calls


def test_the_tracker_writes_runs_it_created_past_the_orm(mlflow_sqlite_uri, monkeypatch):
    tracker = MlflowTracker(mlflow_sqlite_uri, "past-orm")
    tracker.check()
    calls = _counting(tracker, monkeypatch)
    run_id = tracker.start_run("trial")
    assert tracker.read_run(run_id).status == "RUNNING"
    tracker.log_batch(run_id, metrics=[("loss", 1.0 / s, s) for s in range(1, 1201)], params={"lr": 0.1}, tags={"t": "x"})
    tracker.end_run(run_id, "FINISHED")
    assert calls == []
    record = tracker.read_run(run_id)
    assert (record.status, len(record.metrics["loss"]), record.params["lr"], record.tags["t"]) == ("FINISHED", 1200, "0.1", "x")
    tracker.set_tags(run_id, {"after": "end"})  # an ended run: MLflow's own way
    assert calls == ["log_batch"]


def test_the_tracker_leaves_other_runs_and_a_switched_off_writer_to_mlflow(mlflow_sqlite_uri, monkeypatch):
    tracker = MlflowTracker(mlflow_sqlite_uri, "past-orm-off")
    tracker.check()
    other = tracker.client.create_run(tracker.experiment_id).info.run_id  # not created by this tracker
    calls = _counting(tracker, monkeypatch)
    tracker.log_metrics(other, [("loss", 1.0, 1)])
    assert calls == ["log_batch"]
    monkeypatch.setenv(SQL_WRITES_ENV, "0")
    switched_off = MlflowTracker(mlflow_sqlite_uri, "past-orm-off")
    calls_off = _counting(switched_off, monkeypatch)
    run_id = switched_off.start_run("trial")
    switched_off.log_metrics(run_id, [("loss", 1.0, 1)])
    switched_off.end_run(run_id)
    assert calls_off == ["create_run", "log_batch", "set_terminated"]


# ------------------------------------------------------------------- MLflow's rules, owned


KEY_ALPHABET = st.sampled_from(list("ab_Z09-. /:?*é\\") + ["..", "//", "ß"])
KEYS_ANY = st.one_of(st.lists(KEY_ALPHABET, max_size=8).map("".join), st.text(max_size=12),
                     st.integers(245, 255).map(lambda n: "k" * n))


@settings(max_examples=400, deadline=None)
@given(key=KEYS_ANY)
def test_a_plain_key_is_one_mlflow_takes_as_it_is_and_only_the_colon_is_refused_beyond_mlflow(key):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_metric, _validate_param, _validate_tag

    from bpexp.tracking_sql import plain_key

    def mlflow_takes() -> bool:
        try:
            _validate_metric(key, 1.0, 0, 0)
            return _validate_param(key, "v").key == key and _validate_tag(key, "v").key == key
        except MlflowException:
            return False

    # on Linux MLflow also takes a colon; plain_key refuses it, as MLflow does on Windows. MLflow's
    # pattern ends in "$", which also matches before a final newline: plain_key refuses that too
    assert plain_key(key) == (mlflow_takes() and ":" not in key and not key.endswith("\n"))


def test_a_key_with_a_final_newline_is_left_to_mlflow():
    from mlflow.utils.validation import _validate_param

    from bpexp.tracking_sql import plain_key

    assert _validate_param("loss\n", "v").key == "loss\n"  # what MLflow takes, by its "$"
    assert not plain_key("loss\n") and plain_key("loss")


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 8100), char=st.sampled_from(["x", "é", "😀"]))
def test_a_plain_value_is_one_mlflow_stores_uncut(length, char):
    from mlflow.utils.validation import _validate_param, _validate_tag

    from bpexp.tracking_sql import MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH, plain_value

    value = char * length
    assert plain_value(value, MAX_PARAM_VALUE_LENGTH) == (_validate_param("k", value).value == value)
    assert plain_value(value, MAX_TAG_VALUE_LENGTH) == (_validate_tag("k", value).value == value)


@given(value=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_metric_values_are_sanitised_as_mlflow_sanitises_them(value):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from bpexp.tracking_sql import sanitize_metric_value

    ours, theirs = sanitize_metric_value(value), SqlAlchemyStore.sanitize_metric_value(None, value)  # it uses no self
    assert (ours[0], _same(ours[1])) == (theirs[0], _same(theirs[1]))


SEGMENT = st.lists(st.sampled_from(list("ab0_-.~é") + ["%20"]), min_size=1, max_size=6).map("".join)


@given(segments=st.lists(SEGMENT, min_size=1, max_size=4), form=st.sampled_from(["file:///", "/"]),
       trailing=st.booleans())
def test_a_local_artifact_uri_is_the_one_mlflow_appends(segments, form, trailing):
    from mlflow.utils.uri import append_to_uri_path

    from bpexp.tracking_sql import local_artifact_uri

    location = form + "/".join(segments) + ("/" if trailing else "")
    assert local_artifact_uri(location, "abc123") == append_to_uri_path(location, "abc123", "artifacts")


def test_remote_artifact_locations_are_left_to_mlflow():
    from bpexp.tracking_sql import local_artifact_uri

    for location in ("s3://bucket/x", "mlflow-artifacts:/1", "file://host/x", "//host/x", "file:///x?y=1", "relative/x", ""):
        assert local_artifact_uri(location, "abc") is None


def test_the_values_bpexp_writes_are_mlflows_own():
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils import validation
    from mlflow.utils.mlflow_tags import MLFLOW_USER
    from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

    from bpexp import tracking_sql as ours

    assert (ours.ACTIVE, ours.RUNNING, ours.SOURCE_UNKNOWN) == (
        LifecycleStage.ACTIVE, RunStatus.to_string(RunStatus.RUNNING), SourceType.to_string(SourceType.UNKNOWN))
    assert (ours.ARTIFACTS_FOLDER, ours.TAG_USER, ours.DEFAULT_WORKSPACE) == (
        SqlAlchemyStore.ARTIFACTS_FOLDER_NAME, MLFLOW_USER, DEFAULT_WORKSPACE_NAME)
    assert (ours.MAX_KEY_LENGTH, ours.MAX_PARAM_VALUE_LENGTH, ours.MAX_TAG_VALUE_LENGTH) == (
        validation.MAX_ENTITY_KEY_LENGTH, validation.MAX_PARAM_VAL_LENGTH, validation.MAX_TAG_VAL_LENGTH)


def test_a_batch_with_a_key_mlflow_refuses_writes_nothing_and_mlflow_says_why(mlflow_sqlite_uri):
    from mlflow.exceptions import MlflowException

    tracker = MlflowTracker(mlflow_sqlite_uri, "refused-key")
    tracker.check()
    run_id = tracker.start_run("trial")
    with pytest.raises(MlflowException, match="Invalid value"):
        tracker.log_batch(run_id, metrics=[("loss", 1.0, 1), ("bad?key", 2.0, 1)])
    assert tracker.read_run(run_id).metrics == {}
    writer = tracker._store_writer()
    from bpexp.tracking import KeyValue

    assert not writer.write(run_id, params=[KeyValue("long", "x" * 6001)])  # MLflow would cut it: its to do
    assert not writer.write(run_id, tags=[KeyValue("t", "x" * 8001)])
    assert writer.write(run_id, params=[KeyValue("long", "x" * 6000)], tags=[KeyValue("t", "x" * 8000)])
    assert (tracker.read_run(run_id).params, tracker.read_run(run_id).tags["t"]) == ({"long": "x" * 6000}, "x" * 8000)
