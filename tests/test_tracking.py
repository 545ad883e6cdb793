"""Tracking: one contract suite run over every Tracker, then what a training run records.

The contract suite follows optuna's testing/pytest_storages.py: a parametrized
fixture yields each implementation (no-op, MLflow on a SQLite file, on a real
``mlflow server`` over http, and on a PostgreSQL backend store), and every test
runs against each of them.
"""

from __future__ import annotations

import json
import math
import socket
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bpexp import __version__
from bpexp.config import config_from_dict, flatten
from bpexp.errors import ServiceError
from bpexp.tracking import (
    CURVE_METRICS,
    EPOCH_METRICS,
    SQL_WRITES_ENV,
    EpochLogger,
    MlflowTracker,
    NoOpTracker,
    Tracker,
    batch_slices,
    epoch_metrics,
    findings_tags,
    load_weights,
    make_tracker,
    open_run,
    probe_tracking_uri,
    track_train,
)
from bpexp.train import train

TRACKERS = ["noop", "sqlite", "server", "postgres", "direct-sqlite", "direct-postgres"]


@pytest.fixture(params=TRACKERS)
def tracker(request, tmp_path) -> Tracker:
    """Each Tracker implementation, on a fresh experiment (direct-*: DirectSqlTracker on a migrated store)."""
    from bpexp.tracking_direct import DirectSqlTracker

    experiment = f"contract-{request.node.name}"
    if request.param == "noop":
        tracker = NoOpTracker(experiment)
    elif request.param == "server":
        tracker = MlflowTracker(request.getfixturevalue("mlflow_server"), experiment)
    else:
        url = request.getfixturevalue("mlflow_sqlite_uri" if request.param.endswith("sqlite") else "mlflow_pg_uri")
        tracker = MlflowTracker(url, experiment)
        if request.param.startswith("direct"):
            tracker.check()  # MLflow migrates a new PostgreSQL store first
            tracker = DirectSqlTracker.open(url, experiment)
            assert tracker is not None, "DirectSqlTracker does not serve a store MLflow just opened"
    tracker.check()
    return tracker


def _stores(tracker: Tracker) -> bool:
    return tracker.uri is not None


# ------------------------------------------------------------------------ contract


class TestTrackerContract:
    def test_run_ids_are_unique_strings(self, tracker):
        ids = {tracker.start_run(f"r{i}") for i in range(3)}
        assert len(ids) == 3 and all(isinstance(i, str) and i for i in ids)
        for run_id in ids:
            tracker.end_run(run_id)

    def test_params_metrics_tags_round_trip(self, tracker):
        run_id = tracker.start_run("round-trip", tags={"bpexp.kind": "test"})
        params = {f"p{i:03d}": i / 7 for i in range(150)}  # more than one batch of 100
        tracker.log_params(run_id, params)
        rows = [(f"m{k}", k * 1000 + step * 0.5, step) for k in range(3) for step in range(1, 901)]  # 2700 values
        tracker.log_metrics(run_id, rows)
        tags = {f"t{i:03d}": f"v{i}" for i in range(120)}
        tracker.set_tags(run_id, tags)
        tracker.end_run(run_id, "FINISHED")
        record = tracker.read_run(run_id)
        if not _stores(tracker):
            assert record is None
            return
        assert record.status == "FINISHED"
        assert record.params == {k: str(v) for k, v in params.items()}
        for k in range(3):
            history = record.metrics[f"m{k}"]
            assert [step for step, _ in history] == list(range(1, 901))
            assert history[-1][1] == pytest.approx(k * 1000 + 450.0)
        assert all(record.tags[k] == v for k, v in tags.items())
        assert record.tags["bpexp.kind"] == "test"
        assert record.tags["bpexp.version"] == __version__

    def test_nested_run_points_at_parent(self, tracker):
        parent = tracker.start_run("parent")
        child = tracker.start_run("child", parent_run_id=parent)
        tracker.end_run(child, "KILLED")
        tracker.end_run(parent, "FINISHED")
        record = tracker.read_run(child)
        if _stores(tracker):
            assert record.tags["mlflow.parentRunId"] == parent
            assert record.status == "KILLED"
            assert record.name == "child"

    def test_artifacts_round_trip(self, tracker, tmp_path):
        folder = tmp_path / "out"
        (folder / "sub").mkdir(parents=True)
        (folder / "a.json").write_text(json.dumps({"x": 1}))
        (folder / "sub" / "b.txt").write_text("hello")
        run_id = tracker.start_run("artifacts")
        tracker.log_artifacts(run_id, folder)
        tracker.end_run(run_id)
        record = tracker.read_run(run_id)
        if not _stores(tracker):
            assert tracker.download_artifact(run_id, "a.json", tmp_path) is None
            return
        assert record.artifacts == ["a.json", "sub/b.txt"]
        local = tracker.download_artifact(run_id, "sub/b.txt", tmp_path / "dl")
        assert local.read_text() == "hello"

    def test_reopen_then_end(self, tracker):
        run_id = tracker.start_run("reopen")
        tracker.end_run(run_id, "FINISHED")
        tracker.reopen_run(run_id)
        if _stores(tracker):
            assert tracker.read_run(run_id).status == "RUNNING"
        tracker.end_run(run_id, "FAILED")
        if _stores(tracker):
            assert tracker.read_run(run_id).status == "FAILED"

    def test_end_run_refuses_unknown_status(self, tracker):
        run_id = tracker.start_run("bad-status")
        with pytest.raises(ValueError, match="FINISHED, FAILED or KILLED"):
            tracker.end_run(run_id, "DONE")
        tracker.end_run(run_id)

    def test_open_run_ends_by_outcome(self, tracker):
        with pytest.raises(RuntimeError):
            with open_run(tracker, "raises") as failed:
                raise RuntimeError("boom")
        with pytest.raises(KeyboardInterrupt):
            with open_run(tracker, "interrupted") as killed:
                raise KeyboardInterrupt
        with open_run(tracker, "fine") as fine:
            pass
        if _stores(tracker):
            record = tracker.read_run(failed)
            assert record.status == "FAILED"
            assert record.tags["bpexp.error"] == "RuntimeError: boom"
            assert tracker.read_run(killed).status == "KILLED"
            assert tracker.read_run(fine).status == "FINISHED"

    def test_a_training_run_is_recorded_whole(self, tracker, tmp_path):
        config = config_from_dict(
            {"name": "iris-run", "seed": 3, "data": {"name": "iris"}, "optim": {"lr": 0.5}, "train": {"max_epochs": 7}}
        )
        result = train(config)
        findings = [_Finding("lr_too_low", 0.7)]
        run_id = track_train(tracker, result, findings)
        record = tracker.read_run(run_id)
        if not _stores(tracker):
            assert record is None
            return
        assert record.status == "FINISHED"
        expected = {k: str(v) for k, v in flatten(config.model_dump(mode="json")).items()}
        assert record.params == expected
        for key in ("train_loss", "val_accuracy", "lr", "iterations"):
            assert [s for s, _ in record.metrics[key]] == list(range(1, result.epochs + 1))
        assert [v for _, v in record.metrics["train_loss"]] == pytest.approx(result.history.train_loss, rel=1e-6)
        assert record.metrics["final.val_accuracy"][-1][1] == pytest.approx(result.final["val_accuracy"])
        assert record.tags["bpexp.stop_reason"] == result.stop_reason
        assert record.tags["bpexp.data_fingerprint"] == result.dataset.fingerprint()
        assert record.tags["bpexp.seed"] == "3"
        assert record.tags["bpexp.diagnosis"] == "lr_too_low"
        assert record.tags["bpexp.diagnosis.lr_too_low"] == "0.7"
        assert set(record.artifacts) == {"curves.png", "history.json", "weights.npz", "diagnosis.json"}
        weights = load_weights(tracker.download_artifact(run_id, "weights.npz", tmp_path / "w"))
        assert list(weights) == result.model.param_names
        for saved, live in zip(weights.values(), result.model.params):
            np.testing.assert_array_equal(saved, live)
        history = json.loads(tracker.download_artifact(run_id, "history.json", tmp_path / "h").read_text())
        assert history["val_loss"] == pytest.approx(result.history.val_loss)
        png = tracker.download_artifact(run_id, "curves.png", tmp_path / "c").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


class _Finding:
    def __init__(self, mode: str, confidence: float) -> None:
        self.mode, self.confidence = mode, confidence

    def to_dict(self) -> dict:
        return {"mode": self.mode, "confidence": self.confidence, "epoch": 1, "evidence": {}, "advice": ""}


# ---------------------------------------------------------------------- batching


def test_metrics_go_in_batches_of_at_most_1000(mlflow_sqlite_uri, monkeypatch):
    # through MLflow's own log_batch, as for a tracking server (a SQL store's runs created
    # here are written past it, in one transaction: tests/test_tracking_sql.py)
    monkeypatch.setenv(SQL_WRITES_ENV, "0")
    tracker = MlflowTracker(mlflow_sqlite_uri, "batches")
    tracker.check()
    calls = []
    original = tracker.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=(), synchronous=None):
        calls.append((len(metrics), len(params), len(tags)))
        return original(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(tracker.client, "log_batch", counting)
    run_id = tracker.start_run("batched")
    tracker.log_metrics(run_id, ((f"m{i % 5}", float(i), i // 5) for i in range(2501)))
    tracker.log_params(run_id, {f"p{i}": i for i in range(250)})
    tracker.set_tags(run_id, {f"t{i}": i for i in range(101)})
    assert calls == [(1000, 0, 0), (1000, 0, 0), (501, 0, 0), (0, 100, 0), (0, 100, 0), (0, 50, 0), (0, 0, 100), (0, 0, 1)]
    calls.clear()
    tracker.log_batch(run_id, metrics=[("x", 1.0, i) for i in range(950)], params={"a": 1}, tags={"b": 2})
    assert calls == [(950, 1, 1)]  # one request when everything fits



def test_artifacts_of_a_run_created_here_need_no_read_back(mlflow_sqlite_uri, monkeypatch, tmp_path):
    # MLflow's own log_artifacts reads the whole run back to learn its artifact URI; the
    # tracker knows it from creating the run (a sweep writes one such run per trial)
    tracker = MlflowTracker(mlflow_sqlite_uri, "artifact-uri")
    tracker.check()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "history.json").write_text("{}")
    run_id = tracker.start_run("trial")
    service = tracker.client._tracking_client
    original = service.get_run
    reads = []
    monkeypatch.setattr(service, "get_run", lambda *args: reads.append(args) or original(*args))
    tracker.log_artifacts(run_id, folder)
    assert reads == []
    tracker.end_run(run_id)
    (folder / "curves.png").write_bytes(b"png")  # after the end (a sweep's best curves): MLflow's own way
    tracker.log_artifacts(run_id, folder)
    monkeypatch.undo()
    assert tracker.read_run(run_id).artifacts == ["curves.png", "history.json"]

def test_epoch_logger_sends_only_its_keys_once_each_epoch(make_config):
    result = train(make_config(train={"max_epochs": 4}))

    class Sink(NoOpTracker):
        def __init__(self):
            super().__init__()
            self.rows = []

        def log_metrics(self, run_id, rows):
            self.rows += list(rows)

    sink = Sink()
    logger = EpochLogger(sink, "run", keys=CURVE_METRICS)
    logger.flush(result.history)
    logger.flush(result.history)  # nothing new: nothing sent twice
    assert sorted({key for key, _, _ in sink.rows}) == sorted(CURVE_METRICS)
    assert sorted((key, step) for key, _, step in sink.rows) == sorted((k, e) for k in CURVE_METRICS for e in range(1, 5))
    assert {(k, s): v for k, v, s in sink.rows}[("val_loss", 4)] == result.history.val_loss[3]
    assert len(epoch_metrics(result.history)) == 4 * len(EPOCH_METRICS)  # a train run's default: every series


@given(st.integers(0, 3000), st.integers(0, 350), st.integers(0, 350))
def test_batch_slices_cover_everything_within_limits(n_metrics, n_params, n_tags):
    slices = batch_slices(n_metrics, n_params, n_tags)
    for kind, n in zip(range(3), (n_metrics, n_params, n_tags)):
        covered = [i for triple in slices for i in range(n)[triple[kind]]]
        assert covered == list(range(n))  # every item once, in order
    for m, p, t in slices:
        sizes = (m.stop - m.start, p.stop - p.start, t.stop - t.start)
        assert sizes[0] <= 1000 and sizes[1] <= 100 and sizes[2] <= 100 and sum(sizes) <= 1000
        assert sum(sizes) > 0
    def ceil(a, b):
        return -(-a // b)

    # at least what the tightest limit needs; at most what 800 metrics per request need
    # (params and tags take at most 200 of a request's 1000 items)
    lower = max(ceil(n_metrics, 1000), ceil(n_params, 100), ceil(n_tags, 100), ceil(n_metrics + n_params + n_tags, 1000))
    upper = max(ceil(n_params, 100), ceil(n_tags, 100), ceil(n_metrics, 800))
    assert lower <= len(slices) <= upper


@given(st.lists(st.sampled_from(["overfitting", "lr_too_high", "flat_minimum"]), max_size=5))
def test_findings_tags_name_each_mode_once(modes):
    tags = findings_tags([{"mode": m, "confidence": 0.5} for m in modes])
    unique = list(dict.fromkeys(modes))
    assert tags["bpexp.diagnosis"] == (",".join(unique) if unique else "none")
    assert {k for k in tags if k.startswith("bpexp.diagnosis.")} == {f"bpexp.diagnosis.{m}" for m in unique}


# -------------------------------------------------------------------- fail fast


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends


@pytest.mark.parametrize(
    "uri",
    [
        lambda: f"http://127.0.0.1:{_closed_port()}",
        lambda: f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nothing",
    ],
    ids=["http", "postgresql"],
)
def test_unreachable_uri_fails_within_seconds(uri):
    uri = uri()
    started = time.monotonic()
    with pytest.raises(ServiceError, match="cannot be reached"):
        make_tracker(uri, "x").check()
    assert time.monotonic() - started < 5


def test_sqlite_in_unwritable_place_is_a_service_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ServiceError, match="cannot create"):
        probe_tracking_uri(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")


def test_no_track_never_imports_mlflow():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bpexp.cli import main\n"
        "try:\n"
        "    main(['train', '--dataset', 'iris', '--max-epochs', '2', '--no-track', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------- bpexp train


def test_train_json_carries_the_run_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from bpexp.cli import cli

    result = CliRunner().invoke(cli, ["train", "--dataset", "iris", "--max-epochs", "4", "--experiment", "cli", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert (tmp_path / "mlflow.db").exists()  # the embedded default store, in the working directory
    record = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "cli").read_run(payload["run_id"])
    assert record.status == "FINISHED"
    assert len(record.metrics["train_loss"]) == payload["epochs"] == 4
    assert record.tags["bpexp.stop_reason"] == payload["stop_reason"]
    assert record.tags["bpexp.kind"] == "train"


def test_train_no_track_has_no_run_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from bpexp.cli import cli

    result = CliRunner().invoke(cli, ["train", "--dataset", "iris", "--max-epochs", "2", "--no-track", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"] is None
    assert not (tmp_path / "mlflow.db").exists()


def test_train_with_unreachable_server_exits_2_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from bpexp.cli import cli

    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--max-epochs", "500", "--tracking-uri", uri, "--json"])
    assert result.exit_code == 2
    assert "cannot be reached" in result.stderr and uri in result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 5  # 500 digits epochs would take longer: nothing trained


def test_experiment_name_comes_from_the_spec(tmp_path, monkeypatch, mlflow_sqlite_uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_sqlite_uri)  # the environment overrides the default
    spec = tmp_path / "spec.yaml"
    spec.write_text("experiment: from-spec\ndata: {name: iris}\ntrain: {max_epochs: 2}\n")
    from bpexp.cli import cli

    result = CliRunner().invoke(cli, ["train", "--spec", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    tracker = MlflowTracker(mlflow_sqlite_uri, "from-spec")
    assert tracker.read_run(json.loads(result.stdout)["run_id"]).status == "FINISHED"
    assert not math.isnan(float(tracker.experiment_id))


# ------------------------------------------------------------------- bpexp lr-find


def test_lr_find_is_logged_as_its_own_run(tmp_path, monkeypatch, mlflow_sqlite_uri):
    monkeypatch.chdir(tmp_path)
    from bpexp.cli import cli

    result = CliRunner().invoke(
        cli,
        ["lr-find", "--dataset", "iris", "--iterations", "60", "--no-plot", "--tracking-uri", mlflow_sqlite_uri,
         "--experiment", "lrf", "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    record = MlflowTracker(mlflow_sqlite_uri, "lrf").read_run(payload["run_id"])
    assert record.status == "FINISHED"
    assert record.tags["bpexp.kind"] == "lr_find"
    steps = [s for s, _ in record.metrics["lr_find.lr"]]
    assert steps == list(range(payload["iterations"]))
    assert [v for _, v in record.metrics["lr_find.lr"]] == pytest.approx([v for v in payload["lrs"]])
    for name, suggestion in payload["suggestions"].items():
        if suggestion["lr"] is not None:
            assert float(record.params[f"suggestion.{name}"]) == pytest.approx(suggestion["lr"])
            assert record.tags[f"bpexp.suggestion.{name}"] == suggestion["reason"]
    assert {"lr_find.json", "lr_find.png"} <= set(record.artifacts)
