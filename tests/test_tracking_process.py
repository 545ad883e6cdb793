"""ProcessTracker: every call goes to a child process that owns the MLflow store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from bpexp.errors import ServiceError
from bpexp.tracking import TAG_PARENT, make_tracker
from bpexp.tracking_process import PENDING_PREFIX, ProcessTracker


def test_writes_go_through_the_child_in_order_and_read_back(mlflow_sqlite_uri, tmp_path):
    tracker = make_tracker(mlflow_sqlite_uri, "proc", process=True)
    assert isinstance(tracker, ProcessTracker) and tracker.asynchronous
    tracker.check()
    parent = tracker.start_run("parent")
    child = tracker.start_run("child", parent_run_id=parent, tags={"bpexp.kind": "trial"})
    assert parent.startswith(PENDING_PREFIX) and child.startswith(PENDING_PREFIX)
    tracker.log_batch(child, metrics=[("loss", 1.0 / step, step) for step in range(1, 1501)], params={"lr": 0.1},
                      tags={"bpexp.stop_reason": "max_epochs"})
    folder = tmp_path / "artifacts"
    (folder / "sub").mkdir(parents=True)
    np.savez(folder / "weights.npz", w=np.arange(6.0))
    (folder / "sub" / "note.txt").write_text("kept")
    tracker.log_artifacts(child, folder)
    for path in sorted(folder.rglob("*"), reverse=True):  # the caller may delete its folder at once
        path.unlink() if path.is_file() else path.rmdir()
    tracker.end_run(child, "FINISHED")
    parent_id, child_id = tracker.resolve(parent), tracker.resolve(child)
    tracker.close()

    client = MlflowClient(mlflow_sqlite_uri)
    run = client.get_run(child_id)
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.1"
    assert run.data.tags[TAG_PARENT] == parent_id and run.data.tags["bpexp.stop_reason"] == "max_epochs"
    assert len(client.get_metric_history(child_id, "loss")) == 1500  # past one batch's 1000
    local = Path(client.download_artifacts(child_id, "", str(tmp_path / "dl")))
    assert (local / "sub" / "note.txt").read_text() == "kept"
    with np.load(local / "weights.npz", allow_pickle=False) as archive:
        assert archive["w"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert client.get_run(parent_id).info.status == "RUNNING"


def test_reads_wait_for_the_child_and_figures_are_drawn_there(mlflow_sqlite_uri, tmp_path):
    from bpexp.config import config_from_dict
    from bpexp.data import load_dataset
    from bpexp.train import train

    config = config_from_dict({"data": {"name": "iris"}, "train": {"max_epochs": 3}})
    history = train(config, load_dataset(config.data, config.seed)).history
    tracker = ProcessTracker(mlflow_sqlite_uri, "proc-read")
    tracker.check()
    run = tracker.start_run("r", tags={"bpexp.kind": "trial", "optuna.study_name": "s"})
    tracker.log_figure(run, "bpexp.tracking:draw_curves", history, "plots/curves.png")
    assert tracker.run_status(run) == "RUNNING"
    assert [run_id for run_id, _ in tracker.find_runs({"optuna.study_name": "s"})] == [tracker.resolve(run)]
    tracker.close()
    client = MlflowClient(mlflow_sqlite_uri)
    png = Path(client.download_artifacts(tracker.resolve(run), "plots/curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_write_is_reported_by_flush_and_the_child_keeps_serving(mlflow_sqlite_uri, capfd):
    tracker = ProcessTracker(mlflow_sqlite_uri, "proc-fail")
    tracker.check()
    tracker.log_batch("0123456789abcdef0123456789abcdef", params={"x": 1})  # no such run
    with pytest.raises(ServiceError, match="log_batch failed"):
        tracker.flush()
    run = tracker.start_run("after")  # the child is still there
    assert len(tracker.resolve(run)) == 32
    tracker.flush()  # the error was reported once
    tracker.close()
    assert "bpexp: warning: tracking: log_batch failed" in capfd.readouterr().err


def test_an_unreachable_store_fails_in_check_before_any_child(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tracker = ProcessTracker(f"sqlite:///{blocker}/sub/mlflow.db", "x")
    started = time.perf_counter()
    with pytest.raises(ServiceError, match="cannot create"):
        tracker.check()
    assert time.perf_counter() - started < 3 and tracker._proc is None
    tracker.close()  # nothing to close: no error


def test_pending_ids_resolve_to_themselves_on_a_synchronous_tracker(mlflow_sqlite_uri):
    tracker = make_tracker(mlflow_sqlite_uri, "sync")
    tracker.check()
    run = tracker.start_run("s")
    assert not tracker.asynchronous and tracker.resolve(run) == run == tracker.resolved(run)
    tracker.end_run(run)


def test_other_processes_write_through_the_same_child(mlflow_sqlite_uri, tmp_path):
    import subprocess
    import sys

    owner = ProcessTracker(mlflow_sqlite_uri, "proc-shared")
    owner.check()
    spec = owner.worker_spec()
    assert spec["process"] and Path(spec["connect"]).name == "socket"
    parent = owner.resolve(owner.start_run("parent"))
    # a worker process on this machine: its own pending ids, the owner's child and store
    script = (
        "import sys\n"
        "from bpexp.tracking import make_tracker\n"
        "uri, address, parent = sys.argv[1:]\n"
        "t = make_tracker(uri, 'proc-shared', process=True, connect=address)\n"
        "runs = [t.start_run(f'w{i}', parent_run_id=parent) for i in range(3)]\n"
        "for i, run in enumerate(runs):\n"
        "    t.log_batch(run, metrics=[('loss', 1.0, 1)], params={'i': i})\n"
        "    t.end_run(run, 'FINISHED')\n"
        "print(' '.join(t.resolve(run) for run in runs))\n"
        "t.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, mlflow_sqlite_uri, spec["connect"], parent],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    worker_runs = done.stdout.split()
    mine = owner.start_run("after the worker hung up")  # the child still serves its owner
    owner.end_run(mine, "FINISHED")
    mine = owner.resolve(mine)
    folder = Path(spec["connect"]).parent
    owner.close()
    assert not folder.exists()  # the socket's folder goes with the child

    client = MlflowClient(mlflow_sqlite_uri)
    for i, run_id in enumerate(worker_runs):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["i"] == str(i)
        assert run.data.tags[TAG_PARENT] == parent
    assert client.get_run(mine).info.status == "FINISHED"
    assert len(set(worker_runs) | {parent, mine}) == 5


def test_a_worker_refuses_a_child_that_writes_elsewhere(mlflow_sqlite_uri, tmp_path):
    owner = ProcessTracker(mlflow_sqlite_uri, "proc-owner")
    owner.check()
    other = ProcessTracker(mlflow_sqlite_uri, "another-experiment", connect=owner.worker_spec()["connect"])
    other.check()
    with pytest.raises(ServiceError, match="proc-owner"):
        other.flush()  # its "open" was refused
    other.close()
    owner.close()


def test_connecting_to_nothing_fails_with_a_clear_error(tmp_path, monkeypatch):
    import bpexp.tracking_process as tp

    monkeypatch.setattr(tp, "CONNECT_SECONDS", 0.2)
    tracker = ProcessTracker(f"sqlite:///{tmp_path}/m.db", "x", connect=str(tmp_path / "no-socket"))
    with pytest.raises(ServiceError, match="does not answer"):
        tracker.check()


def test_curves_drawn_ahead_are_stored_as_drawn_and_only_for_their_run_and_title(mlflow_sqlite_uri, tmp_path, two_iris_histories):
    from bpexp.tracking import curves_png, write_run_artifacts

    recorded, other = two_iris_histories
    tracker = ProcessTracker(mlflow_sqlite_uri, "proc-curves")
    tracker.check()
    parent = tracker.start_run("parent")
    runs = [tracker.start_run(f"r{i}", parent_run_id=parent) for i in range(2)]
    for run in runs:
        tracker.log_artifacts(run, write_run_artifacts(tmp_path / run, recorded, curves=False))
    tracker.prepare_curves(runs[0], other, "t")  # drawn ahead from another history, to tell them apart
    tracker.log_run_curves(runs[0], "best_trial_0", "t", also=[parent])
    tracker.prepare_curves(runs[1], other, "t")
    tracker.log_run_curves(runs[1], "best_trial_1", "another title", also=[parent])  # no match: drawn from history.json
    ids = [tracker.resolve(run) for run in [parent, *runs]]
    tracker.close()

    client = MlflowClient(mlflow_sqlite_uri)
    read = lambda run_id, path: Path(client.download_artifacts(run_id, path, str(tmp_path / "dl" / run_id))).read_bytes()  # noqa: E731
    assert read(ids[1], "curves.png") == read(ids[0], "best_trial_0/curves.png") == curves_png(other, "t")
    assert read(ids[2], "curves.png") == curves_png(recorded, "another title") != curves_png(other, "another title")


def test_curves_drawn_ahead_from_the_stored_history_once_per_run_and_title(mlflow_sqlite_uri, tmp_path, two_iris_histories):
    # a worker out of trials asks for another worker's best by run id: the child reads its
    # history.json back; a second request for the same run and title draws nothing new
    from bpexp.tracking import curves_png, write_run_artifacts

    recorded, other = two_iris_histories
    tracker = ProcessTracker(mlflow_sqlite_uri, "proc-curves-stored")
    tracker.check()
    parent = tracker.start_run("parent")
    stored, bare = tracker.start_run("stored", parent_run_id=parent), tracker.start_run("bare", parent_run_id=parent)
    tracker.log_artifacts(stored, write_run_artifacts(tmp_path / "stored", recorded, curves=False))
    tracker.prepare_curves(bare, None, "v")  # no history.json: nothing drawn, no error
    tracker.prepare_curves(stored, None, "u")  # drawn from the stored history
    tracker.prepare_curves(stored, other, "u")  # the same run and title: kept as first drawn
    tracker.log_run_curves(stored, "best_trial_0", "u", also=[parent])
    tracker.flush()
    ids = [tracker.resolve(run) for run in (parent, stored)]
    tracker.close()

    client = MlflowClient(mlflow_sqlite_uri)
    read = lambda run_id, path: Path(client.download_artifacts(run_id, path, str(tmp_path / "dl" / run_id))).read_bytes()  # noqa: E731
    assert read(ids[0], "best_trial_0/curves.png") == read(ids[1], "curves.png") == curves_png(recorded, "u") != curves_png(other, "u")


def test_the_socket_folder_goes_even_when_the_owner_is_killed(mlflow_sqlite_uri):
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from bpexp.tracking_process import ProcessTracker\n"
        "t = ProcessTracker(sys.argv[1], 'proc-killed')\n"
        "t.check()\n"
        "print(t.worker_spec()['connect'], flush=True)\n"
        "t.resolve(t.start_run('r'))\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, mlflow_sqlite_uri], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9
    folder = Path(done.stdout.strip()).parent
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:  # the orphaned child reads end-of-file, then cleans up
        time.sleep(0.1)
    assert not folder.exists()
