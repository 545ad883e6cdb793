"""Loading records: MLflow runs (and the Optuna study behind a sweep) → :mod:`bpexp.report.records`.

What each run holds is written by :mod:`bpexp.tracking`: params are the flattened
resolved config, per-epoch metrics and ``final.*`` metrics, tags
``bpexp.stop_reason``/``bpexp.diagnosis``/``bpexp.kind``, and artifacts
``history.json`` and ``diagnosis.json`` (the full findings). The artifacts are
read straight from disk when the artifact store is a local folder, and
downloaded otherwise.

A sweep's study (``bpexp.sweep``) holds most of a trial as user attributes: its
resolved config, stop reason, epochs, diagnosis, final metrics and MLflow run id;
the study holds its range test, objectives, spec and its parent run per tracking
store. Only the per-epoch history comes from the trial's MLflow run.

Every error a user can cause (an unknown run id, experiment or study, an
unreachable store) is a :class:`~bpexp.errors.ConfigError` or
:class:`~bpexp.errors.ServiceError`, so the CLI exits with code 2.
"""

from __future__ import annotations

import json
import math
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from bpexp.errors import ConfigError, ServiceError
from bpexp.report.records import COMPLETE, FAIL, RUNNING, SweepRecord, TrialRecord, unflatten

# Config keys whose values are strings even when they look like numbers.
_STRING_KEYS = {"name", "experiment", "data.name", "data.path", "data.label_column"}
# MLflow run status → the Optuna state name a standalone run reads as.
_RUN_STATE = {"FINISHED": COMPLETE, "FAILED": FAIL, "KILLED": FAIL, "RUNNING": RUNNING, "SCHEDULED": RUNNING}
HISTORY_ARTIFACT = "history.json"
DIAGNOSIS_ARTIFACT = "diagnosis.json"
LR_FIND_ARTIFACT = "lr_find.json"


def parse_param(key: str, text: str | None) -> Any:
    """A param value as MLflow stores it (a string) back to the value bpexp logged.

    ``None`` → None, ``True``/``False`` → bool, integers and floats (``1e-05``
    included) → numbers, YAML flow lists (``[128]``) → lists; name-like keys stay strings.
    """
    if text is None or text == "None":
        return None
    if key in _STRING_KEYS:
        return text
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def config_params_of(raw: dict[str, str]) -> dict[str, Any]:
    """The params of a run that belong to its config (sections of ExperimentConfig), parsed back.

    Other params a run may carry (a sweep's ``trial_number``, a range test's
    ``suggestion.*``) are left out, so the config validates.
    """
    from bpexp.config import ExperimentConfig

    sections = set(ExperimentConfig.model_fields)
    return {k: parse_param(k, v) for k, v in raw.items() if k.split(".", 1)[0] in sections}


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    from bpexp.tracking import probe_tracking_uri, resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        # MLflow would create an empty database here; a report has nothing to read in it.
        raise ConfigError(f"no MLflow tracking database at {db} (give --tracking-uri, or run from the sweep's folder)")
    probe_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri), uri


def _read_artifact_json(client, run, path: str) -> Any:
    """A JSON artifact of a run, or None when the run has none by that name."""
    root = run.info.artifact_uri or ""
    parsed = urllib.parse.urlparse(root)
    if parsed.scheme in ("", "file"):
        local = Path(urllib.parse.unquote(parsed.path)) / path
        if not local.is_file():
            return None
        return json.loads(local.read_text())
    try:
        with tempfile.TemporaryDirectory(prefix="bpexp-report-") as tmp:
            local = Path(client.download_artifacts(run.info.run_id, path, tmp))
            return json.loads(local.read_text())
    except Exception as exc:  # MLflow raises a variety of errors for a missing artifact
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def trial_from_run(client, run, number: int = 0) -> TrialRecord:
    """A :class:`TrialRecord` of one MLflow run recorded by :mod:`bpexp.tracking`."""
    from bpexp.tracking import TAG_DIAGNOSIS, TAG_ERROR, TAG_STOP_REASON

    params = config_params_of(run.data.params)
    metrics = run.data.metrics
    tags = run.data.tags
    history = _read_artifact_json(client, run, HISTORY_ARTIFACT) or {}
    findings = _read_artifact_json(client, run, DIAGNOSIS_ARTIFACT)
    if findings is None:
        # no diagnosis.json: rebuild the modes from the tags (confidence in bpexp.diagnosis.<mode>)
        modes = [m for m in (tags.get(TAG_DIAGNOSIS) or "").split(",") if m and m != "none"]
        findings = [{"mode": m, "confidence": _float(tags.get(f"{TAG_DIAGNOSIS}.{m}"))} for m in modes]
    final = {k.removeprefix("final."): _finite(v) for k, v in metrics.items() if k.startswith("final.")}
    epochs = int(metrics.get("epochs") or len(history.get("epoch") or []))
    state = _RUN_STATE.get(run.info.status, RUNNING)
    return TrialRecord(
        number=number,
        state=state,
        value=None,
        params=params,
        stop_reason=tags.get(TAG_STOP_REASON),
        diagnosis=list(findings),
        history=history,
        final=final,
        epochs=epochs,
        run_id=run.info.run_id,
        config=unflatten(params) or None,
        error=tags.get(TAG_ERROR),
    )


def load_run(run_id: str, tracking_uri: str | None = None, objective: str = "val_loss") -> SweepRecord:
    """A one-trial record of a single MLflow run (``bpexp report --run``).

    Raises:
        ConfigError: when no run has that id.
        ServiceError: when the tracking store cannot be reached.
    """
    client, uri = _client(tracking_uri)
    run = _get_run(client, run_id, uri)
    trial = trial_from_run(client, run)
    trial.value = trial.final.get(objective)
    name = run.info.run_name or run_id
    return SweepRecord(
        study_name=name,
        directions=["maximize" if objective.endswith("accuracy") else "minimize"],
        trials=[trial],
        objective=objective,
        tracking_uri=uri,
        experiment_id=run.info.experiment_id,
        kind="run",
    )


def _get_run(client, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            raise ConfigError(f"no MLflow run with id {run_id!r} in {_redact(uri)}") from None
        raise ServiceError(f"reading run {run_id!r} from {_redact(uri)}: {str(exc).splitlines()[0]}") from None


def _redact(uri: str) -> str:
    """A URI with its password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@")))
    return uri


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _finite(value: Any) -> float | None:
    number = _float(value)
    return number if number is not None and math.isfinite(number) else None


# ------------------------------------------------------------------ sweeps


def latest_sweep_run(client, experiment: str, uri: str):
    """The most recently started sweep parent run (tag ``bpexp.kind = sweep``) of an MLflow experiment.

    Raises:
        ConfigError: when the experiment does not exist or holds no sweep.
    """
    from bpexp.tracking import TAG_KIND

    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"no MLflow experiment named {experiment!r} in {_redact(uri)}")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ConfigError(f"MLflow experiment {experiment!r} holds no sweep (no run tagged {TAG_KIND}=sweep)")
    return runs[0]


def _open_study(study_name: str, storage: str | None, tracking_uri: str | None):
    """Load an existing study without creating anything.

    Raises:
        ConfigError: no storage at that path, or no study of that name in it (the message lists the ones there).
        ServiceError: an RDB storage that cannot be reached.
    """
    import optuna

    from bpexp.sweep.storage import is_rdb, open_storage, resolve_storage
    from bpexp.sweep.worker import quiet_optuna
    from bpexp.tracking import probe_database, resolve_tracking_uri

    quiet_optuna()
    url = resolve_storage(storage, resolve_tracking_uri(tracking_uri))
    if not is_rdb(url) or url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            hint = "" if storage else " (give --storage: the journal file or RDB URL the sweep used)"
            raise ConfigError(f"no study storage at {path}{hint}")
    else:
        probe_database(url, what="study storage")
    # Read-only use: heartbeats are for workers; the values only matter to RDB storages.
    store = open_storage(url, heartbeat_interval=60, grace_period=120)
    names = optuna.study.get_all_study_names(storage=store)
    if study_name not in names:
        listed = ", ".join(sorted(names)[:20]) or "none"
        raise ConfigError(f"no study named {study_name!r} in {_redact(url)}; studies there: {listed}")
    return optuna.load_study(study_name=study_name, storage=store), url


def _pick_parent(parents: dict[str, str], tracking_uri: str | None) -> tuple[str | None, str | None]:
    """(tracking URI, parent run id) of the sweep: the store asked for, else the only (or the default) one."""
    from bpexp.tracking import resolve_tracking_uri

    if tracking_uri is not None:
        uri = resolve_tracking_uri(tracking_uri)
        return uri, parents.get(uri)
    if not parents:
        return None, None
    default = resolve_tracking_uri(None)
    if default in parents:
        return default, parents[default]
    uri = next(iter(parents))
    return uri, parents[uri]


def _child_runs(client, parent) -> dict[str, Any]:
    """The parent run's nested runs by run id (one paged search, not one request per trial)."""
    from bpexp.tracking import TAG_PARENT

    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.update((run.info.run_id, run) for run in page)
        token = page.token
        if not token:
            return runs


def load_sweep(
    study_name: str | None,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> SweepRecord:
    """A sweep's records from its Optuna study and its MLflow runs.

    Args:
        study_name: the study; None to take the latest sweep of ``experiment``.
        storage: the study's storage (journal file or RDB URL); default the sweep's
            default, the journal file next to the MLflow data.
        tracking_uri: the MLflow store; default the one the sweep recorded its parent run in.
        experiment: the MLflow experiment whose latest sweep to report (with no study_name).

    Raises:
        ConfigError: an unknown study or experiment, or a missing storage file.
        ServiceError: a storage or tracking store that cannot be reached.
    """
    from bpexp.sweep.runner import ATTR_LR_FIND, ATTR_OBJECTIVES, ATTR_PARENTS, ATTR_SPEC
    from bpexp.sweep.worker import TAG_STUDY

    if study_name is None:
        if not experiment:
            raise ConfigError("give a STUDY name, or --experiment NAME for its latest sweep")
        client, uri = _client(tracking_uri)
        parent = latest_sweep_run(client, experiment, uri)
        study_name = parent.data.tags.get(TAG_STUDY) or parent.info.run_name
        tracking_uri = uri
    study, _ = _open_study(study_name, storage, tracking_uri)
    attrs = study.user_attrs
    uri, parent_id = _pick_parent(dict(attrs.get(ATTR_PARENTS) or {}), tracking_uri)
    runs: dict[str, Any] = {}
    client = parent = None
    if uri is not None and parent_id is not None:
        client, uri = _client(uri)
        parent = _get_run(client, parent_id, uri)
        runs = _child_runs(client, parent)
    from bpexp.sweep.worker import late_run_ids

    late = late_run_ids(attrs)
    trials = [_trial_record(t, client, runs, late) for t in study.get_trials(deepcopy=False)]
    space: dict[str, str] = {}
    import optuna

    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            space.setdefault(name, optuna.distributions.distribution_to_json(dist))
    lr_find = attrs.get(ATTR_LR_FIND)
    objectives = attrs.get(ATTR_OBJECTIVES) or ["objective"]
    return SweepRecord(
        study_name=study.study_name,
        directions=[d.name.lower() for d in study.directions],
        trials=trials,
        lr_find=dict(lr_find) if lr_find else None,
        parent_run_id=parent_id if parent is not None else None,
        spec=attrs.get(ATTR_SPEC),
        objective=str(objectives[0]),
        search_space=space or None,
        tracking_uri=uri if parent is not None else None,
        experiment_id=parent.info.experiment_id if parent is not None else None,
    )


def _trial_record(trial, client, runs: dict[str, Any], late: dict[int, str] | None = None) -> TrialRecord:
    """One frozen Optuna trial (and its MLflow run, when found) as a record (``late``: see
    :func:`bpexp.sweep.worker.late_run_ids`)."""
    from bpexp.config import flatten
    from bpexp.sweep.worker import ATTR_CONFIG, ATTR_DIAGNOSIS, ATTR_EPOCHS, ATTR_ERROR, ATTR_FINAL, ATTR_STOP_REASON, trial_run_id

    attrs = trial.user_attrs
    config = attrs.get(ATTR_CONFIG)
    run_id = trial_run_id(trial, late or {})
    run = runs.get(run_id) if run_id else None
    history: dict[str, Any] = {}
    if run is not None and client is not None:
        history = _read_artifact_json(client, run, HISTORY_ARTIFACT) or {}
    params = flatten(config) if config else dict(trial.params)
    if config is None and run is not None:
        params = config_params_of(run.data.params)
        config = unflatten(params) or None
    values = list(trial.values) if trial.values is not None else None
    stop_reason = attrs.get(ATTR_STOP_REASON)
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        value=_finite(values[0]) if values else None,
        params=params,
        stop_reason=None if stop_reason == "pruned" else stop_reason,
        diagnosis=list(attrs.get(ATTR_DIAGNOSIS) or []),
        history=history,
        final=dict(attrs.get(ATTR_FINAL) or {}),
        epochs=int(attrs.get(ATTR_EPOCHS) or len(history.get("epoch") or [])),
        run_id=run_id,
        config=config,
        values=[_finite(v) for v in values] if values and len(values) > 1 else None,
        error=attrs.get(ATTR_ERROR) if trial.state.name == "FAIL" else None,
    )
