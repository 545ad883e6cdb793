"""Tracking: every train, range test and sweep trial becomes a recorded run.

A :class:`Tracker` is the plug-in point. :class:`MlflowTracker` writes to any
MLflow tracking URI (the default ``sqlite:///mlflow.db`` in the working directory,
an ``http://`` server, or a ``postgresql://`` backend store); :class:`NoOpTracker`
records nothing (``--no-track``). The functions below the trackers turn bpexp's
results into a run: params (the fully resolved config, flattened), per-epoch
metrics (batched and chunked to MLflow's request limits), tags (stop reason,
diagnosis, dataset fingerprint, seed, version) and artifacts (curves as PNG, the
history as JSON, the weights as a pickle-free ``.npz``).

MLflow is imported only inside :class:`MlflowTracker`, so ``--no-track`` never
loads it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from bpexp import __version__
from bpexp.config import flatten
from bpexp.errors import ConfigError, ServiceError
from bpexp.train import History

if TYPE_CHECKING:  # pragma: no cover - typing only
    from bpexp.train import TrainResult

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "bpexp"

# MLflow's request limits for one log_batch call (mlflow/utils/validation.py:
# MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_ENTITIES_PER_BATCH).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
# MLflow refuses param values longer than this (MAX_PARAM_VAL_LENGTH) and tag values
# longer than MAX_TAG_VAL_LENGTH; longer values are cut with an ellipsis.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

# Seconds a reachability probe waits: a wrong URI should fail in a few seconds,
# not after MLflow's default retry loop (7 retries with exponential backoff, 120 s timeout).
PROBE_TIMEOUT = 3.0

RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")

# Tag names shared with the sweep and the report.
TAG_KIND = "bpexp.kind"  # train, lr_find, sweep, trial
TAG_STOP_REASON = "bpexp.stop_reason"
TAG_DIAGNOSIS = "bpexp.diagnosis"
TAG_FINGERPRINT = "bpexp.data_fingerprint"
TAG_SEED = "bpexp.seed"
TAG_VERSION = "bpexp.version"
TAG_ERROR = "bpexp.error"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
#: Set to 0 to have MLflow's own log_batch write every batch (see bpexp.tracking_sql).
SQL_WRITES_ENV = "BPEXP_SQL_BATCH_WRITES"
#: A JSON object of tags added to every run an MlflowTracker starts in this process and
#: its sweep workers (they inherit the environment); tags given to start_run win. A batch
#: sets it so that every run it causes names the batch and the batch's own run.
RUN_TAGS_ENV = "BPEXP_RUN_TAGS"

_T = TypeVar("_T")


class RunRecord(NamedTuple):
    """What a tracker holds for one run, read back as plain values.

    ``metrics`` maps a key to its history as ``(step, value)`` pairs in step order;
    ``artifacts`` lists every artifact path, folders walked.
    """

    run_id: str
    name: str | None
    status: str
    params: dict[str, str]
    metrics: dict[str, list[tuple[int, float]]]
    tags: dict[str, str]
    artifacts: list[str]


# ------------------------------------------------------------------ the plug-in point


class MetricValue(NamedTuple):
    """One metric value as a store writes it (the fields of MLflow's ``Metric``)."""

    key: str
    value: float
    timestamp: int
    step: int


class KeyValue(NamedTuple):
    """One param or tag as a store writes it (the fields of MLflow's ``Param`` and ``RunTag``)."""

    key: str
    value: str


class Tracker(ABC):
    """Where runs are recorded.

    Called by ``bpexp train``, ``bpexp lr-find`` and every sweep worker: first
    :meth:`check` (before any training, so a bad URI fails fast), then per run
    :meth:`start_run` → ``log_*``/:meth:`set_tags` → :meth:`end_run`. Every method
    raises :class:`~bpexp.errors.ServiceError` when the backend cannot be reached.
    Implementations must accept any number of metrics in one call and split them
    as their backend needs.
    """

    #: where the runs go, for messages and for worker processes to reopen
    uri: str | None = None
    #: the experiment (run group) runs are created in
    experiment: str = DEFAULT_EXPERIMENT

    @abstractmethod
    def check(self) -> None:
        """Make sure the backend is reachable and the experiment exists.

        Raises:
            ServiceError: within a few seconds when the backend cannot be reached.
        """

    @abstractmethod
    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        """Open a run (nested under ``parent_run_id`` if given). Returns its id."""

    @abstractmethod
    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Iterable[tuple[str, float, int]] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Record metrics (``(key, value, step)`` triples), params and tags in as few requests as the backend allows.

        A param logged twice must keep its value; tags may be overwritten.
        """

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Record params; a key logged twice must keep the same value."""
        self.log_batch(run_id, params=params)

    def log_metrics(self, run_id: str, metrics: Iterable[tuple[str, float, int]]) -> None:
        """Record ``(key, value, step)`` triples."""
        self.log_batch(run_id, metrics=metrics)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags."""
        self.log_batch(run_id, tags=tags)

    @abstractmethod
    def log_artifacts(self, run_id: str, local_dir: str | Path) -> None:
        """Copy every file under ``local_dir`` into the run's artifacts."""

    @abstractmethod
    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run as FINISHED, FAILED or KILLED."""

    @abstractmethod
    def reopen_run(self, run_id: str) -> None:
        """Set a closed run back to RUNNING (a resumed sweep's parent)."""

    @abstractmethod
    def read_run(self, run_id: str) -> RunRecord | None:
        """Everything recorded for a run, or None for a tracker that records nothing."""

    def download_artifact(self, run_id: str, path: str, dst_dir: str | Path) -> Path | None:
        """Fetch one artifact into ``dst_dir``. Returns its local path, or None if nothing is stored."""
        return None

    def run_status(self, run_id: str) -> str | None:
        """The run's status (RUNNING, FINISHED, FAILED, KILLED), or None if nothing is stored."""
        record = self.read_run(run_id)
        return record.status if record is not None else None

    def find_runs(self, tags: Mapping[str, str], status: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """Runs of the experiment carrying every tag of ``tags`` (and in ``status``), as (run id, tags) pairs."""
        return []

    def worker_spec(self) -> dict[str, Any]:
        """What a worker process needs to rebuild this tracker with :func:`make_tracker`."""
        return {"uri": self.uri, "experiment": self.experiment, "enabled": self.uri is not None, "process": self.asynchronous}

    #: True when calls return before they reach the store (see bpexp.tracking_process)
    asynchronous: bool = False

    def resolve(self, run_id: str) -> str:
        """The id to store for a run id :meth:`start_run` returned (itself, unless pending)."""
        return run_id

    def resolved(self, run_id: str) -> str | None:
        """The id to store if it is known now without waiting, else None."""
        return run_id

    def flush(self) -> None:
        """Wait until every call made so far has reached the store."""
        return None

    def log_run_curves(self, run_id: str, folder: str, title: str, also: Sequence[str] = (), *, png: bytes | None = None) -> None:
        """Draw curves.png of a finished run from its history.json: into the run, and into ``folder/`` of each run in ``also``.

        ``png``: the picture already drawn (see :meth:`prepare_curves`), stored as it is.
        Nothing happens when the run has no history.json in this store.
        """
        if self.uri is None:
            return
        with tempfile.TemporaryDirectory(prefix="bpexp-curves-") as tmp:
            out = Path(tmp, "out", folder)
            out.mkdir(parents=True)
            if png is not None:
                (out / "curves.png").write_bytes(png)
            else:
                history = self.stored_history(run_id)
                if history is None:
                    return
                draw_curves(history, out / "curves.png", title)
            self.log_artifacts(run_id, out)  # the run's own curves.png
            for target in also:
                self.log_artifacts(target, out.parent)  # folder/curves.png

    def stored_history(self, run_id: str) -> "History | None":
        """The History in a run's history.json; None when this store holds none for it (or no such run)."""
        with tempfile.TemporaryDirectory(prefix="bpexp-history-") as tmp:
            try:
                local = self.download_artifact(run_id, "history.json", tmp)
            except Exception:  # the run lives in another tracking store, or its artifacts are not written yet
                return None
            return None if local is None else History.from_dict(json.loads(Path(local).read_text()))

    def prepare_curves(self, run_id: str, history: "History | None", title: str) -> None:
        """Draw ahead the curves :meth:`log_run_curves` may store for this run later, where that costs nothing.

        ``history`` None: the run's history.json in the store (nothing is drawn when
        it is not there yet). A tracker that writes from a helper process draws them
        there, while the next trials train, and keeps only the latest; this one has
        no spare core and does nothing.
        """
        return None

    def log_figure(self, run_id: str, drawer: str, data: Any, path: str) -> None:
        """Draw a figure and store it as the artifact ``path`` of a run.

        ``drawer`` names a function ``"module:function"`` called as ``function(data, file)``;
        by name, so that a tracker writing from another process can draw it there.
        """
        if self.uri is None:
            return
        module, _, function = drawer.partition(":")
        draw = getattr(importlib.import_module(module), function)
        with tempfile.TemporaryDirectory(prefix="bpexp-figure-") as tmp:
            target = Path(tmp, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            draw(data, target)
            self.log_artifacts(run_id, tmp)

    def close(self) -> None:
        """Flush and release what the tracker holds."""
        return None


class NoOpTracker(Tracker):
    """Records nothing (``--no-track``); every run id is a fresh random string."""

    uri = None

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.experiment = experiment

    def check(self) -> None:
        return None

    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        return "noop-" + "".join(random.choices("0123456789abcdef", k=16))

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Iterable[tuple[str, float, int]] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        for _ in metrics:  # consume generators like a real tracker would
            pass

    def log_artifacts(self, run_id: str, local_dir: str | Path) -> None:
        return None

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        _check_status(status)

    def reopen_run(self, run_id: str) -> None:
        return None

    def read_run(self, run_id: str) -> RunRecord | None:
        return None


def env_run_tags() -> dict[str, Any]:
    """The tags in ``$BPEXP_RUN_TAGS`` (see :data:`RUN_TAGS_ENV`); {} when it is unset or empty.

    Raises:
        ConfigError: when it is set but is not a JSON object.
    """
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except ValueError:
        tags = None
    if not isinstance(tags, dict):
        raise ConfigError(f"${RUN_TAGS_ENV} must be a JSON object of tags, e.g. '{{\"team\": \"vision\"}}'; got {text[:80]!r}")
    return tags


def _check_status(status: str) -> None:
    if status not in RUN_STATUSES[1:]:
        raise ValueError(f"end_run: status must be FINISHED, FAILED or KILLED; got {status!r}")


# --------------------------------------------------------------------------- MLflow


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file here.

    A relative ``sqlite:///file.db`` is made absolute, so that worker processes and
    artifact paths agree on one file.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:
        # a bare folder: MLflow's file store, kept for compatibility
        uri = str(Path(uri).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other URIs."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _with_retry(action: Callable[[], _T], what: str, budget: float = 60.0) -> _T:
    """Run ``action``, retrying SQLite's "database is locked" with jittered backoff.

    Several worker processes share one SQLite tracking file; SQLite lets one writer
    at a time and answers a second one with SQLITE_BUSY (https://sqlite.org/rescode.html#busy).
    A failed statement is rolled back, so retrying it is safe.
    """
    deadline = time.monotonic() + budget
    delay = 0.05
    while True:
        try:
            return action()
        except Exception as exc:  # MLflow wraps SQLAlchemy's OperationalError in MlflowException
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def probe_tracking_uri(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast when a tracking URI cannot be reached.

    ``http(s)://``: GET ``/health``. Database URIs other than SQLite: open one
    connection with a connect timeout. SQLite and file stores: the folder must be
    creatable.

    Raises:
        ServiceError: naming the URI and the cause, within about ``timeout`` seconds.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=timeout) as response:  # noqa: S310 - user-given URI
                if response.status != 200:
                    raise ServiceError(f"tracking server {uri} answered {response.status} on /health")
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"tracking server {uri} answered {exc.code} on /health") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"tracking server {uri} cannot be reached ({reason})") from None
        return
    if scheme.startswith(("postgresql", "mysql", "mssql")):
        probe_database(uri, timeout, what="tracking store")
        return
    path = sqlite_path(uri) if scheme == "sqlite" else (Path(uri) if scheme == "file" else None)
    if path is not None:
        folder = path.parent if scheme == "sqlite" else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(f"tracking store {uri}: cannot create {folder} ({exc.strerror or exc})") from None
        if not os.access(folder, os.W_OK):
            raise ServiceError(f"tracking store {uri}: {folder} is not writable")


def probe_database(url: str, timeout: float = PROBE_TIMEOUT, what: str = "database") -> None:
    """Open and close one connection to a SQLAlchemy database URL.

    Raises:
        ServiceError: when the server does not answer within ``timeout`` seconds or refuses.
    """
    import sqlalchemy

    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = max(1, int(math.ceil(timeout)))
    elif url.startswith("mysql"):
        connect_args["connect_timeout"] = max(1, int(math.ceil(timeout)))
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
    except Exception as exc:  # bad URL, missing driver
        raise ServiceError(f"{what} {_redact(url)}: {type(exc).__name__}: {exc}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(f"{what} {_redact(url)} cannot be reached ({first})") from None
    finally:
        engine.dispose()


def _redact(url: str) -> str:
    """A URL with its password replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


class PgAdvisoryLock:
    """A PostgreSQL session advisory lock (``pg_advisory_lock``) on one kept-open connection.

    Re-entrant within one holder. The server releases it when the connection ends,
    so a killed process never leaves it held.
    """

    def __init__(self, url: str, key: int) -> None:
        self.conninfo = libpq_url(url)
        self.key = key
        self._conn: Any = None
        self._depth = 0

    def __enter__(self) -> "PgAdvisoryLock":
        if self._depth == 0:
            import psycopg

            if self._conn is None or self._conn.closed:
                try:
                    self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
                except psycopg.OperationalError as exc:
                    raise ServiceError(f"cannot take a PostgreSQL lock on {_redact(self.conninfo)} ({str(exc).strip()})") from None
            self._conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        self._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._conn is not None and not self._conn.closed:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))

    def close(self) -> None:
        """Close the connection (and so release the lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://``) as a libpq URI."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def lock_key(purpose: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``purpose``."""
    import hashlib

    digest = hashlib.sha256(f"bpexp:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _quiet_mlflow_logs() -> None:
    # MLflow and alembic log schema migrations at INFO on first use; bpexp's stderr is for
    # its own progress. BPEXP_DEBUG=1 keeps them.
    if os.environ.get("BPEXP_DEBUG"):
        return
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _no_telemetry() -> None:
    # MLflow 3 sends usage telemetry to an outside host from a background thread
    # (mlflow/telemetry); bpexp's runs stay local unless the user opts in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # and its artifact downloads draw a tqdm bar on stderr, over bpexp's own progress
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _limit_http_retries() -> None:
    # MLflow retries a failed HTTP request 7 times with backoff factor 2 and waits 120 s
    # per request (mlflow/environment_variables.py). A server that goes away mid-sweep
    # should fail a run in seconds; users can still raise both through the environment.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # MLflow writes "View run ... at: <url>" to stdout whenever a run on a server ends;
    # stdout is for --json's one object (and the commands' own summaries)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class MlflowTracker(Tracker):
    """Runs in an MLflow tracking store, through :class:`mlflow.MlflowClient`.

    Args:
        uri: a tracking URI; see :func:`resolve_tracking_uri` for the default.
        experiment: the experiment name, created on first use.
        sql_writes: create runs, and write the batches and the ends of the runs created
            here, straight into a SQL store's tables (:mod:`bpexp.tracking_sql`) rather
            than through MLflow's ORM. None (the default) means on, unless the environment sets
            ``BPEXP_SQL_BATCH_WRITES=0``.
    """

    def __init__(self, uri: str | None = None, experiment: str | None = None, *, sql_writes: bool | None = None) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self._client = None
        self._experiment_id: str | None = None
        # the runs this tracker created and has not ended -> their artifact URI (None where
        # unusable): MLflow's own log_artifacts reads the whole run back from the store
        # (params, tags, metrics) to learn it, on every new run
        self._open_here: dict[str, str | None] = {}
        if sql_writes is None:
            sql_writes = os.environ.get(SQL_WRITES_ENV, "1") != "0"
        # a tracking_sql.SqlRunWriter, None where it does not apply; False: not looked up yet
        self._batch_writer: Any = False if sql_writes else None

    # -- plumbing
    @property
    def client(self):
        """The MlflowClient, created on first use."""
        if self._client is None:
            _quiet_mlflow_logs()
            _limit_http_retries()
            _no_telemetry()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _call(self, action: Callable[[], _T], what: str) -> _T:
        try:
            return _with_retry(action, what)
        except ServiceError:
            raise
        except Exception as exc:
            if _is_connection_error(exc):
                raise ServiceError(f"tracking store {_redact(self.uri)}: {what} failed ({_first_line(exc)})") from None
            raise

    @property
    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment if needed (safe against a concurrent creator)."""
        if self._experiment_id is None:
            self._experiment_id = self._call(self._ensure_experiment, f"creating experiment {self.experiment!r}")
        return self._experiment_id

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise deleted_experiment_error(self.experiment)
            return found.experiment_id
        artifact_location = self.artifact_location()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=artifact_location)
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: beside a SQLite file, whatever the working directory; else MLflow's default (None)."""
        db = sqlite_path(self.uri)
        return None if db is None else (db.parent / "mlruns" / _slug(self.experiment)).as_uri()

    # -- the Tracker interface
    def check(self) -> None:
        probe_tracking_uri(self.uri)
        try:
            if self.uri.startswith(("postgresql", "postgres")):
                # MLflow creates its schema on first use; two processes doing so at once on an
                # empty database collide, so the first use is serialised per database
                lock = PgAdvisoryLock(self.uri, lock_key("mlflow-schema"))
                try:
                    with lock:
                        _ = self.experiment_id
                finally:
                    lock.close()
            else:
                _ = self.experiment_id
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(f"tracking store {_redact(self.uri)}: {_first_line(exc)}") from None
        db = sqlite_path(self.uri)
        if db is not None:
            _use_wal(db)

    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        extra = {k: _tag_value(v) for k, v in {**env_run_tags(), **(tags or {})}.items()}
        all_tags = {TAG_VERSION: __version__, **extra}
        if parent_run_id is not None:
            all_tags[TAG_PARENT] = parent_run_id
        experiment_id = self.experiment_id
        writer = self._store_writer()
        if writer is not None:
            start_time = int(time.time() * 1000)
            created = self._call(lambda: writer.create(experiment_id, name, all_tags, start_time), f"creating run {name!r}")
            if created is not None:
                run_id, artifact_uri = created
                self._open_here[run_id] = artifact_uri
                return run_id
        run = self._call(
            lambda: self.client.create_run(experiment_id, tags=all_tags, run_name=name), f"creating run {name!r}"
        )
        usable = run.info.artifact_uri and not self.uri.startswith("databricks")  # Databricks adds a profile to the URI
        self._open_here[run.info.run_id] = run.info.artifact_uri if usable else None
        return run.info.run_id

    def _store_writer(self) -> Any:
        """The store's :class:`~bpexp.tracking_sql.SqlRunWriter`, or None where it does not apply or is switched off."""
        if self._batch_writer is False:
            from bpexp.tracking_sql import SqlRunWriter

            store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
            self._batch_writer = SqlRunWriter.for_store(store) if store is not None else None
        return self._batch_writer

    def _sql_writer(self, run_id: str) -> Any:
        """The store's :class:`~bpexp.tracking_sql.SqlRunWriter` for a run created here and still open, else None."""
        if run_id not in self._open_here:
            return None
        return self._store_writer()

    def _write_past_orm(self, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> bool:
        """Store a batch of a run created here with :mod:`bpexp.tracking_sql`; False if MLflow must write it."""
        writer = self._sql_writer(run_id)
        if writer is None:
            return False
        from sqlalchemy.exc import IntegrityError

        try:
            return self._call(lambda: writer.write(run_id, metrics, params, tags), "logging metrics, params and tags")
        except IntegrityError:  # another process wrote the same key at once: MLflow sorts it out
            return False

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Iterable[tuple[str, float, int]] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        now = int(time.time() * 1000)
        metric_items: list[Any] = [MetricValue(str(k), float(v) if v is not None else math.nan, now, int(step))
                                   for k, v, step in metrics]
        param_items: list[Any] = [KeyValue(str(k), _param_value(v)) for k, v in (params or {}).items()]
        tag_items: list[Any] = [KeyValue(str(k), _tag_value(v)) for k, v in (tags or {}).items()]
        if self._write_past_orm(run_id, metric_items, param_items, tag_items):
            return
        from mlflow.entities import Metric, Param, RunTag

        metric_items = [Metric(*item) for item in metric_items]
        param_items = [Param(*item) for item in param_items]
        tag_items = [RunTag(*item) for item in tag_items]
        for m, p, t in batch_slices(len(metric_items), len(param_items), len(tag_items)):
            self._call(
                lambda m=m, p=p, t=t: self.client.log_batch(
                    run_id, metrics=metric_items[m], params=param_items[p], tags=tag_items[t], synchronous=True
                ),
                "logging metrics, params and tags",
            )

    def log_artifacts(self, run_id: str, local_dir: str | Path) -> None:
        artifact_uri = self._open_here.get(run_id)
        if artifact_uri is None:
            self._call(lambda: self.client.log_artifacts(run_id, str(local_dir)), "uploading artifacts")
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        self._call(lambda: repository.log_artifacts(str(local_dir)), "uploading artifacts")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        _check_status(status)
        writer = self._sql_writer(run_id)
        end_time = int(time.time() * 1000)
        if writer is None or not self._call(lambda: writer.end(run_id, status, end_time), f"ending run as {status}"):
            self._call(lambda: self.client.set_terminated(run_id, status=status), f"ending run as {status}")
        self._open_here.pop(run_id, None)  # later artifacts (a sweep's best curves) are rare: MLflow's way

    def reopen_run(self, run_id: str) -> None:
        self._call(lambda: self.client.update_run(run_id, status="RUNNING"), "reopening run")

    def read_run(self, run_id: str) -> RunRecord | None:
        client = self.client
        run = self._call(lambda: client.get_run(run_id), "reading run")
        metrics: dict[str, list[tuple[int, float]]] = {}
        for key in run.data.metrics:
            history = self._call(lambda key=key: client.get_metric_history(run_id, key), "reading metrics")
            metrics[key] = sorted((m.step, m.value) for m in history)
        artifacts: list[str] = []
        pending = [None]
        while pending:
            folder = pending.pop()
            for info in self._call(lambda folder=folder: client.list_artifacts(run_id, folder), "listing artifacts"):
                (pending if info.is_dir else artifacts).append(info.path)
        return RunRecord(
            run_id=run.info.run_id,
            name=run.info.run_name,
            status=run.info.status,
            params=dict(run.data.params),
            metrics=metrics,
            tags=dict(run.data.tags),
            artifacts=sorted(artifacts),
        )

    def download_artifact(self, run_id: str, path: str, dst_dir: str | Path) -> Path | None:
        local = self._call(lambda: self.client.download_artifacts(run_id, path, str(dst_dir)), "downloading artifact")
        return Path(local)

    def find_runs(self, tags: Mapping[str, str], status: str | None = None) -> list[tuple[str, dict[str, str]]]:
        clauses = [f"tags.`{key}` = '{_quote(value)}'" for key, value in tags.items()]
        if status is not None:
            clauses.append(f"attributes.status = '{_quote(status)}'")
        found: list[tuple[str, dict[str, str]]] = []
        token = None
        while True:
            page = self._call(
                lambda token=token: self.client.search_runs(
                    [self.experiment_id], " and ".join(clauses), max_results=1000, page_token=token
                ),
                "searching runs",
            )
            found.extend((run.info.run_id, dict(run.data.tags)) for run in page)
            token = page.token
            if not token:
                return found

    def run_status(self, run_id: str) -> str:
        """The run's status (RUNNING, FINISHED, FAILED, KILLED)."""
        return self._call(lambda: self.client.get_run(run_id), "reading run").info.status

    def ui_url(self, run_id: str | None = None) -> str | None:
        """A link to the run (or experiment) in the MLflow UI when the URI is a server."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        base = f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}"
        return f"{base}/runs/{run_id}" if run_id else f"{base}/runs"


def deleted_experiment_error(name: str) -> ServiceError:
    """The error for an experiment that exists but is deleted (MLflow keeps its name taken)."""
    return ServiceError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                        "or choose another name with --experiment")


def _use_wal(db: Path) -> None:
    """Switch a SQLite tracking file to write-ahead logging (kept in the file).

    In WAL mode readers never block the writer and a commit appends to the log
    instead of rewriting pages (https://sqlite.org/wal.html), so sweep workers
    sharing the file wait less on each other.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # a file system without shared memory keeps the rollback journal; that still works


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _is_connection_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        word in text
        for word in ("connection refused", "max retries exceeded", "could not connect", "connectionerror",
                     "timed out", "name or service not known", "operationalerror")
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "experiment"


def batch_slices(n_metrics: int, n_params: int, n_tags: int) -> list[tuple[slice, slice, slice]]:
    """Split metrics, params and tags into requests within MLflow's limits, fewest requests first.

    Each request holds at most 1000 metrics, 100 params, 100 tags and 1000 items in all;
    params and tags go first, metrics fill the remaining room.

    Returns:
        One ``(metrics, params, tags)`` triple of slices per request; none when all counts are 0.
    """
    out = []
    m = p = t = 0
    while m < n_metrics or p < n_params or t < n_tags:
        dp = min(MAX_PARAMS_PER_BATCH, n_params - p)
        dt = min(MAX_TAGS_PER_BATCH, n_tags - t)
        dm = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - dp - dt, n_metrics - m)
        out.append((slice(m, m + dm), slice(p, p + dp), slice(t, t + dt)))
        m, p, t = m + dm, p + dp, t + dt
    return out


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 1] + "…"


def _tag_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value)
    else:
        text = "" if value is None else str(value)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 1] + "…"


def make_tracker(uri: str | None = None, experiment: str | None = None, *, enabled: bool = True,
                 process: bool = False, connect: str | None = None) -> Tracker:
    """The tracker for a command's flags: MLflow at ``uri`` (default: see :func:`resolve_tracking_uri`), or none.

    Args:
        uri: ``--tracking-uri``; ``None`` falls back to ``$MLFLOW_TRACKING_URI``, then ``sqlite:///mlflow.db``.
        experiment: ``--experiment`` or the spec's ``experiment``; default ``bpexp``.
        enabled: False for ``--no-track``.
        process: write from a helper process (:class:`bpexp.tracking_process.ProcessTracker`),
            so that recording overlaps training; what a sweep uses.
        connect: with ``process``, the socket of a helper process already running (another
            tracker's ``address``) to write through, instead of starting one.

    Returns:
        A :class:`NoOpTracker`, a ProcessTracker, a :class:`bpexp.tracking_direct.DirectSqlTracker`
        where it serves the store as it stands, else an :class:`MlflowTracker`; not yet checked.
    """
    if not enabled:
        return NoOpTracker(experiment or DEFAULT_EXPERIMENT)
    if process:
        from bpexp.tracking_process import ProcessTracker

        return ProcessTracker(uri, experiment, connect=connect)
    # a migrated SQL store is served without importing MLflow (1.5-5 s of CPU by machine); an
    # unreachable one fails where the command checks its tracker, as before
    from bpexp.tracking_direct import pick_tracker

    return pick_tracker(uri, experiment)


# ------------------------------------------------------------- results → run contents

#: History series logged as per-epoch metrics (step = epoch, from 1)
EPOCH_METRICS = tuple(name for name in History.PER_EPOCH if name != "epoch")
"""The per-epoch series logged as metrics, with the epoch number as their step."""

CURVE_METRICS = ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
"""The learning curves: what a sweep's trial runs log per epoch by default (``sweep.metrics``).

The other History series (norms, iterations, batch loss) stay in each run's history.json;
a store writes every metric row one by one, so 5 keys instead of 11 halve a trial's writes.
"""


def epoch_metrics(history: "History", start: int = 0, keys: Sequence[str] = EPOCH_METRICS) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` for epochs ``start``.. of a History (step = epoch number), for the series ``keys``."""
    rows = []
    for i in range(start, len(history.epoch)):
        step = int(history.epoch[i])
        for key in keys:
            rows.append((key, float(getattr(history, key)[i]), step))
    return rows


class EpochLogger:
    """Sends per-epoch metrics of a run in batches while it trains.

    Call it as ``on_epoch(epoch, history)``; it buffers and sends when
    ``flush_seconds`` have passed (so the UI shows a long run's progress) and on
    :meth:`flush`. Never one request per value.
    """

    def __init__(self, tracker: Tracker, run_id: str, flush_seconds: float = 15.0,
                 keys: Sequence[str] = EPOCH_METRICS) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.keys = tuple(keys)
        self._sent = 0
        self._history: "History | None" = None
        self._last = time.monotonic()

    def __call__(self, epoch: int, history: "History") -> None:
        self._history = history
        if time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def take(self, history: "History | None" = None) -> list[tuple[str, float, int]]:
        """The epochs not yet sent, as metric rows, now counted as sent (the caller sends them)."""
        history = history if history is not None else self._history
        if history is None:
            return []
        rows = epoch_metrics(history, self._sent, self.keys)
        self._sent = len(history.epoch)
        self._last = time.monotonic()
        return rows

    def flush(self, history: "History | None" = None) -> None:
        """Send every epoch not yet sent."""
        rows = self.take(history)
        if rows:
            self.tracker.log_metrics(self.run_id, rows)


def findings_tags(findings: Sequence[Any]) -> dict[str, str]:
    """Tags of a diagnosis: ``bpexp.diagnosis`` (comma-separated modes, or ``none``) and one per mode.

    The per-mode tag ``bpexp.diagnosis.<mode>`` holds the finding's confidence.
    """
    modes = []
    tags: dict[str, str] = {}
    for finding in findings:
        item = finding.to_dict() if hasattr(finding, "to_dict") else dict(finding)
        mode = str(item["mode"])
        if mode not in modes:
            modes.append(mode)
            confidence = item.get("confidence")
            tags[f"{TAG_DIAGNOSIS}.{mode}"] = "" if confidence is None else f"{confidence}"
    tags[TAG_DIAGNOSIS] = ",".join(modes) if modes else "none"
    return tags


def diagnose_result(result: "TrainResult", lr_find: Any = None) -> list[Any]:
    """The diagnosis of a run, or ``[]`` while bpexp.diagnose is not available."""
    try:
        from bpexp.diagnose import diagnose
    except ImportError:
        return []
    return list(diagnose(result, lr_find=lr_find))


def run_tags(result: "TrainResult", findings: Sequence[Any]) -> dict[str, str]:
    """The tags of a finished training run: stop reason, diagnosis, dataset fingerprint, seed, version."""
    return {
        TAG_STOP_REASON: result.stop_reason,
        TAG_FINGERPRINT: result.dataset.fingerprint(),
        TAG_SEED: str(result.config.seed),
        TAG_VERSION: __version__,
        **findings_tags(findings),
    }


def config_params(config: Any) -> dict[str, Any]:
    """The fully resolved config, flattened to dotted keys (the run's params)."""
    return flatten(config.model_dump(mode="json"))


def final_metrics(result: "TrainResult") -> list[tuple[str, float, int]]:
    """``final.<key>`` metrics (after best-weight restore) plus ``epochs``, at step = epochs run."""
    step = result.epochs
    rows = [(f"final.{k}", float(v), step) for k, v in result.final.items() if v is not None]
    rows.append(("epochs", float(result.epochs), step))
    rows.extend((f"initial.{k}", float(v), 0) for k, v in result.history.initial.items())
    return rows


def save_weights(model: Any, path: str | Path) -> Path:
    """Write a model's weights to ``.npz`` by parameter name, with no pickled objects.

    Returns:
        The path written.
    """
    path = Path(path)
    arrays = {name: np.asarray(w) for name, w in zip(model.param_names, model.get_weights())}
    if any(a.dtype == object for a in arrays.values()):
        raise ValueError("save_weights: object arrays would need pickle")
    np.savez(path, **arrays)
    return path


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read weights saved by :func:`save_weights`, refusing pickled content.

    Returns:
        Parameter name → array, in the model's parameter order.
    """
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def curves_png(history: "History", title: str = "") -> bytes:
    """The PNG bytes :func:`draw_curves` writes."""
    with tempfile.TemporaryDirectory(prefix="bpexp-curves-") as tmp:
        return draw_curves(history, Path(tmp, "curves.png"), title).read_bytes()


def draw_curves(history: "History", path: str | Path, title: str = "") -> Path:
    """Save loss, accuracy and λ per epoch as one PNG (three panels).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    arrays = history.arrays()
    epochs = arrays["epoch"]
    # fixed margins: constrained layout measured every label's box and doubled the drawing time
    figure = Figure(figsize=(9, 2.8), dpi=80)
    figure.subplots_adjust(left=0.07, right=0.985, bottom=0.17, top=0.8 if title else 0.9, wspace=0.28)
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    loss_ax.plot(epochs, arrays["train_loss"], label="train")
    loss_ax.plot(epochs, arrays["val_loss"], label="val")
    loss_ax.set(title="loss", xlabel="epoch", yscale="log" if np.all(arrays["train_loss"] > 0) else "linear")
    loss_ax.legend(fontsize="small")
    acc_ax.plot(epochs, arrays["train_accuracy"], label="train")
    acc_ax.plot(epochs, arrays["val_accuracy"], label="val")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    lr_ax.plot(epochs, arrays["lr"], color="tab:green")
    lr_ax.set(title="λ (epoch start)", xlabel="epoch")
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.savefig(path)
    return Path(path)


def write_run_artifacts(
    folder: str | Path, history: "History", *, model: Any = None, findings: Sequence[Any] = (), curves: bool = True, title: str = ""
) -> Path:
    """Write a run's artifacts into ``folder``: history.json, curves.png, weights.npz, diagnosis.json.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.json").write_text(json.dumps(history.to_dict(), allow_nan=False))
    if findings:
        items = [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in findings]
        (folder / "diagnosis.json").write_text(json.dumps(items, allow_nan=False, default=_json_default))
    if curves and len(history.epoch):
        draw_curves(history, folder / "curves.png", title)
    if model is not None:
        save_weights(model, folder / "weights.npz")
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def log_result(
    tracker: Tracker,
    run_id: str,
    result: "TrainResult",
    findings: Sequence[Any] = (),
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Sequence[tuple[str, float, int]] = (),
    tags: Mapping[str, Any] | None = None,
    curves: bool = True,
    logger: EpochLogger | None = None,
) -> None:
    """Record a finished training run in one batch (chunked only past MLflow's limits) plus its artifacts.

    Params: the flattened config and ``params``; metrics: the epochs not yet sent by
    ``logger`` (the run's :class:`EpochLogger`, if any), the final metrics and
    ``metrics``; tags: :func:`run_tags` and ``tags``; artifacts: history.json,
    weights.npz, diagnosis.json and (``curves``) curves.png.
    """
    rows = logger.take(result.history) if logger is not None else epoch_metrics(result.history)
    tracker.log_batch(
        run_id,
        metrics=rows + final_metrics(result) + list(metrics),
        params={**config_params(result.config), **(params or {})},
        tags={**run_tags(result, findings), **(tags or {})},
    )
    if tracker.uri is None:
        return  # nothing stores artifacts: skip drawing them
    with tempfile.TemporaryDirectory(prefix="bpexp-artifacts-") as tmp:
        write_run_artifacts(tmp, result.history, model=result.model, findings=findings, curves=curves, title=result.config.name)
        tracker.log_artifacts(run_id, tmp)


@contextmanager
def open_run(
    tracker: Tracker, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[str]:
    """Open a run for the body of a ``with`` block and close it by how the block ends.

    FINISHED on a normal exit, KILLED on Ctrl-C (and on ``optuna.TrialPruned``,
    matched by name so this module needs no optuna), FAILED with the error as the
    ``bpexp.error`` tag on any other exception, which is re-raised.

    Yields:
        The run id.
    """
    run_id = tracker.start_run(name, parent_run_id=parent_run_id, tags=tags)
    try:
        yield run_id
    except BaseException as exc:
        _end_failed(tracker, run_id, exc)
        raise
    tracker.end_run(run_id, "FINISHED")


def track_train(
    tracker: Tracker,
    result: "TrainResult",
    findings: Sequence[Any] = (),
    *,
    name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Record one finished training run from start to end. Returns its run id."""
    with open_run(tracker, name or result.config.name, parent_run_id=parent_run_id, tags={TAG_KIND: "train", **(tags or {})}) as run_id:
        log_result(tracker, run_id, result, findings)
    return run_id


def _end_failed(tracker: Tracker, run_id: str, exc: BaseException) -> None:
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TrialPruned" else "FAILED"
    try:
        if status == "FAILED":
            tracker.set_tags(run_id, {TAG_ERROR: f"{type(exc).__name__}: {exc}"})
        tracker.end_run(run_id, status)
    except Exception:  # the backend itself is what failed: keep the first error
        pass


#: range-test series (LRFindResult.to_dict keys) → metric keys, logged with step = iteration
LR_FIND_SERIES = {
    "lrs": "lr_find.lr",
    "losses": "lr_find.loss",
    "smoothed": "lr_find.smoothed_loss",
    "accuracies": "lr_find.accuracy",
}


def log_lr_find(
    tracker: Tracker,
    result: Any,
    config: Any,
    *,
    parent_run_id: str | None = None,
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    plot_path: str | Path | None = None,
) -> str:
    """Record a range test (``bpexp lr-find`` or a sweep's ``lr: auto``) as its own run.

    Params: the config, flattened, and ``suggestion.<name>`` = λ for each suggestion;
    metrics ``lr_find.lr``, ``lr_find.loss``, ``lr_find.smoothed_loss`` and
    ``lr_find.accuracy`` with step = iteration (accuracy where measured); tags
    ``bpexp.suggestion.<name>`` = the reason; artifacts ``lr_find.json`` (the whole
    result) and ``lr_find.png`` (``plot_path`` if the caller drew it, else drawn here).

    Returns:
        The run id.
    """
    payload = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    run_name = name or f"{config.name}-lr-find"
    with open_run(tracker, run_name, parent_run_id=parent_run_id, tags={TAG_KIND: "lr_find", **(tags or {})}) as run_id:
        params = config_params(config)
        suggestions = getattr(result, "suggestions", None) or {}
        tag_values: dict[str, Any] = {TAG_SEED: str(config.seed), TAG_VERSION: __version__}
        for key, suggestion in suggestions.items():
            lr = getattr(suggestion, "lr", None)
            if lr is not None:
                params[f"suggestion.{key}"] = lr
            reason = getattr(suggestion, "reason", None)
            if reason:
                tag_values[f"bpexp.suggestion.{key}"] = reason
        tracker.log_params(run_id, params)
        rows = []
        for series, key in LR_FIND_SERIES.items():
            values = payload.get(series) if isinstance(payload, dict) else None
            if isinstance(values, list):
                # accuracies are measured every few steps only: the gaps (None) are not sent
                rows.extend((key, float(v), step) for step, v in enumerate(values) if v is not None)
        if rows:
            tracker.log_metrics(run_id, rows)
        tracker.set_tags(run_id, tag_values)
        if tracker.uri is not None:
            with tempfile.TemporaryDirectory(prefix="bpexp-lrfind-") as tmp:
                Path(tmp, "lr_find.json").write_text(json.dumps(payload, default=_json_default))
                if plot_path is not None and Path(plot_path).is_file():
                    shutil.copyfile(plot_path, Path(tmp, "lr_find.png"))  # the figure the command already drew
                tracker.log_artifacts(run_id, tmp)
            if (plot_path is None or not Path(plot_path).is_file()) and payload.get("lrs"):
                tracker.log_figure(run_id, "bpexp.lr_find:plot", result, "lr_find.png")
    return run_id
