"""Tests of ``bpexp batch serve``: cron parsing, firings on schedule without overlap, a missed firing
run once on restart, and SIGTERM letting the running trials finish.

The scheduler runs as real ``bpexp batch serve`` processes with a cron firing every two
seconds (6 fields, seconds first), against MLflow's SQLite store and its job store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bpexp.batch.ledger import Ledger
from bpexp.batch.runner import study_name_for
from bpexp.batch.scheduler import parse_cron
from bpexp.cli import cli
from bpexp.errors import ConfigError

IRIS = {"data": {"name": "iris"}, "optim": {"lr": 0.1}, "train": {"max_epochs": 2}}


# ------------------------------------------------------------------------ cron


@settings(max_examples=60, deadline=None)
@given(minute=st.integers(0, 59), hour=st.integers(0, 23), second=st.integers(0, 59))
def test_a_cron_expression_fires_at_its_minute_and_hour(minute, hour, second):
    now = datetime(2030, 5, 17, 12, 30, 15, tzinfo=timezone.utc)
    five = parse_cron(f"{minute} {hour} * * *", "UTC").get_next_fire_time(None, now)
    assert (five.minute, five.hour, five.second) == (minute, hour, 0) and five > now
    six = parse_cron(f"{second} {minute} {hour} * * *", "UTC").get_next_fire_time(None, now)
    assert (six.second, six.minute, six.hour) == (second, minute, hour) and six > now


@settings(max_examples=40, deadline=None)
@given(minute=st.integers(60, 999))
def test_a_cron_field_out_of_range_is_refused(minute):
    with pytest.raises(ConfigError, match=f"--cron '{minute} 2 \\* \\* \\*' does not parse: .*{minute}"):
        parse_cron(f"{minute} 2 * * *")


@pytest.mark.parametrize("expression", ["", "bogus", "* * * *", "0 2 * * * * *", "0 25 * * *", "*/0 * * * *", "0 2 * * funday"])
def test_a_cron_expression_that_does_not_parse_is_exit_2(tmp_path, expression):
    batch = tmp_path / "b.yaml"
    batch.write_text(yaml.safe_dump({"name": "b", "experiments": [{"name": "t", "kind": "train", "spec": IRIS}]}))
    result = CliRunner().invoke(cli, ["batch", "serve", str(batch), "--cron", expression, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("bpexp: error: --cron") and "does not parse" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "m.db").exists()


def test_an_unknown_time_zone_is_refused():
    with pytest.raises(ConfigError, match="does not parse"):
        parse_cron("0 2 * * *", "Mars/Olympus_Mons")


def test_the_job_table_is_made_beside_the_ledger_even_when_another_scheduler_makes_it_at_once(tmp_path, monkeypatch):
    # APScheduler's job store creates its table by check-then-create on start: two schedulers
    # starting on one database collided ("table ... already exists"). serve makes it first, as
    # the ledger makes its own tables, looking again when another process got there between
    import sqlalchemy as sa
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    from bpexp.batch.ledger import RUNS_TABLE, make_engine
    from bpexp.batch.scheduler import JOBS_TABLE

    url = f"sqlite:///{tmp_path}/batch.db"
    ledger = Ledger(url)
    table = SQLAlchemyJobStore(engine=make_engine(url), tablename=JOBS_TABLE).jobs_t
    original = sa.Table.create
    calls: list[bool] = []

    def racing_create(self, bind, checkfirst=False):
        calls.append(checkfirst)
        if len(calls) == 1:  # another process creates it after this one's check, before its CREATE
            other = make_engine(url)
            original(self, other)
            other.dispose()
            return original(self, bind, checkfirst=False)
        return original(self, bind, checkfirst=checkfirst)

    monkeypatch.setattr(sa.Table, "create", racing_create)
    ledger.ensure_tables(table)
    assert calls == [True, True]  # the CREATE that lost the race, then a second look
    assert sa.inspect(ledger.engine).has_table(JOBS_TABLE) and sa.inspect(ledger.engine).has_table(RUNS_TABLE)
    ledger.dispose()


# ------------------------------------------------------------- serve processes


class Serve:
    """A ``bpexp batch serve`` process whose stderr lines are collected as they come."""

    def __init__(self, batch: Path, cron: str, uri: str, cwd: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("BPEXP_RUN_TAGS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bpexp.cli", "batch", "serve", str(batch), "--cron", cron, "--tracking-uri", uri, *extra],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if text in line:
                    return line
            seen = max(0, len(self.lines) - 1)
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if not any(text in line for line in self.lines):
                    break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} within {timeout} s; stderr:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("serve did not exit after SIGTERM:\n" + "\n".join(self.lines)) from None
        self._reader.join(timeout=5)
        return code

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def key_time(key: str) -> datetime:
    return datetime.fromisoformat(key.removeprefix("cron-"))


def test_serve_fires_on_schedule_never_overlaps_and_runs_a_missed_firing_once(tmp_path, mlflow_sqlite_uri):
    batch = tmp_path / "b.yaml"
    batch.write_text(yaml.safe_dump({"name": "b", "experiments": [{"name": "t", "kind": "train", "spec": IRIS}]}))
    ledger = Ledger(mlflow_sqlite_uri)
    cron = "*/2 * * * * *"

    def cron_runs():
        return [r for r in ledger.list_runs("b", limit=100) if r.key.startswith("cron-")]

    # two schedulers on one database, as on two machines: every firing is one batch run, none overlap
    first = Serve(batch, cron, mlflow_sqlite_uri, tmp_path)
    second = Serve(batch, cron, mlflow_sqlite_uri, tmp_path)
    first.wait_for("next run at", timeout=90)
    second.wait_for("next run at", timeout=90)
    both_up = datetime.now(timezone.utc)
    wait_until(lambda: len([r for r in cron_runs() if r.status == "finished" and key_time(r.key) > both_up]) >= 2, 90,
               "two finished firings while both schedulers ran")
    assert first.stop() == 0 and second.stop() == 0
    stopped = datetime.now(timezone.utc)
    for serve in (first, second):
        assert "Traceback" not in serve.text and "scheduler stopped" in serve.text, serve.text
    runs = sorted(cron_runs(), key=lambda r: r.created_at)
    assert len({r.key for r in runs}) == len(runs)
    for earlier, later in zip(runs, runs[1:]):
        assert earlier.ended_at is not None and earlier.ended_at <= later.created_at, (earlier, later)
    both = first.text + second.text
    assert "this firing is skipped" in both or "finished already" in both or "maximum number of running instances" in both

    # down for several firings; on restart the missed firings make exactly one run, keyed by
    # the latest. More than 4 s down holds at least two of the every-2-s firings, however fast
    # the new process starts
    time.sleep(5)
    third = Serve(batch, cron, mlflow_sqlite_uri, tmp_path)
    missed = third.wait_for("was missed; it runs now")
    next_line = third.wait_for("next run at")
    restarted = datetime.fromisoformat(next_line.rsplit("next run at ", 1)[1])
    wait_until(lambda: any(stopped < key_time(r.key) < restarted and r.status == "finished" for r in cron_runs()), 60, "the missed run")
    status = CliRunner().invoke(cli, ["batch", "status", str(batch), "--tracking-uri", mlflow_sqlite_uri, "--json"])
    assert third.stop() == 0 and "Traceback" not in third.text
    caught_up = [r for r in cron_runs() if stopped < key_time(r.key) < restarted]
    assert len(caught_up) == 1, (missed, [r.key for r in caught_up])
    missed_firings = [s for s in range(int(stopped.timestamp()) + 1, int(restarted.timestamp())) if s % 2 == 0]
    assert len(missed_firings) >= 2  # several firings were missed, and they made one run
    assert (restarted - key_time(caught_up[0].key)).total_seconds() <= 2  # coalesced into the latest missed firing
    schedule = json.loads(status.stdout)["schedules"]["b"]
    assert schedule["trigger"].startswith("cron[") and schedule["next_run_time"] is not None
    ledger.dispose()


def test_sigterm_lets_the_running_trials_finish_and_the_next_start_resumes_the_batch(tmp_path, mlflow_sqlite_uri):
    import optuna

    from bpexp.sweep.storage import default_storage

    # trials of about a second each on two worker processes
    spec = {
        "data": {"name": "digits"},
        "model": {"kind": "mlp", "hidden": [32]},
        "train": {"max_epochs": 40},
        "sweep": {"n_trials": 6, "sampler": "random", "pruner": "none", "curves": "none",
                  "space": {"optim.lr": {"low": 0.01, "high": 0.3, "log": True}}},
    }
    batch = tmp_path / "b.yaml"
    batch.write_text(yaml.safe_dump({"name": "b", "workers": 2, "experiments": [
        {"name": "sweep", "kind": "sweep", "spec": spec, "report": False},
        {"name": "after", "kind": "train", "spec": IRIS},
    ]}))
    serve = Serve(batch, "*/2 * * * * *", mlflow_sqlite_uri, tmp_path)
    serve.wait_for("sweep: 1/6 trials", timeout=120)
    assert serve.stop() == 0, serve.text
    assert "stopping once the running trials finish" in serve.text and "Traceback" not in serve.text

    ledger = Ledger(mlflow_sqlite_uri)
    (row,) = ledger.list_runs("b")
    assert row.status == "interrupted" and [e.state for e in row.experiments] == ["pending", "pending"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(default_storage(mlflow_sqlite_uri)))
    study_name = study_name_for("b", "sweep", row.id)
    states = [t.state.name for t in optuna.load_study(study_name=study_name, storage=storage).trials]
    assert states and set(states) == {"COMPLETE"}, states  # the running trials finished: none failed, none left running
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_sqlite_uri)
    experiment = client.get_experiment_by_name("b").experiment_id
    trials = [r for r in client.search_runs([experiment]) if r.data.tags.get("bpexp.kind") == "trial"]
    assert len(trials) == len(states) and {r.info.status for r in trials} == {"FINISHED"}

    # the next start (its cron far away) resumes the stopped run at once
    again = Serve(batch, "0 3 1 1 *", mlflow_sqlite_uri, tmp_path)
    again.wait_for(f"resuming its interrupted run {row.id}")
    again.wait_for(f"batch b: finished (run {row.id}", timeout=120)
    assert again.stop() == 0 and "Traceback" not in again.text
    assert ledger.get_run(row.id).status == "finished"
    study = optuna.load_study(study_name=study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    runs = client.search_runs([experiment])
    assert sum(r.data.tags.get("bpexp.kind") == "trial" for r in runs) == 6
    assert {r.info.status for r in runs} == {"FINISHED"}
    ledger.dispose()
