"""A run's creation, metrics, params, tags and end written straight into an MLflow SQL store.

MLflow's ``SqlAlchemyStore.log_batch`` makes one ORM object per metric value, param
and tag, reads the run back once per kind, rewrites the run's ``latest_metrics``
rows through the ORM too, and flushes it all through SQLAlchemy's unit of work: about
0.15 ms of CPU per metric row, most of what a sweep trial's run costs to record
(``python benchmarks/tracking_write_cost.py``). :class:`SqlRunWriter` writes the
same rows with SQLAlchemy Core instead, in one transaction, several times cheaper;
it ends a run with one ``UPDATE``, where MLflow's ``set_terminated`` also reads
the whole run back; and it creates a run with one ``SELECT`` of its experiment and
two ``INSERT`` statements, where MLflow's ``create_run`` loads the experiment through the ORM
and reads the new run back with its dataset inputs. All follow MLflow:

- into the tables as the installed MLflow defines them (the ``__table__`` of its
  ``SqlMetric``, ``SqlLatestMetric``, ``SqlParam``, ``SqlTag`` and ``SqlRun``
  models), through the store's own engine, so the names and types are MLflow's; or,
  without MLflow (:meth:`~SqlRunWriter.for_engine`), as the database holds them, when
  their columns are exactly MLflow 3's;
- only keys and values MLflow's validators pass unchanged (:func:`plain_key`: the
  characters, path rules and length of ``mlflow.utils.validation``, less the colon
  it refuses on Windows; values within its length limits, which it would cut), every
  metric value sanitised as the store's ``sanitize_metric_value`` does
  (:func:`sanitize_metric_value`: NaN → 0 with ``is_nan``, ±inf → ±max float),
  identical metric rows of one batch written once. These rules are bpexp's own, tested
  against MLflow's (tests/test_tracking_sql.py), so that a writer on a bare engine
  (:meth:`~SqlRunWriter.for_engine`) needs no MLflow import;
- a new run's row as ``SqlAlchemyStore.create_run`` fills it (source type
  ``UNKNOWN``, empty source fields, ``user_id`` from the ``mlflow.user`` tag or
  ``unknown``, status ``RUNNING``, artifact URI ``<experiment location>/<run
  id>/artifacts`` as MLflow's ``append_to_uri_path`` makes it for a local location),
  its name also as the ``mlflow.runName`` tag, and only in an active experiment;
- by MLflow's rules: a metric row the store already holds is skipped; a value
  becomes its key's ``latest_metrics`` row when its ``(step, timestamp, value)`` is
  greater (``_update_latest_metrics_if_necessary``); a param keeps its first value; a
  tag takes the new one.

It is used only where it is tested (MLflow 3, SQLite and PostgreSQL behind MLflow's
``SqlAlchemyStore``) and only for an active run. Whatever it would not do as MLflow
does is left to MLflow's own ``log_batch``: a table with columns it does not fill (a
later schema), a run that is not active, a param whose value would change, the
``mlflow.runName`` tag (MLflow also renames the run), a key or value it does not
pass as plain (MLflow refuses it or cuts it, and says so). :meth:`~SqlRunWriter.write`
then returns False and nothing of the batch is stored. Likewise
:meth:`~SqlRunWriter.create` returns None, creating nothing, for what MLflow's
``create_run`` must do: a ``runs`` or ``tags`` table whose columns are not exactly
the ones it fills, a run without a name (MLflow draws one), a ``mlflow.runName``
tag, a tag MLflow's validator would refuse or cut, an experiment that is not active
or whose artifact location is not a local path or ``file:`` URI.
"""

from __future__ import annotations

import math
import posixpath
import re
import sys
import uuid
from typing import Any, Mapping, Sequence

import sqlalchemy as sa  # MLflow's own dependency, imported without MLflow's cost

from bpexp.tracking import TAG_RUN_NAME  # setting it also renames the run (SqlAlchemyStore.set_tag)

#: Dialects the writer is tested on (tests/test_tracking_sql.py); others use MLflow's log_batch.
DIALECTS = ("sqlite", "postgresql")

#: The MLflow major versions whose tables and rules the writer follows (tested on 3.17);
#: under another, MLflow's own API writes everything until the tests say otherwise.
MLFLOW_MAJORS = (3,)

#: The columns the writer fills, per table.
COLUMNS = {
    "metrics": frozenset({"run_uuid", "key", "value", "timestamp", "step", "is_nan"}),
    "latest_metrics": frozenset({"run_uuid", "key", "value", "timestamp", "step", "is_nan"}),
    "params": frozenset({"run_uuid", "key", "value"}),
    "tags": frozenset({"run_uuid", "key", "value"}),
}

#: The columns of ``runs`` the writer reads (lifecycle_stage) or sets when a run ends.
RUN_COLUMNS = frozenset({"run_uuid", "lifecycle_stage", "status", "end_time"})

#: The columns a new run's rows fill, as MLflow 3's ``SqlAlchemyStore.create_run`` does. The
#: writer creates runs only where ``runs`` and ``tags`` have exactly these: a column a later
#: schema adds may be one MLflow fills on creation.
CREATE_COLUMNS = {
    "runs": frozenset({"run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
                       "start_time", "end_time", "deleted_time", "source_version", "lifecycle_stage", "artifact_uri",
                       "experiment_id"}),
    "tags": frozenset({"run_uuid", "key", "value"}),
}

#: The columns of ``experiments`` read when a run is created in it.
EXPERIMENT_COLUMNS = frozenset({"experiment_id", "lifecycle_stage", "artifact_location"})

#: The whole ``experiments`` table of MLflow 3's schema, which :meth:`SqlRunWriter.for_engine`
#: requires before it creates experiments (``workspace``: MLflow 3.x's multi-workspace column).
EXPERIMENT_ALL_COLUMNS = frozenset({"experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time",
                                    "last_update_time", "workspace"})

# MLflow's own values (mlflow.entities.LifecycleStage, RunStatus, SourceType;
# SqlAlchemyStore.ARTIFACTS_FOLDER_NAME; mlflow.utils.mlflow_tags.MLFLOW_USER;
# mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME), checked against it in the tests
ACTIVE = "active"
RUNNING = "RUNNING"
SOURCE_UNKNOWN = "UNKNOWN"
ARTIFACTS_FOLDER = "artifacts"
TAG_USER = "mlflow.user"
DEFAULT_WORKSPACE = "default"

#: mlflow.utils.validation's limits: MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

# mlflow.utils.validation.validate_param_and_metric_name, as on Windows (no colon): a
# name plain here is valid for MLflow on every system
_PLAIN_KEY = re.compile(r"[/\w.\- ]+")


def plain_key(key: Any) -> bool:
    """True if MLflow takes ``key`` as a metric, param or tag name as it is, on any system.

    MLflow's rules (``_validate_param_name`` and ``_validate_metric_name``): alphanumerics,
    ``_ - . /``, spaces (and a colon, except on Windows: refused here); a name that is its own
    ``posixpath.normpath``, not ``.``, not starting with ``..`` or ``/``; at most
    :data:`MAX_KEY_LENGTH` characters. MLflow's pattern also lets a final newline through
    (its ``$`` matches before one): refused here, so MLflow's own call takes such a key.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not _PLAIN_KEY.fullmatch(key):
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def plain_value(value: Any, limit: int) -> bool:
    """True if MLflow stores the param or tag value ``value`` uncut (a string of at most ``limit`` characters)."""
    return isinstance(value, str) and len(value) <= limit


def sanitize_metric_value(value: float) -> tuple[bool, float]:
    """``(is_nan, value)`` as MLflow's SQL store keeps a metric value: NaN → 0 flagged, ±inf → ±max float.

    The rule of MLflow's ``SqlAlchemyStore.sanitize_metric_value``.
    """
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, sys.float_info.max if value > 0 else -sys.float_info.max
    return False, value


def local_artifact_uri(location: str | None, run_id: str) -> str | None:
    """A run's artifact URI under its experiment's ``location``, as MLflow's ``append_to_uri_path`` makes it.

    Only for a location that is a local absolute path or a ``file:`` URI with no host, query
    or fragment (None for anything else: MLflow builds those).
    """
    if not location or any(c in location for c in "?#\\"):
        return None
    if location.startswith("file:///") or (location.startswith("/") and not location.startswith("//")):
        return f"{location.rstrip('/')}/{run_id}/{ARTIFACTS_FOLDER}"
    return None


def _fills(table: Any) -> bool:
    """True if the writer fills every column of ``table`` that the database does not fill itself."""
    ours = COLUMNS[table.name]
    if not ours <= {column.name for column in table.columns}:
        return False
    return all(
        column.name in ours or column.nullable or column.default is not None or column.server_default is not None
        for column in table.columns
    )


class SqlRunWriter:
    """Writes ``log_batch`` contents of active runs into an MLflow SQL store past the ORM.

    Build it with :meth:`for_store` (beside MLflow) or :meth:`for_engine` (without it),
    which return None for a store it does not serve.
    """

    def __init__(self, engine: Any, tables: Mapping[str, Any]) -> None:
        self.engine = engine
        self.metrics = tables["metrics"]
        self.latest = tables["latest_metrics"]
        self.params = tables["params"]
        self.tags = tables["tags"]
        self.runs = tables["runs"]
        self.experiments = tables.get("experiments")
        """MLflow's ``experiments`` table where :meth:`create` may create runs, else None."""
        self._valid_metric_keys: set[str] = set()
        latest = self.latest
        # one statement for every key whose latest value moves, sent as one executemany
        self._move_latest = (
            sa.update(latest)
            .where(latest.c.run_uuid == sa.bindparam("b_run_uuid"), latest.c.key == sa.bindparam("b_key"))
            .values(value=sa.bindparam("b_value"), timestamp=sa.bindparam("b_timestamp"), step=sa.bindparam("b_step"),
                    is_nan=sa.bindparam("b_is_nan"))
        )
        # metric rows the store already holds are skipped, as MLflow's log_batch skips them;
        # a held row is never later than its key's latest value, so the latest rows come out
        # as MLflow leaves them too
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._insert_metrics = insert(self.metrics).on_conflict_do_nothing()

    @classmethod
    def for_store(cls, store: Any) -> "SqlRunWriter | None":
        """A writer for ``store`` (MLflow's tracking store object), or None when it does not apply.

        None under an MLflow major version not in :data:`MLFLOW_MAJORS`, and for
        anything but MLflow's ``SqlAlchemyStore`` on a tested dialect whose tables hold
        only the columns the writer fills (or columns the database fills).
        """
        try:
            from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
            from mlflow.version import VERSION
        except ImportError:
            return None
        if int(VERSION.split(".")[0]) not in MLFLOW_MAJORS:
            return None
        if not isinstance(store, SqlAlchemyStore) or getattr(store, "engine", None) is None:
            return None
        if store.engine.dialect.name not in DIALECTS:
            return None
        tables = {model.__table__.name: model.__table__ for model in (SqlMetric, SqlLatestMetric, SqlParam, SqlTag)}
        if set(tables) != set(COLUMNS) or not all(_fills(table) for table in tables.values()):
            return None
        runs = SqlRun.__table__
        if not RUN_COLUMNS <= {column.name for column in runs.columns}:
            return None
        experiments = SqlExperiment.__table__
        creates = (
            all({column.name for column in table.columns} == CREATE_COLUMNS[table.name] for table in (runs, tables["tags"]))
            and EXPERIMENT_COLUMNS <= {column.name for column in experiments.columns}
        )
        return cls(store.engine, {**tables, "runs": runs, **({"experiments": experiments} if creates else {})})

    @classmethod
    def for_engine(cls, engine: Any) -> "SqlRunWriter | None":
        """A writer on a bare SQLAlchemy engine, its tables read from the database: no MLflow import.

        The caller must have made sure that the database holds the schema revision the
        installed MLflow expects (see :mod:`bpexp.tracking_direct`). Returns None unless the
        dialect is tested and every table has exactly the columns of MLflow 3's schema.

        Raises:
            sqlalchemy.exc.OperationalError: the store cannot be read.
        """
        if engine.dialect.name not in DIALECTS:
            return None
        exact = {**COLUMNS, **CREATE_COLUMNS, "experiments": EXPERIMENT_ALL_COLUMNS}
        metadata = sa.MetaData()
        try:
            metadata.reflect(engine, only=sorted(exact))
        except sa.exc.InvalidRequestError:  # a table is missing
            return None
        tables = metadata.tables
        if any({column.name for column in tables[name].columns} != columns for name, columns in exact.items()):
            return None
        return cls(engine, dict(tables))

    def create(self, experiment_id: str, name: str | None, tags: Mapping[str, str], start_time: int) -> tuple[str, str] | None:
        """Create a RUNNING run named ``name`` with ``tags``, as MLflow's ``MlflowClient.create_run`` does.

        Returns:
            ``(run id, artifact URI)``; or None, with nothing created, where MLflow's
            own ``create_run`` must do it (see the module docstring): it then creates
            the run or says why not.

        Raises:
            sqlalchemy.exc.OperationalError: the store is locked or unreachable.
        """
        experiments = self.experiments
        if experiments is None or not name or TAG_RUN_NAME in tags or not str(experiment_id).isdigit():
            return None
        if not all(plain_key(key) and plain_value(value, MAX_TAG_VALUE_LENGTH) for key, value in tags.items()):
            return None  # MLflow's create_run says why, or stores long values uncut: let it
        run_id = uuid.uuid4().hex
        with self.engine.begin() as connection:
            found = connection.execute(
                sa.select(experiments.c.lifecycle_stage, experiments.c.artifact_location)
                .where(experiments.c.experiment_id == int(experiment_id))
            ).one_or_none()
            if found is None or found.lifecycle_stage != ACTIVE:
                return None  # nothing written yet: MLflow's create_run raises its own error
            artifact_uri = local_artifact_uri(found.artifact_location, run_id)
            if artifact_uri is None:
                return None  # a remote artifact store: MLflow builds its URI
            connection.execute(sa.insert(self.runs).values(
                run_uuid=run_id, name=name, source_type=SOURCE_UNKNOWN, source_name="",
                entry_point_name="", user_id=tags.get(TAG_USER, "unknown"), status=RUNNING,
                start_time=start_time, end_time=None, deleted_time=None, source_version="",
                lifecycle_stage=ACTIVE, artifact_uri=artifact_uri, experiment_id=int(experiment_id),
            ))
            rows = [{"run_uuid": run_id, "key": key, "value": value} for key, value in {**tags, TAG_RUN_NAME: name}.items()]
            connection.execute(sa.insert(self.tags), rows)
        return run_id, artifact_uri

    def write(self, run_id: str, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> bool:
        """Store metrics, params and tags of run ``run_id`` in one transaction.

        ``metrics`` have ``key``, ``value`` (float), ``timestamp`` and ``step`` (int);
        ``params`` and ``tags`` have ``key`` and ``value`` (str), as MLflow's ``Metric``,
        ``Param`` and ``RunTag`` entities and :class:`bpexp.tracking.MetricValue` and
        :class:`bpexp.tracking.KeyValue` do.

        Returns:
            True when stored; False, with nothing written, when MLflow's own
            ``log_batch`` must do it (the run is not active, a param would change,
            the run's name is among the tags, a key or value not plain: see
            :func:`plain_key`); it then stores it or says why not.

        Raises:
            sqlalchemy.exc.IntegrityError: another process added the same latest value or
                param at the same moment; nothing of the batch is stored.
            sqlalchemy.exc.OperationalError: the store is locked or unreachable.
        """
        if any(tag.key == TAG_RUN_NAME for tag in tags):
            return False
        # each metric key checked once; the values, timestamps and steps are float and
        # non-negative int by construction (MlflowTracker)
        for metric in metrics:
            if metric.key not in self._valid_metric_keys:
                if not plain_key(metric.key):
                    return False  # MLflow refuses it and says why
                self._valid_metric_keys.add(metric.key)
        if not all(plain_key(p.key) and plain_value(p.value, MAX_PARAM_VALUE_LENGTH) for p in params):
            return False
        if not all(plain_key(t.key) and plain_value(t.value, MAX_TAG_VALUE_LENGTH) for t in tags):
            return False
        if len({param.key for param in params}) < len(params):
            return False  # MLflow refuses the batch and says which keys repeat
        tags = {tag.key: tag.value for tag in tags}  # the last value wins
        metric_rows, newest = self._metric_rows(run_id, metrics)
        if not (metric_rows or params or tags):
            return True
        try:
            with self.engine.begin() as connection:
                runs = self.runs
                stage = connection.execute(sa.select(runs.c.lifecycle_stage).where(runs.c.run_uuid == run_id)).scalar_one_or_none()
                if stage != ACTIVE:
                    raise _LeftToMlflow
                if params:
                    self._insert_params(connection, run_id, params)
                if tags:
                    self._set_tags(connection, run_id, tags)
                if metric_rows:
                    connection.execute(self._insert_metrics, metric_rows)
                    self._update_latest(connection, run_id, newest)
        except _LeftToMlflow:  # raised inside the transaction, which rolled back
            return False
        return True

    def end(self, run_id: str, status: str, end_time: int) -> bool:
        """Set an active run's status and end time (ms), as MLflow's ``set_terminated`` does.

        MLflow's own way reads the whole run back (params, tags, latest metrics) to
        return it; nothing here needs it.

        Returns:
            True when set; False, with nothing written, when the run is not active
            (MLflow's ``set_terminated`` then says why).
        """
        runs = self.runs
        with self.engine.begin() as connection:
            done = connection.execute(
                sa.update(runs)
                .where(runs.c.run_uuid == run_id, runs.c.lifecycle_stage == ACTIVE)
                .values(status=status, end_time=end_time)
            )
            return done.rowcount == 1

    def _metric_rows(self, run_id: str, metrics: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The rows of ``metrics`` (sanitised, each identity once) and each key's newest row."""
        rows: list[dict[str, Any]] = []
        newest: dict[str, dict[str, Any]] = {}
        seen: set[tuple] = set()
        for metric in metrics:
            is_nan, value = sanitize_metric_value(metric.value)
            identity = (metric.key, value, is_nan, metric.timestamp, metric.step)  # the table's primary key
            if identity in seen:
                continue
            seen.add(identity)
            row = {"run_uuid": run_id, "key": metric.key, "value": value, "timestamp": metric.timestamp,
                   "step": metric.step, "is_nan": is_nan}
            rows.append(row)
            best = newest.get(metric.key)
            if best is None or _later(row, best):
                newest[metric.key] = row
        return rows, newest

    def _insert_params(self, connection: Any, run_id: str, params: Sequence[Any]) -> None:
        """Insert the params the run lacks; raises _LeftToMlflow if one it holds would change value."""
        table = self.params
        held = dict(connection.execute(
            sa.select(table.c.key, table.c.value).where(table.c.run_uuid == run_id, table.c.key.in_([p.key for p in params]))
        ).all())
        if any(held[param.key] != param.value for param in params if param.key in held):
            raise _LeftToMlflow
        new = [{"run_uuid": run_id, "key": param.key, "value": param.value} for param in params if param.key not in held]
        if new:
            connection.execute(sa.insert(table), new)

    def _set_tags(self, connection: Any, run_id: str, values: Mapping[str, str]) -> None:
        """Set each tag's value: update the rows the run holds, insert the others."""
        table = self.tags
        held = set(connection.execute(
            sa.select(table.c.key).where(table.c.run_uuid == run_id, table.c.key.in_(list(values)))
        ).scalars())
        for key in held:
            connection.execute(sa.update(table).where(table.c.run_uuid == run_id, table.c.key == key).values(value=values[key]))
        new = [{"run_uuid": run_id, "key": key, "value": value} for key, value in values.items() if key not in held]
        if new:
            connection.execute(sa.insert(table), new)

    def _update_latest(self, connection: Any, run_id: str, newest: Mapping[str, Mapping[str, Any]]) -> None:
        """Make each key's newest row its ``latest_metrics`` row where it is later than the one held."""
        latest = self.latest
        held = {
            row.key: row._mapping
            for row in connection.execute(
                sa.select(latest)
                .where(latest.c.run_uuid == run_id, latest.c.key.in_(sorted(newest)))
                .order_by(latest.c.key)
                .with_for_update()  # MLflow locks them in key order too; SQLite has no row locks
            )
        }
        fresh = [dict(row) for key, row in newest.items() if key not in held]
        if fresh:
            connection.execute(sa.insert(latest), fresh)
        moved = [{f"b_{name}": value for name, value in row.items()}
                 for key, row in newest.items() if key in held and _later(row, held[key])]
        if moved:
            connection.execute(self._move_latest, moved)


class _LeftToMlflow(Exception):
    """Inside a write: roll back, MLflow's own log_batch does this batch."""


def _later(row: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """MLflow's order of a key's values: by step, then timestamp, then value."""
    return (row["step"], row["timestamp"], row["value"]) > (than["step"], than["timestamp"], than["value"])
