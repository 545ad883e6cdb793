"""Running a batch on a schedule: APScheduler with its job store in the batch's database.

:func:`serve` is ``bpexp batch serve``. The schedule is an APScheduler 3 job (a cron
trigger) kept in a :class:`~apscheduler.jobstores.sqlalchemy.SQLAlchemyJobStore`
table, ``bpexp_apscheduler_jobs``, beside the ledger. Because the job's next fire
time is stored:

- a firing missed while no scheduler ran is run once when one starts again
  (``coalesce``: several missed firings make one run; ``misfire_grace_time``: only
  if it was missed by less than that);
- restarting with the same cron keeps the stored fire time; a new cron replaces it.

Each firing calls :func:`bpexp.batch.runner.run_batch` with the key ``cron-<fire
time>``, so two schedulers firing at once (two machines) make one batch run, and
the batch's advisory lock keeps two runs from overlapping. A batch run that was
stopped (SIGTERM) or whose process died is resumed when the scheduler starts.
A stop request lets the running trial (or epoch) finish, then the scheduler exits.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bpexp.batch.ledger import BatchRunRow, Ledger, make_engine
from bpexp.batch.locks import try_lock
from bpexp.batch.runner import Echo, batch_database, run_batch, scheduled_key
from bpexp.batch.spec import load_batch
from bpexp.errors import BpexpError, ConfigError

JOBS_TABLE = "bpexp_apscheduler_jobs"
DEFAULT_MISFIRE_GRACE = 6 * 3600  # a nightly batch missed by up to 6 h still runs when the scheduler comes back
CRON_FIELDS_5 = "minute hour day month day_of_week"
CRON_FIELDS_6 = "second minute hour day month day_of_week"

log = logging.getLogger("bpexp.batch")

# The stop request of the scheduler running in this process; read by each firing.
_STOP = threading.Event()
# Held by the firing that runs; stopping waits on it before shutting the scheduler down.
_FIRING = threading.Lock()


def job_id(batch: str) -> str:
    """The job store id of a batch's schedule."""
    return f"bpexp-batch:{batch}"


def parse_cron(expression: str, timezone: str | None = None):
    """A cron trigger from 5 fields (``minute hour day month day_of_week``, as crontab) or 6 (seconds first).

    ``day_of_week`` follows APScheduler: ``mon``-``sun`` or 0-6 with 0 = Monday.

    Returns:
        An :class:`apscheduler.triggers.cron.CronTrigger`.

    Raises:
        ConfigError: when the expression does not parse, saying why.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    try:
        if len(fields) == 5:
            return CronTrigger.from_crontab(expression, timezone=timezone)
        if len(fields) == 6:
            return CronTrigger(**dict(zip(CRON_FIELDS_6.split(), fields)), timezone=timezone)
        raise ValueError(f"give 5 fields ({CRON_FIELDS_5}) or 6 ({CRON_FIELDS_6}); got {len(fields)}")
    except (ValueError, TypeError, LookupError) as exc:  # bad fields; an unknown time zone is a LookupError
        raise ConfigError(f"--cron {expression!r} does not parse: {exc}") from None


def _fired_executor(max_workers: int = 1):
    """A thread pool executor that hands each firing its scheduled time (APScheduler 3 passes none)."""
    from apscheduler.executors.pool import ThreadPoolExecutor

    class _Fired:
        # the job as the executor sees it, with fire_time added to its kwargs
        def __init__(self, job: Any, fire_time: datetime) -> None:
            self._job = job
            self.kwargs = {**job.kwargs, "fire_time": fire_time.isoformat(timespec="seconds")}

        def __getattr__(self, name: str) -> Any:
            return getattr(self._job, name)

        def __str__(self) -> str:
            return str(self._job)

    class FireTimeExecutor(ThreadPoolExecutor):
        def _do_submit_job(self, job: Any, run_times: list) -> None:
            if _STOP.is_set():
                # stopping: APScheduler's loop may still hand over a firing that fell due
                # (after our pause, or into the closed pool); it would stop at once anyway
                return
            super()._do_submit_job(_Fired(job, run_times[-1]), run_times)

    return FireTimeExecutor(max_workers)


def fire(
    batch_file: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    fire_time: str | None = None,
    key: str | None = None,
) -> str:
    """One firing of a batch's schedule (the job function; its arguments are stored in the job store).

    The batch file is read again at every firing, so edits take effect without a
    restart. Never raises: what went wrong is logged in one line.

    Returns:
        The batch run's status.
    """
    if _STOP.is_set():
        return "stopped"  # submitted just before the scheduler paused: the next start runs it as a missed firing
    with _FIRING:
        return _fire(batch_file, tracking_uri, experiment, storage, workers, fire_time, key)


def _fire(
    batch_file: str,
    tracking_uri: str | None,
    experiment: str | None,
    storage: str | None,
    workers: int | None,
    fire_time: str | None,
    key: str | None,
) -> str:
    try:
        batch = load_batch(batch_file)
        key = key or scheduled_key(fire_time or datetime.now().astimezone().isoformat(timespec="seconds"))
        log.info("batch %s: firing %s", batch.name, key)
        outcome = run_batch(
            batch, tracking_uri=tracking_uri, experiment=experiment, storage=storage, workers=workers,
            key=key, trigger="schedule", stop=_STOP, echo=log.info,
        )
    except BpexpError as exc:
        log.error("batch %s: %s", batch_file, exc)
        return "error"
    except Exception as exc:  # noqa: BLE001 - a firing must not kill the scheduler
        log.error("batch %s: internal error: %s: %s", batch_file, type(exc).__name__, exc, exc_info=bool(os.environ.get("BPEXP_DEBUG")))
        return "error"
    line = f"batch {outcome.batch}: {outcome.status}"
    if outcome.batch_run_id:
        line += f" (run {outcome.batch_run_id}, {outcome.seconds:.1f} s)"
    if outcome.message:
        line += f": {outcome.message}"
    (log.warning if outcome.status in ("failed", "interrupted") else log.info)(line)
    return outcome.status


@dataclass
class Schedule:
    """A batch's stored schedule: its trigger and next fire time (None when paused or absent)."""

    batch: str
    trigger: str
    next_run_time: datetime | None


def _configure_logging() -> None:
    # one timestamped line per event on stderr; APScheduler's own INFO lines (job added,
    # job executed) repeat ours, its warnings (a firing missed past its grace time) do not
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        aps = logging.getLogger("apscheduler")
        aps.addHandler(handler)
        aps.setLevel(logging.WARNING)
        aps.propagate = False


def serve(
    batch_file: str | Path,
    *,
    cron: str,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    misfire_grace: int = DEFAULT_MISFIRE_GRACE,
    timezone: str | None = None,
    stop: threading.Event | None = None,
    echo: Echo | None = None,
) -> int:
    """Run a batch on a cron schedule until ``stop`` is set. Returns the exit code (0).

    Raises:
        ConfigError: a bad batch file or cron expression, or a server tracking URI without an RDB ``storage``.
        ServiceError: the tracking store or the database cannot be reached at start.
    """
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from bpexp.tracking import make_tracker

    _configure_logging()
    say = echo or log.info
    batch_file = str(Path(batch_file).resolve())
    batch = load_batch(batch_file)
    trigger = parse_cron(cron, timezone)
    tracker = make_tracker(tracking_uri, experiment or batch.experiment)
    db = batch_database(tracker.uri, storage)
    tracker.check()
    engine = make_engine(db)
    jobs = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)
    ledger = Ledger(db)
    # the job store creates its table on start by check-then-create: two schedulers starting at
    # once on one database would collide, so the table is made here, as the ledger's are
    ledger.ensure_tables(jobs.jobs_t)
    stop = stop if stop is not None else threading.Event()
    _STOP.clear()
    scheduler = BackgroundScheduler(
        jobstores={"default": jobs, "once": MemoryJobStore()},
        executors={"default": _fired_executor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": misfire_grace},
        timezone=timezone,
    )
    kwargs = {"batch_file": batch_file, "tracking_uri": tracker.uri, "experiment": experiment, "storage": storage, "workers": workers}
    try:
        scheduler.start(paused=True)
        _install_job(scheduler, batch.name, trigger, kwargs, misfire_grace, say)
        leftover = _unfinished_run(ledger, db, batch.name)
        if leftover is not None:
            say(f"batch {batch.name}: resuming its {leftover.status} run {leftover.id} ({leftover.key})")
            scheduler.add_job(fire, "date", jobstore="once", id=f"resume:{leftover.id}", kwargs={**kwargs, "key": leftover.key})
        scheduler.resume()
        upcoming = trigger.get_next_fire_time(None, datetime.now(trigger.timezone))  # after any missed firing
        say(f"batch {batch.name}: cron {cron!r}, next run at {upcoming.isoformat() if upcoming else '-'}")
        while not stop.wait(0.5):
            pass
        say(f"batch {batch.name}: stopping (a running trial or epoch finishes first)")
    finally:
        _STOP.set()
        if scheduler.running:
            # paused first, so that a firing due meanwhile stays due (a missed one, run at
            # the next start), and the running firing waited for here rather than in shutdown()
            scheduler.pause()
            with _FIRING:
                pass
            scheduler.shutdown(wait=True)
        engine.dispose()
        ledger.dispose()
    say(f"batch {batch.name}: scheduler stopped")
    return 0


def _install_job(scheduler: Any, batch: str, trigger: Any, kwargs: dict[str, Any], grace: int, say: Echo) -> Any:
    """Add the batch's job, or keep the stored one (and its next fire time) when its trigger is the same."""
    existing = scheduler.get_job(job_id(batch))
    if existing is not None and repr(existing.trigger) == repr(trigger):
        scheduler.modify_job(existing.id, kwargs=kwargs, misfire_grace_time=grace, coalesce=True, max_instances=1)
        if existing.next_run_time is not None and existing.next_run_time <= datetime.now(existing.next_run_time.tzinfo):
            say(f"batch {batch}: the firing of {existing.next_run_time.isoformat()} was missed; it runs now")
        return existing
    if existing is not None:
        say(f"batch {batch}: the schedule changed from {existing.trigger} to {trigger}")
    return scheduler.add_job(
        fire, trigger, id=job_id(batch), name=f"batch {batch}", kwargs=kwargs, replace_existing=True,
        coalesce=True, max_instances=1, misfire_grace_time=grace,
    )


def _unfinished_run(ledger: Ledger, db: str, batch: str) -> BatchRunRow | None:
    """The latest run of the batch if it was stopped or its process died (its lock is free), else None."""
    row = ledger.latest_run(batch)
    if row is None or row.status not in ("interrupted", "running"):
        return None
    if row.status == "running":
        lock = try_lock(db, f"batch-{batch}")
        if lock is None:
            return None  # it really is running, elsewhere
        lock.release()
    return row


def read_schedule(db: str, batch: str) -> Schedule | None:
    """The batch's stored schedule, or None when it has none.

    Raises:
        ServiceError: when the database cannot be reached.
    """
    import sqlalchemy as sa
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    engine = make_engine(db)
    try:
        try:
            if not sa.inspect(engine).has_table(JOBS_TABLE):
                return None
        except sa.exc.SQLAlchemyError as exc:
            from bpexp.batch.ledger import redact
            from bpexp.errors import ServiceError

            raise ServiceError(f"batch database {redact(db)} cannot be reached ({str(getattr(exc, 'orig', exc)).strip().splitlines()[0]})") from None
        store = SQLAlchemyJobStore(engine=engine, tablename=JOBS_TABLE)
        job = store.lookup_job(job_id(batch))
        if job is None:
            return None
        return Schedule(batch, str(job.trigger), job.next_run_time)
    finally:
        engine.dispose()

