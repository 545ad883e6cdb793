"""The sweep as a whole: set up the study and the parent run, run the workers, sum up.

:func:`run_sweep` is what ``bpexp sweep`` calls. In order:

1. check the tracking store and the study storage (fail fast, before any training);
2. under the study's setup lock: create or load the study, create or reopen the
   parent MLflow run, fail the trials of dead workers, and (``lr: auto``) run the
   range test once, logged as its own run, its suggestions kept in the study;
3. run the workers: in this process, or ``--workers N`` processes with their BLAS
   threads limited to share the cores;
4. when the study has n_trials finished trials and none running, record the best
   trial (or the Pareto front) and the diagnosis counts on the parent run and end it;
5. call the ``hooks`` (a report, for instance) with the :class:`SweepOutcome`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bpexp.config import json_safe
from bpexp.errors import ConfigError
from bpexp.sweep.search import grid_size
from bpexp.sweep.spec import SweepSpec
from bpexp.sweep.storage import exclusive, open_storage, probe_storage, resolve_storage
from bpexp.sweep.worker import (
    ATTR_PARENTS,
    ATTR_CONFIG,
    ATTR_DIAGNOSIS,
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_FINAL,
    ATTR_STOP_REASON,
    TAG_STUDY,
    BlasShare,
    WorkerJob,
    close_unfinished_runs,
    curves_title,
    late_run_ids,
    trial_run_id,
    quiet_optuna,
    reap_dead_trials,
    run_worker,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from bpexp.tracking import Tracker

ATTR_LR_FIND = "bpexp.lr_find"  # study attr: the range test of `lr: auto`
ATTR_OBJECTIVES = "bpexp.objectives"
ATTR_SPEC = "bpexp.spec"
# BLAS thread variables set in a worker's environment before numpy loads. OPENBLAS_CORETYPE
# is left alone: it selects a kernel for the processor, not a thread count.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class TrialSummary:
    """One trial as the sweep reports it."""

    number: int
    state: str
    value: float | None
    values: list[float | None] | None
    params: dict[str, Any]
    diagnosis: list[str]
    stop_reason: str | None
    epochs: int | None
    run_id: str | None
    error: str | None = None


@dataclass
class SweepOutcome:
    """What a sweep did, for the summary table, ``--json`` and the report hook."""

    study_name: str
    storage: str
    tracking_uri: str | None
    parent_run_id: str | None
    objectives: list[str]
    directions: list[str]
    n_trials: int
    finished: bool
    counts: dict[str, int]
    best: list[TrialSummary]
    trials: list[TrialSummary]
    diagnosis_counts: dict[str, int]
    lr_find: dict[str, Any] | None = None
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def best_trial(self) -> TrialSummary | None:
        """The best trial of a single-objective sweep (the first of the front for two objectives)."""
        return self.best[0] if self.best else None

    def to_json(self) -> dict[str, Any]:
        """The ``bpexp sweep --json`` object (NaN and inf as null)."""
        payload = {
            "study_name": self.study_name,
            "storage": self.storage,
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "objectives": self.objectives,
            "directions": self.directions,
            "n_trials": self.n_trials,
            "finished": self.finished,
            "counts": self.counts,
            "best_trial": asdict(self.best[0]) if self.best else None,
            "pareto_front": [asdict(t) for t in self.best] if len(self.objectives) > 1 else None,
            "trials": [asdict(t) for t in self.trials],
            "diagnosis_counts": self.diagnosis_counts,
            "lr_find": self.lr_find,
            "seconds": round(self.seconds, 3),
            **self.extras,
        }
        return json_safe(payload)



ProgressFn = Callable[[int, int, int, str], None]
"""Called as progress(finished, target, failed, status) while the sweep runs."""


def run_sweep(
    spec: SweepSpec,
    tracker: "Tracker",
    *,
    storage: str | None = None,
    workers: int = 1,
    n_trials: int | None = None,
    study_name: str | None = None,
    progress: ProgressFn | None = None,
    hooks: Sequence[Callable[[SweepOutcome], None]] = (),
) -> SweepOutcome:
    """Run (or resume) a sweep until the study holds ``n_trials`` finished trials.

    Args:
        spec: the validated sweep spec.
        tracker: where runs go (a :class:`~bpexp.tracking.NoOpTracker` for ``--no-track``).
        storage: an RDB URL or a journal file; default the journal file next to the MLflow data.
        workers: processes on this machine; 1 runs in this process.
        n_trials: overrides ``sweep.n_trials``.
        study_name: overrides ``sweep.study_name``.
        progress: see :data:`ProgressFn`.
        hooks: called with the outcome at the end (the place for a report).

    Returns:
        The :class:`SweepOutcome`.

    Raises:
        ServiceError: the tracking store or the storage cannot be reached (before any training).
        ConfigError: the stored study has other objectives than the spec, or the range
            test of ``lr: auto`` suggests no λ.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1; got {workers}")
    if n_trials is not None or study_name is not None:
        section = spec.sweep.model_copy(update={k: v for k, v in (("n_trials", n_trials), ("study_name", study_name)) if v is not None})
        spec = spec.model_copy(update={"sweep": section})
    target = spec.sweep.n_trials
    size = grid_size(spec)
    if size is not None:
        target = min(target, size)
    tracker.check()
    storage_url = resolve_storage(storage, tracker.uri)
    probe_storage(storage_url)
    quiet_optuna()
    name = spec.study_name

    # the other workers start loading now, while this process sets the sweep up
    processes = WorkerProcesses(workers) if workers > 1 else None
    try:
        return _sweep(spec, tracker, storage_url, workers, target, name, started, progress, hooks, processes)
    finally:
        if processes is not None:
            processes.close()


def _sweep(spec: SweepSpec, tracker: "Tracker", storage_url: str, workers: int, target: int, name: str, started: float,
           progress: ProgressFn | None, hooks: Sequence[Callable[[SweepOutcome], None]],
           processes: "WorkerProcesses | None") -> SweepOutcome:
    import optuna

    setup = exclusive(storage_url, f"setup-{name}")
    released_later = None  # the thread that stores the parent's id and then releases the setup lock
    # the range test trains while the tracking process imports MLflow beside it: the same
    # one BLAS thread fewer as for the trials (see BlasShare)
    blas = BlasShare(tracker)
    setup.__enter__()
    try:
        store = open_storage(storage_url, heartbeat_interval=spec.sweep.heartbeat_interval, grace_period=spec.sweep.grace_period)
        study = optuna.create_study(study_name=name, storage=store, directions=spec.sweep.directions, load_if_exists=True)
        _check_same_objectives(study, spec)
        parent_run_id = _ensure_parent_run(study, spec, tracker)
        # the range test comes first: an asynchronous tracker opens its store meanwhile
        auto, lr_find_run_id = _ensure_lr_auto(study, spec, tracker, parent_run_id) if spec.auto_lr else (None, None)
        cleanup = None
        if study.get_trials(deepcopy=False):  # a fresh study has no trial or run to clean up
            with exclusive(storage_url, f"slots-{name}"):
                reap_dead_trials(study, store, tracker)
            # finding runs left RUNNING reads the store: with an asynchronous tracker that
            # waits for it to open, so it goes on beside the trials instead of before them
            cleanup = _in_background(close_unfinished_runs, study, tracker) if tracker.asynchronous else None
            if cleanup is None:
                close_unfinished_runs(study, tracker)
        # The parent's id is stored before the setup lock is released, so that a process joining
        # the study (another machine, another `bpexp sweep`) reuses this parent. With an
        # asynchronous tracker the trials need not wait for it: a thread stores it once the
        # tracking process has created the run, then releases the lock. This process's worker
        # uses the pending id; worker processes read the real one from the study.
        if tracker.asynchronous and parent_run_id is not None and tracker.resolved(parent_run_id) is None:
            released_later = _in_background(_store_then_release, study, tracker, parent_run_id, setup)
        else:
            _store_run_ids(study, tracker, parent_run_id, None)
            if parent_run_id is not None:
                parent_run_id = tracker.resolve(parent_run_id)
    finally:
        blas.restore()
        if released_later is None:
            _release(setup)

    job = WorkerJob(
        spec=_raw_spec(spec),
        source=spec.source,
        storage=storage_url,
        study_name=name,
        tracking=tracker.worker_spec(),
        parent_run_id=parent_run_id,
        auto=auto,
        n_trials=target,
        seed_offset=len(study.get_trials(deepcopy=False)),
        best_curves=("ahead" if workers == 1 else "at_finish") if spec.sweep.curves == "best" and not spec.sweep.multi_objective else "none",
    )

    def report(state: str | None = None) -> None:
        if progress is None:
            return
        trials = study.get_trials(deepcopy=False)
        counts = Counter(t.state.name for t in trials)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        progress(finished, target, counts["FAIL"], _status(study, counts, spec))

    interrupted = False
    try:
        report()
        if workers == 1:
            run_worker(job, spec=spec, tracker=tracker, on_trial=report)
        else:
            assert processes is not None
            processes.run(job, report, spec, tracker)
    except KeyboardInterrupt:
        interrupted = True
    for thread in (cleanup, released_later):
        if thread is not None:
            thread.join()
    _store_run_ids(study, tracker, parent_run_id, lr_find_run_id)
    if parent_run_id is not None:
        parent_run_id = tracker.resolve(parent_run_id)
    outcome = _summarise(study, spec, storage_url, tracker, parent_run_id, target, started, auto=auto)
    if tracker.uri is not None and parent_run_id is not None:
        _close_parent(study, spec, tracker, parent_run_id, outcome, interrupted)
    try:
        tracker.flush()  # the hooks (a report) read the store back
    except Exception as exc:  # the study holds every result; say what the store lacks
        print(f"bpexp: warning: some runs could not be recorded: {exc}", file=sys.stderr)
    if interrupted:
        raise KeyboardInterrupt
    for hook in hooks:
        hook(outcome)
    return outcome


def _release(lock: Any) -> None:
    try:
        lock.__exit__(None, None, None)
    finally:
        if hasattr(lock, "close"):
            lock.close()


def _store_then_release(study: "optuna.Study", tracker: "Tracker", parent_run_id: str, setup: Any) -> None:
    """Store the parent run's id once the tracker has it, then release the setup lock."""
    try:
        _store_run_ids(study, tracker, parent_run_id, None)
    finally:
        _release(setup)


def _in_background(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in a daemon thread; an error in it becomes a warning. Returns the started thread."""
    import threading

    def run() -> None:
        try:
            function(*args)
        except Exception as exc:
            print(f"bpexp: warning: {function.__name__}: {exc}", file=sys.stderr)

    thread = threading.Thread(target=run, name=f"bpexp-{function.__name__}", daemon=True)
    thread.start()
    return thread


def _raw_spec(spec: SweepSpec) -> dict[str, Any]:
    raw = dict(spec.raw)
    raw["sweep"] = {**(raw.get("sweep") or {}), "n_trials": spec.sweep.n_trials}
    if spec.sweep.study_name is not None:
        raw["sweep"]["study_name"] = spec.sweep.study_name
    return raw


def _status(study: "optuna.Study", counts: Counter, spec: SweepSpec) -> str:
    text = f"{counts['PRUNED']} pruned"
    if counts["FAIL"]:
        text += f", {counts['FAIL']} failed"
    if counts["COMPLETE"]:
        if spec.sweep.multi_objective:
            text += f" · front {len(study.best_trials)}"
        else:
            text += f" · best {study.best_value:.4g}"
    return text


def _check_same_objectives(study: "optuna.Study", spec: SweepSpec) -> None:
    stored = study.user_attrs.get(ATTR_OBJECTIVES)
    directions = [d.name.lower() for d in study.directions]
    if stored is None:
        if study.get_trials(deepcopy=False) and directions != spec.sweep.directions:
            raise ConfigError(f"study {study.study_name!r} exists with directions {directions}; the spec asks {spec.sweep.directions}")
        study.set_user_attr(ATTR_OBJECTIVES, spec.sweep.objective)
        study.set_user_attr(ATTR_SPEC, _raw_spec(spec))
        return
    if stored != spec.sweep.objective or directions != spec.sweep.directions:
        raise ConfigError(
            f"study {study.study_name!r} optimises {stored} ({', '.join(directions)}); the spec asks "
            f"{spec.sweep.objective} ({', '.join(spec.sweep.directions)}): set sweep.study_name to start a new study"
        )


def _ensure_parent_run(study: "optuna.Study", spec: SweepSpec, tracker: "Tracker") -> str | None:
    """The sweep's parent run in this tracking store: created once, reopened on resume."""
    from bpexp.tracking import TAG_KIND

    if tracker.uri is None:
        return None
    parents = dict(study.user_attrs.get(ATTR_PARENTS) or {})
    run_id = parents.get(tracker.uri)
    if run_id is not None and tracker.asynchronous:
        # no waiting for the tracking process to open its store: setting RUNNING again is
        # harmless on a running parent, and a parent deleted meanwhile is reported as a warning
        tracker.reopen_run(run_id)
        return run_id
    if run_id is not None:
        try:
            status = tracker.run_status(run_id)
        except Exception:
            run_id = None  # deleted from the store: start a new parent
        else:
            if status != "RUNNING":
                tracker.reopen_run(run_id)
            return run_id
    section = spec.sweep
    run_id = tracker.start_run(
        spec.study_name,
        tags={
            TAG_KIND: "sweep",
            TAG_STUDY: spec.study_name,
            "bpexp.sweep.sampler": section.sampler.name,
            "bpexp.sweep.pruner": section.pruner.name,
            "bpexp.sweep.objectives": ",".join(section.objective),
            "bpexp.sweep.directions": ",".join(section.directions),
            "bpexp.sweep.n_trials": section.n_trials,
        },
    )
    with tempfile.TemporaryDirectory(prefix="bpexp-sweep-") as tmp:
        import yaml

        Path(tmp, "sweep_spec.yaml").write_text(yaml.safe_dump(_raw_spec(spec), sort_keys=False))
        tracker.log_artifacts(run_id, tmp)
    if tracker.resolved(run_id) is not None:
        parents[tracker.uri] = tracker.resolved(run_id)
        study.set_user_attr(ATTR_PARENTS, parents)
    # else _store_run_ids writes it once the tracking process has created the run
    return run_id


def _store_run_ids(study: "optuna.Study", tracker: "Tracker", parent_run_id: str | None, lr_find_run_id: str | None) -> None:
    """Write the ids an asynchronous tracker gave late: the parent run's and the range test's (waits for them)."""
    if tracker.uri is None:
        return
    parents = dict(study.user_attrs.get(ATTR_PARENTS) or {})
    if parent_run_id is not None and tracker.uri not in parents:
        parents[tracker.uri] = tracker.resolve(parent_run_id)
        study.set_user_attr(ATTR_PARENTS, parents)
    stored = study.user_attrs.get(ATTR_LR_FIND)
    if lr_find_run_id is not None and isinstance(stored, dict) and stored.get("run_id") is None:
        study.set_user_attr(ATTR_LR_FIND, {**stored, "run_id": tracker.resolve(lr_find_run_id)})


def _ensure_lr_auto(study: "optuna.Study", spec: SweepSpec, tracker: "Tracker",
                    parent_run_id: str | None) -> tuple[dict[str, float | None], str | None]:
    """Run the range test of ``lr: auto`` once per study; later workers and resumes reuse its suggestions.

    Returns:
        The suggestions (name → λ), and the range test's run id when it ran now and the
        tracker has not yet given its real id (else None).

    Raises:
        ConfigError: when the range test suggests no max_lr (the message gives its reason).
    """
    stored = study.user_attrs.get(ATTR_LR_FIND)
    if stored is not None:
        return {k: v.get("lr") for k, v in stored["suggestions"].items()}, None
    from bpexp.lr_find import range_test
    from bpexp.tracking import log_lr_find

    auto = spec.sweep.lr_find
    result = range_test(spec.base, start_lr=auto.start_lr, end_lr=auto.end_lr, epochs=auto.epochs)
    run_id = log_lr_find(
        tracker, result, spec.base, parent_run_id=parent_run_id, name=f"{spec.study_name}-lr-find", tags={TAG_STUDY: spec.study_name}
    )
    payload = result.to_dict()
    payload.pop("config", None)
    payload["run_id"] = tracker.resolved(run_id) if tracker.uri is not None else None
    max_lr = result.suggestions.get("max_lr")
    if max_lr is None or max_lr.lr is None:
        reason = max_lr.reason if max_lr is not None else "no max_lr suggestion"
        raise ConfigError(f"sweep.space.lr: auto: the range test gives no max_lr ({reason}); search optim.lr with a range instead")
    study.set_user_attr(ATTR_LR_FIND, json_safe(payload))
    late = run_id if tracker.uri is not None and payload["run_id"] is None else None
    return {k: s.lr for k, s in result.suggestions.items()}, late


class WorkerProcesses:
    """The ``workers - 1`` worker processes of ``--workers N``, started before the sweep's setup.

    They load numpy, Optuna and bpexp while this process opens the study and runs the
    range test, then wait for their job file; :meth:`run` writes it and runs this
    process's own worker beside them. Their BLAS threads are limited through the
    environment, set before numpy loads, and this process limits its own with
    threadpoolctl, so that the workers together use one thread per core.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._tmp = tempfile.TemporaryDirectory(prefix="bpexp-workers-")
        env = dict(os.environ)
        for var in THREAD_VARS:
            given = env.get(var, "")
            env[var] = str(min(self.threads, int(given))) if given.isdigit() and int(given) > 0 else str(self.threads)
        self.procs: list[tuple[subprocess.Popen, Path, Path]] = []
        for index in range(1, workers):
            job_path = Path(self._tmp.name, f"job-{index}.json")
            log_path = Path(self._tmp.name, f"worker-{index}.log")
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bpexp.sweep.worker", str(job_path)],
                    env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                )
            self.procs.append((proc, job_path, log_path))

    def run(self, job: WorkerJob, report: Callable[..., None], spec: SweepSpec, tracker: "Tracker") -> None:
        """Hand every process its job, run a worker here too, and wait for them all."""
        from threadpoolctl import threadpool_limits

        try:
            for index, (_, job_path, _) in enumerate(self.procs, start=1):
                partial = job_path.with_suffix(".part")
                # a pending parent id means nothing to another process: it reads the id from the study
                pending = tracker.resolved(job.parent_run_id) is None if job.parent_run_id is not None else False
                partial.write_text(WorkerJob(**{**asdict(job), "worker_index": index, "parent_from_study": pending}).to_json())
                partial.rename(job_path)  # the worker sees the whole file or none
            with threadpool_limits(limits=self.threads):
                run_worker(job, spec=spec, tracker=tracker, on_trial=report)
            # wait on each process rather than polling on a timer, so that the sweep goes
            # on as soon as the last worker exits; the progress bar still moves twice a second
            for proc, _, _ in self.procs:
                while not _exited(proc, within=0.5):
                    report()
            report()
        except KeyboardInterrupt:
            self.stop()
            raise
        for index, (proc, _, log_path) in enumerate(self.procs, start=1):
            if proc.returncode != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"bpexp: warning: sweep worker {index} exited with {proc.returncode}: " + " | ".join(tail), file=sys.stderr)

    def stop(self) -> None:
        """Terminate the processes still running (their trials end FAILED, their runs KILLED)."""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def close(self) -> None:
        """Stop what still runs and remove the job files."""
        self.stop()
        self._tmp.cleanup()


def _exited(proc: subprocess.Popen, within: float) -> bool:
    """True once ``proc`` has exited, waiting up to ``within`` seconds for it."""
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


# ------------------------------------------------------------------------- summary


def trial_summary(trial: "optuna.trial.FrozenTrial", late: dict[int, str] | None = None) -> TrialSummary:
    """A frozen trial as a :class:`TrialSummary` (``late``: see :func:`~bpexp.sweep.worker.late_run_ids`)."""
    values = list(trial.values) if trial.values is not None else None
    diagnosis = [str(f.get("mode")) for f in trial.user_attrs.get(ATTR_DIAGNOSIS) or [] if isinstance(f, dict)]
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=values[0] if values else None,
        values=values if values is not None and len(values) > 1 else None,
        params=dict(trial.params),
        diagnosis=diagnosis,
        stop_reason=trial.user_attrs.get(ATTR_STOP_REASON),
        epochs=trial.user_attrs.get(ATTR_EPOCHS),
        run_id=trial_run_id(trial, late or {}),
        error=trial.user_attrs.get(ATTR_ERROR) if trial.state.name == "FAIL" else None,
    )


def _summarise(
    study: "optuna.Study",
    spec: SweepSpec,
    storage: str,
    tracker: "Tracker",
    parent_run_id: str | None,
    target: int,
    started: float,
    *,
    auto: dict | None,
) -> SweepOutcome:
    trials = study.get_trials(deepcopy=False)
    late = late_run_ids(study.user_attrs)
    counts = Counter(t.state.name for t in trials)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best: list[Any] = []
    if complete:
        best = list(study.best_trials) if spec.sweep.multi_objective else [study.best_trial]
        best.sort(key=lambda t: t.number)
    diagnosis = Counter()
    for trial in complete:
        modes = {str(f.get("mode")) for f in trial.user_attrs.get(ATTR_DIAGNOSIS) or [] if isinstance(f, dict)}
        diagnosis.update(modes or {"none"})
    return SweepOutcome(
        study_name=study.study_name,
        storage=storage,
        tracking_uri=tracker.uri,
        parent_run_id=parent_run_id,
        objectives=list(spec.sweep.objective),
        directions=list(spec.sweep.directions),
        n_trials=target,
        finished=finished >= target and counts["RUNNING"] == 0,
        counts={state: counts[state] for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
        best=[trial_summary(t, late) for t in best],
        trials=[trial_summary(t, late) for t in trials],
        diagnosis_counts=dict(sorted(diagnosis.items())),
        lr_find=study.user_attrs.get(ATTR_LR_FIND),
        seconds=time.perf_counter() - started,
    )


def _close_parent(
    study: "optuna.Study", spec: SweepSpec, tracker: "Tracker", parent_run_id: str, outcome: SweepOutcome, interrupted: bool
) -> None:
    """Record the best trial and counts on the parent run; end it when the study is done.

    A parent whose study still has running trials (other machines) stays RUNNING:
    the last worker to finish closes it.
    """
    from bpexp.config import flatten

    close_unfinished_runs(study, tracker)
    step = len(outcome.trials)
    metrics = [(f"trials.{state.lower()}", float(n), step) for state, n in outcome.counts.items()]
    metrics += [(f"diagnosis.{mode}", float(n), step) for mode, n in outcome.diagnosis_counts.items()]
    tags: dict[str, Any] = {"bpexp.diagnosis_counts": json.dumps(outcome.diagnosis_counts)}
    if outcome.best:
        best = outcome.best[0]
        frozen = study.trials[best.number]
        for name, value in zip(outcome.objectives, frozen.values or []):
            if math.isfinite(value):
                metrics.append((f"best.{name}", float(value), step))
        for key, value in (frozen.user_attrs.get(ATTR_FINAL) or {}).items():
            if value is not None:
                metrics.append((f"final.{key}", float(value), step))
        tags.update({"bpexp.best_trial": best.number, "bpexp.best_run_id": best.run_id or ""})
        if len(outcome.objectives) > 1:
            tags["bpexp.pareto_front"] = ",".join(str(t.number) for t in outcome.best)
        params = {**flatten(frozen.user_attrs.get(ATTR_CONFIG) or {}), "trial_number": best.number}
    else:
        params = {}
    tracker.log_metrics(parent_run_id, metrics)
    tracker.set_tags(parent_run_id, tags)
    if outcome.finished and params:
        try:
            tracker.log_params(parent_run_id, params)
        except Exception:
            # MLflow params are write-once: a study extended after an earlier finish keeps
            # its first best's params; the new best goes into tags instead.
            tracker.set_tags(parent_run_id, {f"best.{k}": v for k, v in params.items()})
    if outcome.finished and spec.sweep.curves == "best":
        for trial in outcome.best:
            _draw_best_curves(tracker, trial, parent_run_id, curves_title(spec.study_name, trial.number))
    if interrupted:
        tracker.end_run(parent_run_id, "KILLED")
    elif outcome.finished:
        tracker.end_run(parent_run_id, "FINISHED")
    elif outcome.counts["RUNNING"] == 0:
        tracker.set_tags(parent_run_id, {"bpexp.error": f"stopped with {outcome.counts['FAIL']} failed trials"})
        tracker.end_run(parent_run_id, "FAILED")


def _draw_best_curves(tracker: "Tracker", trial: TrialSummary, parent_run_id: str, title: str) -> None:
    """Draw curves.png of a best trial from its history.json, into its own run and the parent's ``best_trial_<n>/``."""
    if trial.run_id:
        tracker.log_run_curves(trial.run_id, f"best_trial_{trial.number}", title, also=[parent_run_id])
