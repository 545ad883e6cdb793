"""The ledger: every run of a batch and the state of each of its experiments.

Two tables, prefixed ``bpexp_`` so they sit beside MLflow's (or Optuna's) in the
same database without touching them (neither uses the names, and the ledger keeps
out of their alembic migrations: it creates its tables with ``CREATE TABLE IF NOT
EXISTS``):

- ``bpexp_batch_runs``: one row per batch run. Its id is the batch's own MLflow run
  id; ``key`` says what started it (``manual-<time>``, or ``cron-<fire time>`` for a
  scheduled firing, so two schedulers firing at the same moment make one run).
- ``bpexp_batch_experiments``: one row per (batch run, experiment): pending,
  running, finished or failed, the MLflow run (or sweep parent run) and study it
  made, a short JSON summary and the error.

A batch run is *finished* when all its experiments are; ``bpexp batch run`` resumes
the latest run of a batch while it is not, and skips the experiments it finished.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bpexp.errors import ServiceError

RUNS_TABLE = "bpexp_batch_runs"
EXPERIMENTS_TABLE = "bpexp_batch_experiments"
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
EXPERIMENT_STATES = ("pending", "running", "finished", "failed")
# SQLite: seconds a writer waits for another (MLflow's workers write the same file) before "database is locked".
SQLITE_BUSY_TIMEOUT = 30
# PostgreSQL: seconds to wait for the server before saying it cannot be reached.
CONNECT_TIMEOUT = 5


def utcnow() -> datetime:
    """Now, in UTC (the ledger stores UTC times)."""
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes: they were written in UTC
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


@dataclass
class ExperimentRow:
    """One experiment of a batch run, as the ledger holds it."""

    name: str
    position: int
    kind: str
    state: str = "pending"
    run_id: str | None = None
    study_name: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchRunRow:
    """One run of a batch, as the ledger holds it."""

    id: str
    batch: str
    key: str
    trigger: str
    status: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    tracking_uri: str | None = None
    message: str | None = None
    experiments: list[ExperimentRow] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """True when every experiment of the run finished."""
        return self.status == "finished"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "id": self.id,
            "batch": self.batch,
            "key": self.key,
            "trigger": self.trigger,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "host": self.host,
            "pid": self.pid,
            "message": self.message,
            "experiments": [
                {
                    "name": e.name,
                    "kind": e.kind,
                    "state": e.state,
                    "run_id": e.run_id,
                    "study_name": e.study_name,
                    "attempts": e.attempts,
                    "seconds": e.seconds,
                    "summary": e.summary,
                    "error": e.error,
                }
                for e in self.experiments
            ],
        }


def redact(url: str) -> str:
    """A database URL with its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def make_engine(url: str):
    """A SQLAlchemy engine for the ledger and job store: short connect timeout, SQLite busy wait.

    Raises:
        ServiceError: for a URL SQLAlchemy cannot use (unknown dialect, missing driver).
    """
    import sqlalchemy

    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
    elif url.startswith(("postgresql", "postgres", "mysql")):
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    try:
        return sqlalchemy.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except Exception as exc:
        raise ServiceError(f"batch database {redact(url)}: {type(exc).__name__}: {exc}") from None


def _tables(metadata):
    import sqlalchemy as sa

    runs = sa.Table(
        RUNS_TABLE,
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("batch", sa.String(200), nullable=False, index=True),
        sa.Column("key", sa.String(120), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("tracking_uri", sa.Text),
        sa.Column("message", sa.Text),
        sa.UniqueConstraint("batch", "key", name="bpexp_batch_runs_batch_key"),
    )
    experiments = sa.Table(
        EXPERIMENTS_TABLE,
        metadata,
        sa.Column("batch_run_id", sa.String(64), sa.ForeignKey(f"{RUNS_TABLE}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("study_name", sa.String(255)),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("seconds", sa.Float),
        sa.Column("summary", sa.Text),
        sa.Column("error", sa.Text),
    )
    return runs, experiments


class Ledger:
    """The batch ledger in a SQLAlchemy database (the tracking store's SQLite file or PostgreSQL).

    Every method raises :class:`~bpexp.errors.ServiceError` when the database cannot be reached.
    """

    def __init__(self, url: str, engine: Any = None) -> None:
        import sqlalchemy as sa

        self.url = url
        self.engine = engine if engine is not None else make_engine(url)
        self._metadata = sa.MetaData()
        self.runs, self.experiments = _tables(self._metadata)
        self._ready = False

    # -- plumbing
    def _error(self, exc: BaseException) -> ServiceError:
        text = str(getattr(exc, "orig", exc)).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return ServiceError(f"batch database {redact(self.url)} cannot be used ({first})")

    def _run(self, action, write: bool = False):
        self.ensure_tables()
        try:
            with (self.engine.begin() if write else self.engine.connect()) as conn:
                return action(conn)
        except ServiceError:
            raise
        except Exception as exc:
            if _is_db_error(exc):
                raise self._error(exc) from None
            raise

    def ensure_tables(self, *others: Any) -> None:
        """Create the ledger's tables, and the SQLAlchemy ``others`` beside them (the scheduler's job
        table), if they are missing; safe when another process does it at the same time.

        Raises:
            ServiceError: when the database cannot be reached or written.
        """
        if self._ready and not others:
            return
        for attempt in range(3):
            try:
                self._metadata.create_all(self.engine, checkfirst=True)
                for table in others:
                    table.create(self.engine, checkfirst=True)
                break
            except Exception as exc:
                # a second process created them between our check and our CREATE: look again
                if attempt == 2 or not _is_db_error(exc) or _is_unreachable(exc):
                    raise self._error(exc) from None
        self._ready = True

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

    # -- batch runs
    def create_run(self, run_id: str, batch: str, key: str, trigger: str, experiments: list[tuple[str, str]], tracking_uri: str | None) -> BatchRunRow:
        """Record a new batch run (status running) and its experiments (pending), in order.

        Args:
            experiments: (name, kind) pairs in batch order.
        """
        now = utcnow()

        def action(conn):
            conn.execute(
                self.runs.insert().values(
                    id=run_id, batch=batch, key=key, trigger=trigger, status="running", created_at=now, updated_at=now,
                    host=socket.gethostname(), pid=os.getpid(), tracking_uri=tracking_uri,
                )
            )
            for position, (name, kind) in enumerate(experiments):
                conn.execute(
                    self.experiments.insert().values(
                        batch_run_id=run_id, name=name, position=position, kind=kind, state="pending", attempts=0
                    )
                )

        self._run(action, write=True)
        return self.get_run(run_id)

    def add_missing_experiments(self, run_id: str, experiments: list[tuple[str, str]]) -> None:
        """Add (pending) the experiments a batch file gained since the run started; keep the others' states and reorder."""

        def action(conn):
            have = {row.name for row in conn.execute(self.experiments.select().where(self.experiments.c.batch_run_id == run_id))}
            for position, (name, kind) in enumerate(experiments):
                if name in have:
                    conn.execute(
                        self.experiments.update()
                        .where(self.experiments.c.batch_run_id == run_id, self.experiments.c.name == name)
                        .values(position=position, kind=kind)
                    )
                else:
                    conn.execute(
                        self.experiments.insert().values(
                            batch_run_id=run_id, name=name, position=position, kind=kind, state="pending", attempts=0
                        )
                    )

        self._run(action, write=True)

    def set_run(self, run_id: str, *, status: str | None = None, message: str | None = None, ended: bool = False, claim: bool = False) -> None:
        """Update a batch run's status and message; ``ended`` stamps its end; ``claim`` records this host and pid."""
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}; got {status!r}")
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now}
        if status is not None:
            values["status"] = status
        if message is not None:
            values["message"] = message
        if ended:
            values["ended_at"] = now
        elif status == "running":
            values["ended_at"] = None
        if claim:
            values.update(host=socket.gethostname(), pid=os.getpid())
        self._run(lambda conn: conn.execute(self.runs.update().where(self.runs.c.id == run_id).values(**values)), write=True)

    def set_experiment(self, batch_run_id: str, name: str, **values: Any) -> None:
        """Update one experiment's row (state, run_id, study_name, summary, error, times...)."""
        if "state" in values and values["state"] not in EXPERIMENT_STATES:
            raise ValueError(f"state must be one of {EXPERIMENT_STATES}; got {values['state']!r}")
        if "summary" in values:
            values["summary"] = json.dumps(values["summary"], default=str, allow_nan=False) if values["summary"] else None
        table = self.experiments

        def action(conn):
            if values.pop("_attempt", False):
                values["attempts"] = table.c.attempts + 1
            conn.execute(table.update().where(table.c.batch_run_id == batch_run_id, table.c.name == name).values(**values))
            conn.execute(self.runs.update().where(self.runs.c.id == batch_run_id).values(updated_at=utcnow()))

        self._run(action, write=True)

    def start_experiment(self, batch_run_id: str, name: str) -> None:
        """Mark an experiment running: one more attempt, the error of an earlier one cleared."""
        self.set_experiment(batch_run_id, name, state="running", started_at=utcnow(), ended_at=None, error=None, _attempt=True)

    def get_run(self, run_id: str) -> BatchRunRow | None:
        """A batch run and its experiments, or None."""

        def action(conn):
            row = conn.execute(self.runs.select().where(self.runs.c.id == run_id)).first()
            return None if row is None else self._with_experiments(conn, row)

        return self._run(action)

    def run_by_key(self, batch: str, key: str) -> BatchRunRow | None:
        """The batch run that ``key`` started, or None."""

        def action(conn):
            row = conn.execute(self.runs.select().where(self.runs.c.batch == batch, self.runs.c.key == key)).first()
            return None if row is None else self._with_experiments(conn, row)

        return self._run(action)

    def latest_run(self, batch: str) -> BatchRunRow | None:
        """The most recent run of a batch, or None."""
        found = self.list_runs(batch, limit=1)
        return found[0] if found else None

    def list_runs(self, batch: str | None = None, limit: int = 20) -> list[BatchRunRow]:
        """Batch runs, newest first, with their experiments."""
        import sqlalchemy as sa

        def action(conn):
            query = self.runs.select().order_by(sa.desc(self.runs.c.created_at), sa.desc(self.runs.c.id)).limit(limit)
            if batch is not None:
                query = query.where(self.runs.c.batch == batch)
            return [self._with_experiments(conn, row) for row in conn.execute(query).fetchall()]

        return self._run(action)

    def _with_experiments(self, conn, row) -> BatchRunRow:
        rows = conn.execute(
            self.experiments.select().where(self.experiments.c.batch_run_id == row.id).order_by(self.experiments.c.position)
        ).fetchall()
        return BatchRunRow(
            id=row.id,
            batch=row.batch,
            key=row.key,
            trigger=row.trigger,
            status=row.status,
            created_at=_utc(row.created_at),
            updated_at=_utc(row.updated_at),
            ended_at=_utc(row.ended_at),
            host=row.host,
            pid=row.pid,
            tracking_uri=row.tracking_uri,
            message=row.message,
            experiments=[
                ExperimentRow(
                    name=e.name,
                    position=e.position,
                    kind=e.kind,
                    state=e.state,
                    run_id=e.run_id,
                    study_name=e.study_name,
                    attempts=e.attempts or 0,
                    started_at=_utc(e.started_at),
                    ended_at=_utc(e.ended_at),
                    seconds=e.seconds,
                    summary=json.loads(e.summary) if e.summary else {},
                    error=e.error,
                )
                for e in rows
            ],
        )


def _is_db_error(exc: BaseException) -> bool:
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, sqlalchemy.exc.SQLAlchemyError)


def _is_unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("connection refused", "could not connect", "timeout", "unable to open", "no such host", "name or service"))
