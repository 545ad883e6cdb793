"""A sweep worker: claim a trial, train it, record it, tell the study; until n_trials are done.

Every worker, in this process or another (``python -m bpexp.sweep.worker JOB.json``,
started by ``bpexp sweep --workers N``) or on another machine (``bpexp sweep``
against the same ``--storage``), runs :func:`run_worker`. Workers share nothing but
the study storage and the tracking store.

Each trial is one nested MLflow run under the sweep's parent run:

- COMPLETE → run FINISHED, with its diagnosis (a diverged trial too: it is a result);
- PRUNED → run KILLED, with the epochs it ran;
- raised → run FAILED, with the error as the ``bpexp.error`` tag;
- worker killed → the trial is failed by the next worker (process gone on this
  host, or heartbeat stale on an RDB storage), its run FAILED, and it is queued again.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from bpexp.sweep.search import (
    grid_size,
    intermediate_value,
    make_pruner,
    make_sampler,
    objective_value,
    suggest_params,
    trial_config,
    worker_seed,
)
from bpexp.sweep.spec import SweepSpec, sweep_spec_from_dict
from bpexp.sweep.storage import exclusive, open_storage

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from bpexp.tracking import Tracker

# Study and trial attribute names (read back by the sweep summary and the report).
ATTR_RUN_ID = "bpexp.run_id"
ATTR_WORKER = "bpexp.worker"
ATTR_ERROR = "bpexp.error"
ATTR_STOP_REASON = "bpexp.stop_reason"
ATTR_EPOCHS = "bpexp.epochs"
ATTR_DIAGNOSIS = "bpexp.diagnosis"
ATTR_FINAL = "bpexp.final"
ATTR_CONFIG = "bpexp.config"
ATTR_LATE_RUN_IDS = "bpexp.run_ids."
"""Study attr prefix, one key per worker process: trial number → MLflow run id, for the trials
whose run the tracking process had not yet created when they ended (see :func:`late_run_ids`)."""
ATTR_PARENTS = "bpexp.parent_runs"
"""Study attr: tracking URI → the sweep's parent run id in that store."""
TAG_STUDY = "optuna.study_name"
TAG_TRIAL = "optuna.trial_number"


@dataclass
class WorkerJob:
    """What a worker needs, as plain JSON values (written to a file for a worker process)."""

    spec: dict[str, Any]
    source: str
    storage: str
    study_name: str
    tracking: dict[str, Any]
    parent_run_id: str | None
    auto: dict[str, float | None] | None
    n_trials: int
    worker_index: int = 0
    seed_offset: int = 0
    parent_from_study: bool = False
    """True when ``parent_run_id`` was not known yet: read it from the study's ATTR_PARENTS."""
    best_curves: Literal["ahead", "at_finish", "none"] = "none"
    """How the tracking process draws the best trial's curves ahead of the sweep's end (see :class:`BestCurves`):
    ``ahead`` (the only worker on a machine), ``at_finish`` (one of several) or ``none``."""

    def to_json(self) -> str:
        """The job as a JSON document."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerJob":
        """Read a job written by :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass
class WorkerStats:
    """What one worker did."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    trials: list[int] = field(default_factory=list)


def identity() -> dict[str, Any]:
    """This process, as recorded on the trials it runs: host, pid, the pid's start time, and its BLAS threads."""
    from threadpoolctl import threadpool_info

    blas = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _start_time(os.getpid()),
        "blas_threads": max(blas) if blas else None,
    }


def _start_time(pid: int) -> int | None:
    # field 22 of /proc/<pid>/stat: the process's start time in clock ticks since boot;
    # it tells a dead worker's pid apart from a new process that reuses it (proc(5))
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(worker: dict[str, Any]) -> bool:
    """True while the process a trial's ``bpexp.worker`` attribute names still runs (on this host)."""
    pid = int(worker.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = worker.get("started")
    return started is None or _start_time(pid) in (None, started)


def done_count(study: "optuna.Study") -> tuple[int, int]:
    """(finished trials — COMPLETE + PRUNED, running trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def reap_dead_trials(study: "optuna.Study", storage: Any, tracker: "Tracker | None" = None) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, close their runs, and queue them again.

    A trial is gone when its worker process on this host has ended, or (RDB storage
    with heartbeats) when its heartbeat is older than the grace period. Its MLflow
    run ends FAILED with the reason as ``bpexp.error``, and
    :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues its params.

    Returns:
        The numbers of the trials failed here.
    """
    import optuna
    from optuna.trial import TrialState

    from bpexp.sweep.storage import retry_callback

    study_id = storage.get_study_id_from_name(study.study_name)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    retry = retry_callback()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(ATTR_WORKER)
        if not worker or worker.get("host") != host or process_alive(worker):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, ATTR_ERROR, f"worker process {worker.get('pid')} ended during the trial")
        try:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry(study, storage.get_trial(trial_id))
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number not in before]
    if tracker is not None:
        close_orphan_runs(tracker, failed)
    return [t.number for t in failed]


def close_orphan_runs(tracker: "Tracker", trials: list["optuna.trial.FrozenTrial"]) -> None:
    """End as FAILED the MLflow runs of failed trials that are still RUNNING (their worker died)."""
    for trial in trials:
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if not run_id or tracker.uri is None:
            continue
        try:
            record_status = tracker.run_status(run_id)
        except Exception:  # a run of another tracking store, or deleted: nothing to close here
            continue
        if record_status == "RUNNING":
            reason = trial.user_attrs.get(ATTR_ERROR) or "worker stopped sending heartbeats during the trial"
            tracker.set_tags(run_id, {"bpexp.error": reason})
            tracker.end_run(run_id, "FAILED")


# A run still RUNNING this long after its trial finished on another machine is taken as abandoned.
ABANDONED_AFTER_S = 600


def close_unfinished_runs(study: "optuna.Study", tracker: "Tracker") -> list[str]:
    """End FAILED the trial runs left RUNNING by a worker that died while writing them.

    A run counts as left when its trial is finished (the study was told) and the
    trial's worker is gone: its process ended on this host, or, on another host, the
    trial finished more than :data:`ABANDONED_AFTER_S` seconds ago.

    Returns:
        The ids of the runs ended.
    """
    import datetime

    if tracker.uri is None:
        return []
    from bpexp.tracking import TAG_KIND

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    host = socket.gethostname()
    now = datetime.datetime.now()
    closed = []
    for run_id, tags in tracker.find_runs({TAG_STUDY: study.study_name, TAG_KIND: "trial"}, status="RUNNING"):
        trial = trials.get(int(tags.get(TAG_TRIAL, -1)))
        if trial is None or trial.state.name in ("RUNNING", "WAITING"):
            continue
        worker = trial.user_attrs.get(ATTR_WORKER) or {}
        if worker.get("host") == host:
            if process_alive(worker):
                continue  # its worker is still writing it
        elif trial.datetime_complete is None or (now - trial.datetime_complete).total_seconds() < ABANDONED_AFTER_S:
            continue
        reason = trial.user_attrs.get(ATTR_ERROR) if trial.state.name == "FAIL" else None
        tracker.set_tags(run_id, {"bpexp.error": reason or "the worker ended before this run was fully written"})
        tracker.end_run(run_id, "FAILED")
        closed.append(run_id)
    return closed


class _Heartbeat:
    """Records an RDB trial's heartbeat every interval in a thread (what Study.optimize does for its trials)."""

    def __init__(self, storage: Any, study_name: str, number: int) -> None:
        from optuna.storages import RDBStorage

        self._storage = storage
        self._stop = threading.Event()
        self._thread = None
        if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None:
            study_id = storage.get_study_id_from_name(study_name)
            self._trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        interval = self._storage.get_heartbeat_interval()
        while True:
            self._storage.record_heartbeat(self._trial_id)
            if self._stop.wait(interval):
                return

    def __enter__(self) -> "_Heartbeat":
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


class DatasetCache:
    """Datasets by (data section, seed, dtype): a worker loads each dataset once, not once per trial."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, config: Any) -> Any:
        from bpexp.data import load_dataset

        key = json.dumps([config.data.model_dump(mode="json"), config.seed, config.model.dtype], sort_keys=True)
        if key not in self._cache:
            self._cache[key] = load_dataset(config.data, config.seed, dtype=config.model.dtype)
        return self._cache[key]


class BlasShare:
    """One BLAS thread fewer for a worker whose runs a tracking process writes beside it.

    OpenBLAS threads wait for each other by spinning, so a product whose second thread
    shares a core with the tracking process waits for it: on the 2-core digits sweep
    training took 35 % longer. With one thread fewer it takes 10 % longer (the second
    thread helps the evaluations). Following the tracking process's bursts instead
    (all threads while it idles) measured worse again: 12.0-12.7 s against 10.3 s.
    """

    def __init__(self, tracker: "Tracker") -> None:
        self._libs: list[Any] = []
        if tracker.asynchronous:
            from threadpoolctl import ThreadpoolController

            self._libs = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers if lib.num_threads > 1]
        self._full = [lib.num_threads for lib in self._libs]
        for lib, full in zip(self._libs, self._full):
            lib.set_num_threads(full - 1)

    def restore(self) -> None:
        """Give back every thread."""
        for lib, full in zip(self._libs, self._full):
            lib.set_num_threads(full)


def curves_title(study_name: str, number: int) -> str:
    """The title of a trial's curves.png."""
    return f"{study_name} trial {number}"


class BestCurves:
    """Has the tracking process draw the best trial's curves.png before the sweep ends.

    The sweep stores the best trial's curves at its end; drawn then, they were the
    largest part of the wait after the last trial (0.3 s). Two ways, by ``mode``:

    - ``ahead``, for a worker alone on its machine, whose tracking process has a core
      to itself: a new best is sent to be drawn once the next trial has ended without
      beating it, so that a best the very next trial beats (the common case early in a
      sweep) costs no drawing; a best found by the last trial is drawn at the end, as
      without this.
    - ``at_finish``, for one of several workers: drawing during the sweep would take
      the other workers' CPU, so nothing is drawn until a worker runs out of trials
      (:meth:`finish`) while others still run theirs, on the core this worker leaves
      free: the study's best then, from this worker's memory if it ran it, else from
      the history.json stored for it. The last worker to finish sends nothing: the
      sweep's end draws the best there, or stores the picture drawn ahead.
    """

    def __init__(self, tracker: "Tracker", spec: SweepSpec, study: Any, mode: Literal["ahead", "at_finish"] = "ahead") -> None:
        self.tracker = tracker
        self.ahead = mode == "ahead"
        self.study_name = spec.study_name
        self.minimize = spec.sweep.directions[0] == "minimize"
        self.waiting: tuple[int, str, Any] | None = None  # (trial number, run id, history) of a best not yet sent
        try:
            self.best: float | None = study.best_value
        except (ValueError, RuntimeError):  # no complete trial yet (RuntimeError: several objectives)
            self.best = None

    def offer(self, run_id: str, number: int, value: float, history: Any) -> None:
        """Keep this trial for drawing if ``value`` beats every value seen so far (replacing an unsent best)."""
        if not math.isfinite(value):
            return
        if self.best is not None and not (value < self.best if self.minimize else value > self.best):
            return
        self.best = value
        self.waiting = (number, run_id, history)

    def trial_ended(self, number: int) -> None:
        """Trial ``number`` is over: (``ahead``) send the best kept for drawing, unless this very trial made it."""
        if not self.ahead or self.waiting is None or self.waiting[0] == number:
            return
        self._send()

    def finish(self, study: Any) -> None:
        """The worker has run out of trials: (``at_finish``, while other trials run) send the study's best now."""
        if self.ahead or done_count(study)[1] == 0:
            return
        try:
            best = study.best_trial
        except (ValueError, RuntimeError):  # no complete trial (RuntimeError: several objectives)
            return
        if self.waiting is not None and best.number == self.waiting[0]:
            self._send()
            return
        run_id = best.user_attrs.get(ATTR_RUN_ID)
        if run_id:  # another worker's trial: the tracking process reads its history back from the store
            self.tracker.prepare_curves(run_id, None, curves_title(self.study_name, best.number))

    def _send(self) -> None:
        assert self.waiting is not None
        best_number, run_id, history = self.waiting
        self.waiting = None
        self.tracker.prepare_curves(run_id, history, curves_title(self.study_name, best_number))


class Recorder:
    """Writes finished trials' runs in a background thread, in order, while the next trial trains.

    Writing a run (one batch, a few artifact files, the end status) waits mostly on
    the store (a file sync, a request); done here it overlaps the next trial's
    training. The study is told first, in the worker's thread, so the sampler and
    the pruner see exactly what they would see without tracking. A run whose
    writing was cut short (the worker killed) is ended FAILED by
    :func:`close_unfinished_runs` when the sweep next starts.
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpexp-recorder")
        self._pending: list[Any] = []

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job; jobs run one at a time, in submission order."""
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(job))

    def drain(self) -> None:
        """Wait for every queued job."""
        for future in self._pending:
            future.result()
        self._pending = []

    def close(self) -> None:
        """Drain and stop the thread."""
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)


def run_trial(
    study: "optuna.Study",
    storage: Any,
    trial: "optuna.Trial",
    spec: SweepSpec,
    tracker: "Tracker",
    *,
    parent_run_id: str | None,
    auto: dict[str, float | None] | None,
    datasets: DatasetCache,
    recorder: Recorder | None = None,
    late: dict[int, str] | None = None,
    runs: list[str] | None = None,
    best_curves: BestCurves | None = None,
) -> str:
    """Run one claimed trial: params → train → ``study.tell`` → write its run.

    With a ``recorder`` the run of a finished or pruned trial is written in its
    background thread. With an asynchronous tracker, a run id not yet known when the
    trial ends is put in ``late`` (trial number → pending id). The run id is appended to
    ``runs`` when given. A complete single-objective trial is offered to ``best_curves``.
    Returns the trial's final state name.

    Raises:
        KeyboardInterrupt: after telling the trial FAIL and ending its run KILLED.
    """
    import optuna

    from bpexp.tracking import CURVE_METRICS, EPOCH_METRICS, TAG_ERROR, TAG_KIND, EpochLogger, config_params, diagnose_result
    from bpexp.train import train

    section = spec.sweep
    number = trial.number
    run_id = tracker.start_run(
        f"{spec.study_name}-trial-{number}",
        parent_run_id=parent_run_id,
        tags={TAG_KIND: "trial", TAG_STUDY: spec.study_name, TAG_TRIAL: str(number)},
    )
    if runs is not None:
        runs.append(run_id)

    recorded: list[bool] = []

    def record_run_id(final: bool = True) -> None:
        # as soon as the id is known (a dead worker's run is found through it), at the latest
        # before the trial is told; an id the tracking process has not produced by then goes
        # to the worker's late list (late_run_ids) instead
        if tracker.uri is None or recorded:
            return
        known = tracker.resolved(run_id)
        if known is not None:
            trial.set_user_attr(ATTR_RUN_ID, known)
            recorded.append(True)
        elif final and late is not None:
            late[number] = run_id

    record_run_id(final=False)
    history_box: dict[str, Any] = {}
    logger = EpochLogger(tracker, run_id, keys=CURVE_METRICS if section.metrics == "curves" else EPOCH_METRICS)
    prune = not section.multi_objective and section.pruner.name != "none"
    objective = section.objective[0]

    def on_epoch(epoch: int, history: Any) -> None:
        history_box["history"] = history
        logger(epoch, history)
        record_run_id(final=False)
        if prune:
            trial.report(intermediate_value(objective, history, section.target_accuracy), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    def later(job: Callable[[], None]) -> None:
        if recorder is None:
            job()
        else:
            recorder.submit(job)

    config = None
    try:
        params = suggest_params(trial, spec, auto)
        config = trial_config(spec, params, number)
        trial.set_user_attr(ATTR_CONFIG, config.model_dump(mode="json"))
        dataset = datasets.get(config)
        with _Heartbeat(storage, study.study_name, number):
            result = train(config, dataset, on_epoch=on_epoch)
        findings = diagnose_result(result)
        values = [objective_value(name, result, section.target_accuracy) for name in section.objective]
        diagnosis = [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in findings]
        trial.set_user_attr(ATTR_STOP_REASON, result.stop_reason)
        trial.set_user_attr(ATTR_EPOCHS, result.epochs)
        trial.set_user_attr(ATTR_DIAGNOSIS, _json_safe(diagnosis))
        trial.set_user_attr(ATTR_FINAL, {k: (v if v is not None and math.isfinite(v) else None) for k, v in result.final.items()})
        record_run_id()
        _tell(study, trial, values if section.multi_objective else values[0])
        later(lambda: _write_complete(tracker, run_id, number, result, findings, values, section, logger))
        if best_curves is not None and not section.multi_objective:
            best_curves.offer(run_id, number, values[0], result.history)
        return "COMPLETE"
    except optuna.TrialPruned:
        history = history_box.get("history")
        epochs = len(history.epoch) if history is not None else 0
        trial.set_user_attr(ATTR_STOP_REASON, "pruned")
        trial.set_user_attr(ATTR_EPOCHS, epochs)
        record_run_id()
        _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
        later(lambda: _write_pruned(tracker, run_id, number, history, config, logger))
        return "PRUNED"
    except (KeyboardInterrupt, SystemExit):
        record_run_id()
        _fail(study, trial, tracker, run_id, "interrupted", status="KILLED")
        raise
    except Exception as exc:  # the trial raised: record it, keep sweeping
        message = f"{type(exc).__name__}: {exc}"
        if tracker.asynchronous:
            record_run_id()
        try:
            params = {**config_params(config), "trial_number": number} if config is not None else {"trial_number": number}
            tracker.log_batch(run_id, params=params, tags={TAG_ERROR: message})
        except Exception:
            pass
        _fail(study, trial, tracker, run_id, message, status="FAILED")
        return "FAIL"


def _write_complete(tracker, run_id, number, result, findings, values, section, logger) -> None:
    """Write a finished trial's run and end it FINISHED (FAILED, with a warning, if the store fails)."""
    from bpexp.tracking import TAG_ERROR, log_result

    try:
        log_result(
            tracker,
            run_id,
            result,
            findings,
            params={"trial_number": number},
            metrics=[(f"objective.{n}", v, result.epochs) for n, v in zip(section.objective, values) if math.isfinite(v)],
            curves=section.curves == "all",
            logger=logger,
        )
        tracker.end_run(run_id, "FINISHED")
    except Exception as exc:  # the store failed, not the trial: the study keeps the result
        _warn(f"trial {number}: its MLflow run could not be written ({type(exc).__name__}: {exc})")
        try:
            tracker.log_batch(run_id, tags={TAG_ERROR: f"recording failed: {exc}"})
            tracker.end_run(run_id, "FAILED")
        except Exception:
            pass


def _write_pruned(tracker, run_id, number, history, config, logger) -> None:
    """Write a pruned trial's run (its epochs so far, no weights) and end it KILLED."""
    import tempfile

    from bpexp.tracking import config_params, write_run_artifacts

    epochs = len(history.epoch) if history is not None else 0
    try:
        tracker.log_batch(
            run_id,
            metrics=logger.take(history) + [("epochs", float(epochs), epochs)],
            params={**config_params(config), "trial_number": number},
            tags={"bpexp.stop_reason": "pruned", "bpexp.pruned_at_epoch": epochs},
        )
        if history is not None and tracker.uri is not None:
            with tempfile.TemporaryDirectory(prefix="bpexp-pruned-") as tmp:
                write_run_artifacts(tmp, history, curves=False)
                tracker.log_artifacts(run_id, tmp)
        tracker.end_run(run_id, "KILLED")
    except Exception as exc:
        _warn(f"trial {number}: its MLflow run could not be written ({type(exc).__name__}: {exc})")


def _warn(message: str) -> None:
    print(f"bpexp: warning: {message}", file=sys.stderr)


def _tell(study: Any, trial: Any, *args: Any, **kwargs: Any) -> None:
    """``study.tell``, for the ask-and-tell loop, where GridSampler's ``after_trial`` may not stop the study.

    Once the grid is used up, GridSampler calls ``study.stop()``, which Optuna refuses
    outside ``optimize`` with a RuntimeError; the trial's state is stored before that
    (optuna/study/_tell.py stores it in a ``finally``), and the sweep stops at
    ``grid_size`` on its own, so that refusal is dropped here.
    """
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _fail(study: Any, trial: Any, tracker: Any, run_id: str, message: str, *, status: str) -> None:
    import optuna

    try:
        trial.set_user_attr(ATTR_ERROR, message[:2000])
        _tell(study, trial, state=optuna.trial.TrialState.FAIL)
    except Exception:
        pass
    try:
        tracker.end_run(run_id, status)
    except Exception:
        pass


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def quiet_optuna() -> None:
    """Keep Optuna's per-trial INFO lines and experimental warnings off stderr (the sweep shows its own progress)."""
    import optuna

    if not os.environ.get("BPEXP_DEBUG"):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the workers record heartbeats themselves (_Heartbeat), as Study.optimize would
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def run_worker(
    job: WorkerJob,
    *,
    spec: SweepSpec | None = None,
    tracker: "Tracker | None" = None,
    on_trial: Callable[[str], None] | None = None,
    max_failures: int | None = None,
) -> WorkerStats:
    """Claim and run trials until the study has ``job.n_trials`` finished (COMPLETE + PRUNED) trials.

    The count is taken under the study's slot lock together with the ask, so
    several workers never start more trials than are missing; it counts RUNNING
    trials of live workers as taken, and re-checks at every trial (a
    MaxTrialsCallback-style stop that holds across workers and restarts).

    Args:
        job: the study, storage, tracking store and parent run.
        spec: the parsed spec (parsed from ``job.spec`` when omitted).
        tracker: the tracker (built from ``job.tracking`` when omitted).
        on_trial: called with each trial's final state name, e.g. for progress.
        max_failures: stop after this many failed trials in this worker (default n_trials).

    Returns:
        The worker's counts.
    """
    import optuna

    from bpexp.tracking import make_tracker

    quiet_optuna()
    spec = spec or sweep_spec_from_dict(job.spec, source=job.source)
    own_tracker = tracker is None
    if tracker is None:
        tracker = make_tracker(job.tracking.get("uri"), job.tracking.get("experiment"), enabled=job.tracking.get("enabled", True),
                               process=job.tracking.get("process", False), connect=job.tracking.get("connect"))
    storage = open_storage(job.storage, heartbeat_interval=spec.sweep.heartbeat_interval, grace_period=spec.sweep.grace_period)
    target = job.n_trials
    size = grid_size(spec)
    if size is not None:
        target = min(target, size)
    sampler = make_sampler(spec, worker_seed(spec, job.worker_index, job.seed_offset))
    study = optuna.load_study(study_name=job.study_name, storage=storage, sampler=sampler, pruner=make_pruner(spec))
    # a worker started while the sweep's parent run was being created reads its id from the
    # study once it is there; runs it started before that get their parent tag then
    parent_run_id = None if job.parent_from_study else job.parent_run_id
    orphans: list[str] = []
    slots = exclusive(job.storage, f"slots-{job.study_name}")
    datasets = DatasetCache()
    # nothing to overlap without a store, and an asynchronous tracker overlaps by itself
    recorder = Recorder() if tracker.uri is not None and not tracker.asynchronous else None
    late: dict[int, str] = {}
    blas = BlasShare(tracker)
    best_curves = BestCurves(tracker, spec, study, job.best_curves) if job.best_curves != "none" and tracker.asynchronous else None
    stats = WorkerStats()
    me = identity()
    max_failures = max_failures if max_failures is not None else max(3, target)
    try:
        while True:
            with slots:
                reap_dead_trials(study, storage, tracker)
                done, running = done_count(study)
                if done + running >= target:
                    break
                if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                    break  # every grid point has been tried (failed ones are not repeated)
                trial = study.ask()
                trial.set_user_attr(ATTR_WORKER, me)
                for stale in (ATTR_ERROR, ATTR_RUN_ID, ATTR_STOP_REASON):
                    # a retried trial inherits the failed one's user attrs: clear what no longer holds
                    if trial.user_attrs.get(stale) is not None:
                        trial.set_user_attr(stale, None)
            if job.parent_from_study and parent_run_id is None and tracker.uri is not None:
                parent_run_id = (study.user_attrs.get(ATTR_PARENTS) or {}).get(tracker.uri)
                _adopt(tracker, orphans, parent_run_id)
            runs: list[str] = []
            state = run_trial(
                study, storage, trial, spec, tracker,
                parent_run_id=parent_run_id, auto=job.auto, datasets=datasets, recorder=recorder, late=late, runs=runs,
                best_curves=best_curves,
            )
            if parent_run_id is None and job.parent_from_study:
                orphans.extend(runs)
            if best_curves is not None:
                best_curves.trial_ended(trial.number)
            stats.trials.append(trial.number)
            if late and all(tracker.resolved(pending) is not None for pending in late.values()):
                store_late_run_ids(study, tracker, late, me)  # the tracking process caught up: write them now
                late.clear()
            if state == "COMPLETE":
                stats.complete += 1
            elif state == "PRUNED":
                stats.pruned += 1
            else:
                stats.failed += 1
            if on_trial is not None:
                on_trial(state)
            if stats.failed >= max_failures:
                break
        if best_curves is not None:
            best_curves.finish(study)
        if orphans and tracker.uri is not None:
            _adopt(tracker, orphans, wait_for_parent(study, tracker.uri))
    finally:
        blas.restore()
        if recorder is not None:
            recorder.close()  # every finished trial is written and told before the worker ends
        closer = getattr(slots, "close", None)
        if closer is not None:
            closer()
        try:
            store_late_run_ids(study, tracker, late, me)
        finally:
            if own_tracker:
                tracker.close()
    return stats


def store_late_run_ids(study: "optuna.Study", tracker: "Tracker", late: dict[int, str], worker: dict[str, Any]) -> None:
    """Write the run ids of ``late`` (trial number → pending id) as one study attr for this worker.

    Waits for the tracking process to create the runs. A run it could not create is
    left out (its trial's run is then found by its tags, if at all).
    """
    if not late or tracker.uri is None:
        return
    ids = {}
    for number, pending in late.items():
        try:
            ids[str(number)] = tracker.resolve(pending)
        except Exception:
            continue
    key = f"{ATTR_LATE_RUN_IDS}{worker.get('host')}.{worker.get('pid')}.{worker.get('started')}"
    known = dict(study.user_attrs.get(key) or {})
    known.update(ids)
    study.set_user_attr(key, known)


def late_run_ids(study_attrs: dict[str, Any]) -> dict[int, str]:
    """Trial number → run id from every worker's late list (see :func:`store_late_run_ids`)."""
    ids: dict[int, str] = {}
    for key, value in study_attrs.items():
        if key.startswith(ATTR_LATE_RUN_IDS) and isinstance(value, dict):
            ids.update((int(number), str(run_id)) for number, run_id in value.items())
    return ids


def trial_run_id(trial: "optuna.trial.FrozenTrial", late: dict[int, str]) -> str | None:
    """The MLflow run id of a trial: its own attr, else the workers' late lists."""
    return trial.user_attrs.get(ATTR_RUN_ID) or late.get(trial.number)


def _adopt(tracker: "Tracker", runs: list[str], parent_run_id: str | None) -> None:
    """Tag ``runs`` as children of ``parent_run_id`` (MLflow nests runs by that tag) and forget them."""
    if parent_run_id is None or not runs:
        return
    from bpexp.tracking import TAG_PARENT

    for run_id in runs:
        tracker.set_tags(run_id, {TAG_PARENT: parent_run_id})
    runs.clear()


def wait_for_parent(study: "optuna.Study", uri: str, timeout: float = 300.0) -> str | None:
    """The sweep's parent run id in ``uri``, once the process that set the sweep up has stored it.

    Returns:
        The id, or None if it was not stored within ``timeout`` seconds (trials then get no parent).
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parent = (study.user_attrs.get(ATTR_PARENTS) or {}).get(uri)
        if parent:
            return parent
        time.sleep(0.1)
    _warn(f"the sweep's parent run was not recorded within {timeout:.0f} s; trial runs get no parent")
    return None


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


JOB_WAIT_S = 600.0
"""How long a worker started ahead of its job waits for the job file (the sweep's setup)."""


def _wait_for_job(path: Path, parent: int) -> str | None:
    """The job file's text once it exists; None if the starting process ends first or it never comes."""
    import time

    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if os.getppid() != parent:
            return None  # the sweep that started this worker is gone
        time.sleep(0.05)
    return None


def main(argv: list[str] | None = None) -> int:
    """Worker process entry point: ``python -m bpexp.sweep.worker JOB.json``. Returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bpexp.sweep.worker JOB.json", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)  # a terminated worker fails its trial and ends its run KILLED
    path = Path(argv[0])
    if not path.exists():
        # started ahead of its job, while the sweep sets up: load what every trial needs meanwhile
        import optuna  # noqa: F401

        import bpexp.tracking  # noqa: F401
        import bpexp.train  # noqa: F401

        try:
            text = _wait_for_job(path, os.getppid())
        except KeyboardInterrupt:
            return 130
        if text is None:
            return 0
    else:
        text = path.read_text()
    job = WorkerJob.from_json(text)
    try:
        stats = run_worker(job)
    except KeyboardInterrupt:
        return 130
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
