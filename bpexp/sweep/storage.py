"""Where a study lives, and the locks that let several processes share it.

- One machine (the default): Optuna's journal file storage,
  ``JournalStorage(JournalFileBackend(path))``, next to the MLflow data. Optuna's FAQ
  advises it for parallel work on one host and warns that SQLite gives "database is
  locked" there. Its file lock here is an ``flock``, which the kernel releases when
  a worker dies, so a killed worker never leaves the file locked.
- Many machines: an RDB URL (``--storage postgresql+psycopg://...``), with Optuna's
  heartbeats on so that a worker killed mid-trial leaves its trial FAILED and
  :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` queues it again.

:func:`exclusive` is a lock shared by every process of a study: an ``flock`` next to
a file storage, a PostgreSQL advisory lock on PostgreSQL. It guards study
creation (the schema race of two processes opening an empty database) and each
"count the trials, then ask for one" step, so that parallel workers never start
more trials than ``n_trials``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpexp.errors import ServiceError
from bpexp.tracking import PgAdvisoryLock, lock_key

if TYPE_CHECKING:  # pragma: no cover
    import optuna

JOURNAL_NAME = "optuna.journal"
RDB_PREFIXES = ("postgresql", "postgres", "mysql", "sqlite", "mssql", "oracle")


def is_rdb(storage: str) -> bool:
    """True for a SQLAlchemy URL, False for a journal file path."""
    return "://" in storage and storage.split("://", 1)[0].split("+", 1)[0] in RDB_PREFIXES


def default_storage(tracking_uri: str | None) -> str:
    """The journal file next to the MLflow data: beside a SQLite tracking file, else in the working directory."""
    from bpexp.tracking import sqlite_path

    db = sqlite_path(tracking_uri) if tracking_uri else None
    folder = db.parent if db is not None else Path.cwd()
    return str((folder / JOURNAL_NAME).resolve())


def resolve_storage(storage: str | None, tracking_uri: str | None) -> str:
    """``--storage`` as given (an RDB URL, or a journal file made absolute), else :func:`default_storage`.

    Raises:
        ServiceError: for a URL scheme that is neither an RDB nor a file.
    """
    if storage is None:
        return default_storage(tracking_uri)
    if "://" in storage:
        if not is_rdb(storage):
            raise ServiceError(f"--storage {storage!r}: give an RDB URL (postgresql+psycopg://...) or a journal file path")
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
            storage = "sqlite:///" + str(Path(storage.removeprefix("sqlite:///")).resolve())
        return storage
    return str(Path(storage).resolve())


def probe_storage(storage: str) -> None:
    """Fail fast when the storage cannot be reached or written.

    Raises:
        ServiceError: within a few seconds, naming the storage.
    """
    from bpexp.tracking import probe_database

    if is_rdb(storage) and not storage.startswith("sqlite"):
        probe_database(storage, what="study storage")
        return
    path = Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite") else Path(storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceError(f"study storage {storage}: cannot create {path.parent} ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ServiceError(f"study storage {storage}: not writable")


class FlockLock:
    """An exclusive ``flock`` on a lock file: blocking, re-entrant within one holder, released by the kernel on death.

    Implements optuna's journal lock interface (``acquire() -> bool``, ``release()``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> bool:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "FlockLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def exclusive(storage: str, purpose: str) -> contextlib.AbstractContextManager:
    """A lock shared by every process using ``storage`` for ``purpose`` (e.g. ``slots:<study>``).

    A file storage gets an ``flock`` beside it; PostgreSQL an advisory lock; other
    databases no lock (each ask is then only as safe as Optuna makes it).
    """
    if not is_rdb(storage):
        return FlockLock(f"{storage}.{_safe(purpose)}.lock")
    if storage.startswith("sqlite"):
        return FlockLock(f"{storage.removeprefix('sqlite:///')}.{_safe(purpose)}.lock")
    if storage.startswith(("postgresql", "postgres")):
        return PgAdvisoryLock(storage, lock_key(purpose))
    return contextlib.nullcontext()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "lock"


def open_storage(storage: str, *, heartbeat_interval: int, grace_period: int) -> "optuna.storages.BaseStorage":
    """The Optuna storage object for a resolved storage string.

    RDB storages get heartbeats (``heartbeat_interval`` s, stale after ``grace_period`` s)
    and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, so a trial whose
    worker died is failed and queued again with the same params.

    Raises:
        ServiceError: when the database refuses the connection or the schema cannot be made.
    """
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if not is_rdb(storage):
        return JournalStorage(JournalFileBackend(storage, lock_obj=FlockLock(storage + ".lock")))
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    try:
        return RDBStorage(
            storage,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry_callback(),
        )
    except optuna.exceptions.StorageInternalError as exc:
        raise ServiceError(f"study storage {storage}: {exc}") from None


def retry_callback() -> Any:
    """Optuna's callback that queues a failed trial's params again (3 retries at most).

    Optuna 5 names it RetryHeartbeatStaleTrialCallback; RetryFailedTrialCallback is
    its deprecated alias, and the only name in Optuna 4.
    """
    try:
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    except ImportError:  # Optuna < 5
        from optuna.storages import RetryFailedTrialCallback as Retry
    return Retry(max_retry=3)
