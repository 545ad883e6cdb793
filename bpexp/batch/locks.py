"""Non-blocking locks that keep two runs of one batch from overlapping, on one machine or many.

- PostgreSQL: a session advisory lock, ``pg_try_advisory_lock(key)``, on a connection
  kept open while the batch runs. Every machine using the database sees it, and the
  server drops it when the connection ends, so a killed process never leaves it held
  (https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS).
- SQLite: ``flock(LOCK_EX | LOCK_NB)`` on a file beside the database file; the kernel
  drops it when the process dies. A SQLite file is one machine's anyway.

:func:`bpexp.sweep.storage.exclusive` holds the blocking versions of the same locks.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Any

from bpexp.errors import ServiceError


def lock_key(purpose: str) -> int:
    """The signed 64-bit advisory-lock key of a purpose (stable across machines and runs)."""
    digest = hashlib.sha256(f"bpexp:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80] or "lock"


class HeldLock:
    """A lock this process holds; :meth:`release` (or leaving the ``with`` block) lets it go."""

    def __init__(self, release: Any, where: str) -> None:
        self._release = release
        self.where = where

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> "HeldLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


def try_lock(url: str, purpose: str) -> HeldLock | None:
    """Take the lock for ``purpose`` in the database ``url`` if it is free.

    Returns:
        The held lock, or None when another process holds it.

    Raises:
        ServiceError: when the database cannot be reached, or is neither SQLite nor PostgreSQL.
    """
    path = sqlite_file(url)
    if path is not None:
        return _try_flock(path.with_name(f"{path.name}.{_safe(purpose)}.lock"))
    if url.startswith(("postgresql", "postgres")):
        return _try_advisory(url, purpose)
    raise ServiceError(f"batch database {url.split('://', 1)[0]}://...: use SQLite or PostgreSQL (the batch lock needs one of them)")


def _try_flock(lock_path: Path) -> HeldLock | None:
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ServiceError(f"batch lock {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None

    def release() -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return HeldLock(release, str(lock_path))


def _try_advisory(url: str, purpose: str) -> HeldLock | None:
    import psycopg

    from sqlalchemy.engine import make_url

    from bpexp.batch.ledger import CONNECT_TIMEOUT, redact

    key = lock_key(purpose)
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)  # psycopg takes no +driver
    try:
        conn = psycopg.connect(libpq, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(f"batch database {redact(url)} cannot be reached ({first})") from None
    try:
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
    except psycopg.Error as exc:
        conn.close()
        raise ServiceError(f"batch database {redact(url)}: cannot take the batch lock ({exc})") from None
    if not got:
        conn.close()
        return None

    def release() -> None:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.Error:
            pass  # the connection is gone, and the lock with it
        finally:
            conn.close()

    return HeldLock(release, f"pg advisory lock {key}")
