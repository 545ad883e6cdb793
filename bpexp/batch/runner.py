"""Running a batch: its experiments in order, each recorded in MLflow and in the ledger.

:func:`run_batch` is what ``bpexp batch run`` and every scheduled firing call. In order:

1. check the tracking store and open the ledger (fail fast, before any training);
2. take the batch's lock without waiting: a second run of the same batch, on this
   machine or another, is refused (or, for a scheduled firing, skipped);
3. pick the batch run: resume the latest one while it is unfinished, start a new one
   (``--force``, or every experiment of the latest finished), or for a scheduled
   firing the run keyed by its fire time;
4. the batch's own MLflow run ("batch <name>") is the parent of every run it makes:
   ``$BPEXP_RUN_TAGS`` names the batch, the batch run and the experiment on each;
5. run each experiment not yet finished, going on past failures; a stop request
   (SIGTERM) lets the running trial or epoch finish and leaves the rest pending;
6. record the outcome on the batch's run and in the ledger.

Train and range-test experiments call the same library functions as ``bpexp train``
and ``bpexp lr-find``; sweeps call :func:`bpexp.sweep.run_sweep` with a study named
after the batch run, so a resumed batch resumes its studies.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bpexp.batch.ledger import BatchRunRow, Ledger, redact, utcnow
from bpexp.batch.locks import try_lock
from bpexp.batch.spec import BatchSpec, Experiment
from bpexp.config import json_safe
from bpexp.errors import BpexpError, ConfigError, ServiceError

if TYPE_CHECKING:  # pragma: no cover
    from bpexp.tracking import Tracker

TAG_BATCH = "bpexp.batch"
TAG_BATCH_RUN = "bpexp.batch_run"
TAG_BATCH_EXPERIMENT = "bpexp.batch_experiment"
TAG_BATCH_KEY = "bpexp.batch_key"
TAG_BATCH_STATUS = "bpexp.batch_status"
SUMMARY_ARTIFACT = "batch_summary.json"

Echo = Callable[[str], None]


class BatchBusy(ServiceError):
    """Another process runs this batch now (it holds the batch's lock)."""


class Interrupted(KeyboardInterrupt):
    """A stop request reached a check point (between epochs, steps or trials)."""


@dataclass
class ExperimentOutcome:
    """One experiment of a batch run: ``finished``, ``failed``, ``pending`` (not reached) or ``skipped`` (finished earlier)."""

    name: str
    kind: str
    state: str
    run_id: str | None = None
    study_name: str | None = None
    seconds: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class BatchOutcome:
    """What a batch run did.

    ``status``: ``finished`` (every experiment finished), ``failed`` (one or more
    failed, the others ran), ``interrupted`` (stopped; the same command resumes it),
    ``up_to_date`` (the latest run had finished everything; nothing ran) or
    ``skipped`` (a scheduled firing whose run exists already, or whose batch was busy).
    """

    batch: str
    status: str
    batch_run_id: str | None = None
    key: str | None = None
    trigger: str = "manual"
    resumed: bool = False
    experiments: list[ExperimentOutcome] = field(default_factory=list)
    seconds: float = 0.0
    tracking_uri: str | None = None
    database: str | None = None
    ui_url: str | None = None
    message: str | None = None

    @property
    def exit_code(self) -> int:
        """0 finished or nothing to do; 1 an experiment failed; 130 interrupted."""
        return {"failed": 1, "interrupted": 130}.get(self.status, 0)

    def to_json(self) -> dict[str, Any]:
        """The ``bpexp batch run --json`` object."""
        return json_safe(
            {
                "batch": self.batch,
                "status": self.status,
                "batch_run_id": self.batch_run_id,
                "key": self.key,
                "trigger": self.trigger,
                "resumed": self.resumed,
                "experiments": [vars(e) for e in self.experiments],
                "seconds": round(self.seconds, 3),
                "tracking_uri": self.tracking_uri,
                "database": self.database,
                "ui_url": self.ui_url,
                "message": self.message,
                "exit_code": self.exit_code,
            }
        )



# ------------------------------------------------------------------ where things live


def batch_database(tracking_uri: str, storage: str | None) -> str:
    """The database of the ledger and the job store.

    The tracking store itself when it is a database (``sqlite:///`` or
    ``postgresql://``); otherwise (an ``http://`` server) ``storage``, which must then
    be an RDB URL.

    Raises:
        ConfigError: for a server URI without an RDB ``--storage``.
    """
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in tracking_uri else "file"
    if scheme in ("sqlite", "postgresql", "postgres"):
        return tracking_uri
    from bpexp.sweep.storage import is_rdb, resolve_storage

    if storage and is_rdb(storage):
        return resolve_storage(storage, tracking_uri)
    given = f" (got --storage {storage!r}, a journal file)" if storage else ""
    raise ConfigError(
        f"the tracking URI {tracking_uri} is not a database: give --storage an RDB URL "
        f"(postgresql+psycopg://... or sqlite:////abs/file.db) for the batch ledger and schedule{given}"
    )


def study_name_for(batch: str, experiment: str, batch_run_id: str) -> str:
    """A sweep's study name in one batch run: the same on resume, new for every batch run."""
    return f"{batch}.{experiment}.{batch_run_id[:8]}"


def manual_key(now: datetime | None = None) -> str:
    """The key of a batch run started by hand."""
    return f"manual-{(now or utcnow()).isoformat(timespec='microseconds')}"  # unique: two runs within a second (--force)


def scheduled_key(fire_time: datetime | str) -> str:
    """The key of the batch run a scheduled firing starts: its fire time, so two schedulers make one run."""
    text = fire_time if isinstance(fire_time, str) else fire_time.isoformat(timespec="seconds")
    return f"cron-{text}"


# ------------------------------------------------------------------------- the run


def run_batch(
    batch: BatchSpec,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    storage: str | None = None,
    workers: int | None = None,
    force: bool = False,
    key: str | None = None,
    trigger: str = "manual",
    stop: threading.Event | None = None,
    echo: Echo | None = None,
) -> BatchOutcome:
    """Run (or resume) a batch.

    Args:
        batch: the validated batch.
        tracking_uri: where runs go (see :func:`bpexp.tracking.resolve_tracking_uri`).
        experiment: the MLflow experiment; default the batch's.
        storage: sweep study storage, and the ledger's database when the tracking URI is a server.
        workers: sweep worker processes for every sweep (default: each item's, else the batch's).
        force: start a new batch run even when the latest one is unfinished or finished.
        key: a scheduled firing's key (:func:`scheduled_key`): run or resume that run, skip it if finished.
        trigger: ``manual`` or ``schedule``, recorded in the ledger.
        stop: set it to stop at the next check point (the running trial or epoch finishes).
        echo: where progress lines go (default: nowhere).

    Returns:
        The :class:`BatchOutcome`; its ``exit_code`` is the command's.

    Raises:
        ServiceError: the tracking store or the ledger's database cannot be reached, or
            (:class:`BatchBusy`) another process runs this batch (never for a scheduled firing,
            which is skipped instead).
        ConfigError: a server tracking URI without an RDB ``storage``.
    """
    from bpexp.tracking import make_tracker

    started = time.perf_counter()
    say = echo or (lambda line: None)
    _quiet_noise()
    tracker = make_tracker(tracking_uri, experiment or batch.experiment)
    db = batch_database(tracker.uri, storage)  # a bad combination fails before any connection
    tracker.check()
    ledger = Ledger(db)
    try:
        ledger.ensure_tables()
        lock = try_lock(db, f"batch-{batch.name}")
        if lock is None:
            holder = ledger.latest_run(batch.name)
            where = f" (run {holder.id} on {holder.host}, pid {holder.pid})" if holder and holder.status == "running" else ""
            if key is not None:
                return BatchOutcome(batch.name, "skipped", key=key, trigger=trigger, tracking_uri=tracker.uri, database=redact(db),
                                    message=f"batch {batch.name!r} is running already{where}; this firing is skipped",
                                    seconds=time.perf_counter() - started)
            raise BatchBusy(f"batch {batch.name!r} is running already{where}; wait for it to end or stop it")
        with lock:
            return _run_locked(batch, tracker, ledger, db, storage, workers, force, key, trigger, stop, say, started)
    finally:
        ledger.dispose()


def _run_locked(
    batch: BatchSpec,
    tracker: "Tracker",
    ledger: Ledger,
    db: str,
    storage: str | None,
    workers: int | None,
    force: bool,
    key: str | None,
    trigger: str,
    stop: threading.Event | None,
    say: Echo,
    started: float,
) -> BatchOutcome:
    pairs = [(e.name, e.kind) for e in batch.experiments]
    base = dict(batch=batch.name, trigger=trigger, tracking_uri=tracker.uri, database=redact(db))
    row: BatchRunRow | None
    if key is not None:
        row = ledger.run_by_key(batch.name, key)
        if row is not None and row.finished:
            return BatchOutcome(status="skipped", batch_run_id=row.id, key=key, message=f"the run for {key} finished already", **base)
    else:
        latest = ledger.latest_run(batch.name)
        row = latest if latest is not None and not latest.finished and not force else None
        if latest is not None and latest.finished and not force:
            when = latest.ended_at.isoformat(timespec="seconds") if latest.ended_at else "?"
            return BatchOutcome(
                status="up_to_date", batch_run_id=latest.id, key=latest.key,
                experiments=[ExperimentOutcome(e.name, e.kind, "skipped", e.run_id, e.study_name, e.seconds, e.summary) for e in latest.experiments],
                message=f"every experiment of the latest run ({latest.id}, ended {when}) finished; --force starts a new run",
                seconds=time.perf_counter() - started, **base,
            )
        key = manual_key()
    resumed = row is not None
    if row is not None:
        _reopen(tracker, row.id)
        ledger.add_missing_experiments(row.id, pairs)
        ledger.set_run(row.id, status="running", claim=True)
        run_id = row.id
        say(f"batch {batch.name}: resuming run {run_id} ({row.key})")
    else:
        run_id = _start_batch_run(tracker, batch, key, trigger)
        ledger.create_run(run_id, batch.name, key, trigger, pairs, redact(tracker.uri))
        say(f"batch {batch.name}: run {run_id} ({key})")
    states = {e.name: e for e in (ledger.get_run(run_id).experiments)}
    outcomes: list[ExperimentOutcome] = []
    interrupted = False
    saved_env = os.environ.get(_run_tags_env())
    try:
        for index, exp in enumerate(batch.experiments, start=1):
            prior = states.get(exp.name)
            if prior is not None and prior.state == "finished":
                outcomes.append(ExperimentOutcome(exp.name, exp.kind, "skipped", prior.run_id, prior.study_name, prior.seconds, prior.summary))
                say(f"[{index}/{len(batch.experiments)}] {exp.kind} {exp.name}: finished earlier, skipped")
                continue
            if interrupted or (stop is not None and stop.is_set()):
                interrupted = True
                outcomes.append(ExperimentOutcome(exp.name, exp.kind, "pending"))
                continue
            _set_run_tags(batch.name, run_id, exp.name)
            say(f"[{index}/{len(batch.experiments)}] {exp.kind} {exp.name} ...")
            outcome = _run_one(exp, batch, tracker, ledger, run_id, storage, workers, stop, say)
            outcomes.append(outcome)
            if outcome.state == "pending":
                interrupted = True
                say(f"[{index}/{len(batch.experiments)}] {exp.kind} {exp.name}: stopped")
            elif outcome.state == "failed":
                say(f"[{index}/{len(batch.experiments)}] {exp.kind} {exp.name}: FAILED: {outcome.error}")
            else:
                say(f"[{index}/{len(batch.experiments)}] {exp.kind} {exp.name}: finished in {outcome.seconds:.1f} s{_brief(outcome)}")
    finally:
        _restore_env(saved_env)
    status = "interrupted" if interrupted else ("failed" if any(o.state == "failed" for o in outcomes) else "finished")
    message = None
    if interrupted:
        message = "stopped before the end; the same command resumes it"
    elif status == "failed":
        failed = [o.name for o in outcomes if o.state == "failed"]
        message = f"{len(failed)} of {len(outcomes)} experiments failed: {', '.join(failed)}"
    outcome = BatchOutcome(
        status=status, batch_run_id=run_id, key=key, resumed=resumed, experiments=outcomes,
        seconds=time.perf_counter() - started, message=message, **base,
    )
    problem = _close_batch_run(tracker, run_id, outcome)
    if problem:
        outcome.message = f"{outcome.message}; {problem}" if outcome.message else problem
    try:
        outcome.ui_url = tracker.ui_url(run_id) if hasattr(tracker, "ui_url") and not problem else None
    except Exception:  # noqa: BLE001 - a link is a convenience
        outcome.ui_url = None
    ledger.set_run(run_id, status=status, message=outcome.message or "", ended=True)
    return outcome


def _brief(outcome: ExperimentOutcome) -> str:
    s = outcome.summary
    if "best_value" in s and s.get("best_value") is not None:
        return f" (best {s.get('objective', 'value')} {s['best_value']:.4g})"
    if s.get("val_accuracy") is not None:
        return f" ({s.get('stop_reason')}, val acc {s['val_accuracy']:.3f})"
    if s.get("max_lr") is not None:
        return f" (max_lr {s['max_lr']:.3g})"
    return ""


def _quiet_noise() -> None:
    # urllib3 logs each retry of a refused request as a WARNING; the batch reports the
    # failure itself, once, in its own words. MLflow's artifact download bars would
    # interleave with the batch's progress lines, and its "View run at" lines (written to
    # stdout whenever a run on a server ends) would break --json's one object on stdout.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


# ----------------------------------------------------------------- the batch's own run


def _start_batch_run(tracker: "Tracker", batch: BatchSpec, key: str, trigger: str) -> str:
    from bpexp.tracking import TAG_KIND

    saved = os.environ.pop(_run_tags_env(), None)  # the batch's own run is nobody's child
    try:
        run_id = tracker.start_run(
            f"batch {batch.name}",
            tags={TAG_KIND: "batch", TAG_BATCH: batch.name, TAG_BATCH_KEY: key, "bpexp.batch_trigger": trigger},
        )
    finally:
        _restore_env(saved)
    tracker.set_tags(run_id, {TAG_BATCH_RUN: run_id})
    with tempfile.TemporaryDirectory(prefix="bpexp-batch-") as tmp:
        import yaml

        Path(tmp, "batch.yaml").write_text(yaml.safe_dump(batch.raw, sort_keys=False))
        tracker.log_artifacts(run_id, tmp)
    return run_id


def _reopen(tracker: "Tracker", run_id: str) -> None:
    try:
        status = tracker.run_status(run_id)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's "run not found" and kin
        raise ServiceError(
            f"the batch run {run_id} is not in the tracking store {redact(tracker.uri)} ({type(exc).__name__}); "
            "--force starts a new batch run"
        ) from None
    if status != "RUNNING":
        tracker.reopen_run(run_id)


def _close_batch_run(tracker: "Tracker", run_id: str, outcome: BatchOutcome) -> str | None:
    """Record the outcome on the batch's run and end it. Returns what went wrong, or None."""
    counts = {state: sum(o.state == state for o in outcome.experiments) for state in ("finished", "skipped", "failed", "pending")}
    step = int(time.time())
    try:
        tracker.log_batch(
            run_id,
            metrics=[(f"experiments.{state}", float(n), step) for state, n in counts.items()],
            tags={TAG_BATCH_STATUS: outcome.status, "bpexp.batch_failed": ",".join(o.name for o in outcome.experiments if o.state == "failed")},
        )
        with tempfile.TemporaryDirectory(prefix="bpexp-batch-") as tmp:
            Path(tmp, SUMMARY_ARTIFACT).write_text(json.dumps(outcome.to_json(), indent=2, allow_nan=False))
            tracker.log_artifacts(run_id, tmp)
        status = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}[outcome.status]
        tracker.end_run(run_id, status)
    except Exception as exc:  # noqa: BLE001 - the ledger still records the outcome
        return f"the batch's MLflow run {run_id} could not be closed ({_message(exc)})"
    return None


# ------------------------------------------------------------------ $BPEXP_RUN_TAGS


def _run_tags_env() -> str:
    from bpexp.tracking import RUN_TAGS_ENV

    return RUN_TAGS_ENV


def _set_run_tags(batch: str, batch_run_id: str, experiment: str) -> None:
    from bpexp.tracking import TAG_PARENT

    os.environ[_run_tags_env()] = json.dumps(
        {TAG_BATCH: batch, TAG_BATCH_RUN: batch_run_id, TAG_BATCH_EXPERIMENT: experiment, TAG_PARENT: batch_run_id}
    )


def _restore_env(saved: str | None) -> None:
    if saved is None:
        os.environ.pop(_run_tags_env(), None)
    else:
        os.environ[_run_tags_env()] = saved


# --------------------------------------------------------------------- experiments


def _message(exc: BaseException) -> str:
    if isinstance(exc, BpexpError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _run_one(
    exp: Experiment,
    batch: BatchSpec,
    tracker: "Tracker",
    ledger: Ledger,
    batch_run_id: str,
    storage: str | None,
    workers: int | None,
    stop: threading.Event | None,
    say: Echo,
) -> ExperimentOutcome:
    """Run one experiment and record its state in the ledger; never raises for the experiment's own failure."""
    ledger.start_experiment(batch_run_id, exp.name)
    began = time.perf_counter()
    result = ExperimentOutcome(exp.name, exp.kind, "running")
    try:
        if exp.kind == "train":
            result.run_id, result.summary = _run_train(exp, tracker, stop)
        elif exp.kind == "lr_find":
            result.run_id, result.summary = _run_lr_find(exp, tracker, stop)
        else:
            result.study_name = study_name_for(batch.name, exp.name, batch_run_id)
            ledger.set_experiment(batch_run_id, exp.name, study_name=result.study_name)
            n_workers = workers or exp.item.workers or batch.workers
            result.run_id, result.summary, result.error = _run_sweep(exp, tracker, storage, n_workers, result.study_name, stop, say)
        result.state = "failed" if result.error else "finished"
    except KeyboardInterrupt:
        result.state = "pending"
        result.error = "stopped"
    except Exception as exc:  # noqa: BLE001 - the batch goes on past a failing experiment
        result.state = "failed"
        result.error = _message(exc)
        if os.environ.get("BPEXP_DEBUG"):
            logging.getLogger("bpexp.batch").exception("experiment %s failed", exp.name)
    result.seconds = time.perf_counter() - began
    ledger.set_experiment(
        batch_run_id,
        exp.name,
        state=result.state,
        run_id=result.run_id,
        summary=json_safe(result.summary),
        error=result.error,
        ended_at=utcnow(),
        seconds=round(result.seconds, 3),
    )
    return result


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted


def _run_train(exp: Experiment, tracker: "Tracker", stop: threading.Event | None) -> tuple[str, dict[str, Any]]:
    from bpexp.tracking import TAG_KIND, EpochLogger, diagnose_result, log_result, open_run
    from bpexp.train import train

    with open_run(tracker, exp.name, tags={TAG_KIND: "train"}) as run_id:
        logger = EpochLogger(tracker, run_id)

        def on_epoch(epoch: int, history: Any) -> None:
            logger(epoch, history)
            _check_stop(stop)  # between epochs: the run ends KILLED, the experiment stays pending

        result = train(exp.config, on_epoch=on_epoch)
        findings = diagnose_result(result)
        log_result(tracker, run_id, result, findings, logger=logger)
    summary = {
        "stop_reason": result.stop_reason,
        "epochs": result.epochs,
        "val_loss": result.final.get("val_loss"),
        "val_accuracy": result.final.get("val_accuracy"),
        "diagnosis": [getattr(f, "mode", str(f)) for f in findings],
    }
    return run_id, summary


def _run_lr_find(exp: Experiment, tracker: "Tracker", stop: threading.Event | None) -> tuple[str, dict[str, Any]]:
    from bpexp import lr_find
    from bpexp.data import load_dataset
    from bpexp.tracking import log_lr_find

    item = exp.item
    config = exp.config
    dataset = load_dataset(config.data, config.seed, dtype=config.model.dtype)

    def on_step(step: int, total: int, lr: float, smooth: float) -> None:
        _check_stop(stop)

    result = lr_find.range_test(
        config, dataset, start_lr=item.start_lr, end_lr=item.end_lr, num_iterations=item.iterations,
        epochs=item.epochs, mode=item.mode, on_step=on_step,
    )
    run_id = log_lr_find(tracker, result, config, name=exp.name)
    summary: dict[str, Any] = {"stop_reason": result.stop_reason, "iterations": result.iterations}
    for name, suggestion in result.suggestions.items():
        summary[name] = suggestion.lr
    return run_id, summary


class _SweepProgress:
    """The sweep's progress callback: prints progress, and turns a stop request into a stop once no trial runs.

    The sweep calls it between this process's trials (and while it waits for its
    worker processes), so no trial of this process is running then. On a stop
    request it takes the study's slot lock, which every worker needs before it asks
    for a trial, waits until the trials other workers are running have finished, and
    raises: the sweep then ends its workers (idle, or waiting on that lock) and
    closes its parent run.
    """

    def __init__(self, label: str, say: Echo, stop: threading.Event | None, storage_url: str, exp: Experiment, study_name: str) -> None:
        self.label = label
        self.say = say
        self.stop = stop
        self.storage_url = storage_url
        self.exp = exp
        self.study_name = study_name
        self._last: tuple[int, int] | None = None
        self._lock: Any = None
        self._study: Any = None

    def __call__(self, finished: int, target: int, failed: int, status: str, *args: Any) -> None:
        if (finished, failed) != self._last:
            self._last = (finished, failed)
            self.say(f"    {self.label}: {finished}/{target} trials ({status})")
        if self.stop is None or not self.stop.is_set():
            return
        if self._lock is None:
            from bpexp.sweep.storage import exclusive

            self.say(f"    {self.label}: stopping once the running trials finish")
            lock = exclusive(self.storage_url, f"slots-{self.study_name}")
            lock.__enter__()
            self._lock = lock
        while self._running() > 0:
            time.sleep(0.5)
        raise Interrupted

    def _running(self) -> int:
        """Trials running in live workers (a dead worker's trial is failed by the next sweep)."""
        import optuna

        from bpexp.sweep.storage import open_storage
        from bpexp.sweep.worker import ATTR_WORKER, process_alive

        if self._study is None:
            section = self.exp.sweep.sweep
            store = open_storage(self.storage_url, heartbeat_interval=section.heartbeat_interval, grace_period=section.grace_period)
            self._study = optuna.load_study(study_name=self.study_name, storage=store)
        running = self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        host = _hostname()
        return sum(
            1
            for t in running
            if not (t.user_attrs.get(ATTR_WORKER) or {}).get("host") == host or process_alive(t.user_attrs[ATTR_WORKER])
        )

    def close(self) -> None:
        """Let go of the slot lock, if taken."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)
            closer = getattr(lock, "close", None)
            if closer is not None:
                closer()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _run_sweep(
    exp: Experiment,
    tracker: "Tracker",
    storage: str | None,
    workers: int,
    study_name: str,
    stop: threading.Event | None,
    say: Echo,
) -> tuple[str | None, dict[str, Any], str | None]:
    """Run or resume the experiment's study. Returns (parent run id, summary, why it did not finish or None)."""
    from bpexp.sweep import run_sweep
    from bpexp.sweep.storage import resolve_storage

    item = exp.item
    hooks = []
    if item.report:
        from bpexp.report.build import report_after_sweep

        hooks.append(report_after_sweep)
    progress = _SweepProgress(exp.name, say, stop, resolve_storage(storage, tracker.uri), exp, study_name)
    try:
        outcome = run_sweep(
            exp.sweep, tracker, storage=storage, workers=workers, n_trials=item.n_trials, study_name=study_name,
            progress=progress, hooks=hooks,
        )
    finally:
        progress.close()
    best = outcome.best_trial
    summary: dict[str, Any] = {
        "study_name": outcome.study_name,
        "n_trials": outcome.n_trials,
        "counts": outcome.counts,
        "objective": outcome.objectives[0],
        "best_value": best.value if best is not None else None,
        "best_trial": best.number if best is not None else None,
        "diagnosis_counts": outcome.diagnosis_counts,
    }
    report = outcome.extras.get("report")
    if report:
        summary["report"] = report.get("html")
    if outcome.extras.get("report_error"):
        summary["report_error"] = outcome.extras["report_error"]
    error = None
    if not outcome.finished:
        counts = outcome.counts
        error = (
            f"the sweep ended with {counts['COMPLETE'] + counts['PRUNED']} of {outcome.n_trials} trials finished "
            f"and {counts['FAIL']} failed (study {outcome.study_name})"
        )
    return outcome.parent_run_id, summary, error
