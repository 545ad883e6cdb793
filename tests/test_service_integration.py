"""The batch against real services: an ``mlflow server`` on PostgreSQL, read back over its REST API
and shown by its UI in headless Chromium; and the faults a service can cause.

One server for the module (tests/conftest.py: mlflow_pg_server), on a fresh PostgreSQL
database; the batch's ledger and studies go in a second fresh database (``--storage``):
MLflow and Optuna both keep an ``alembic_version`` table, so they cannot share one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from bpexp.batch.ledger import Ledger
from bpexp.cli import cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
IRIS = {"data": {"name": "iris"}, "optim": {"lr": 0.1}, "train": {"max_epochs": 3}}
BATCH = {
    "name": "nightly-it",
    "experiment": "batch-it",
    "workers": 2,
    "experiments": [
        {"name": "iris-train", "kind": "train", "spec": IRIS},
        {"name": "iris-range", "kind": "lr_find", "spec": IRIS, "iterations": 40},
        {
            "name": "iris-sweep",
            "kind": "sweep",
            "report": True,
            "spec": {
                **IRIS,
                "sweep": {"n_trials": 4, "sampler": "random", "pruner": "none",
                          "space": {"optim.lr": {"low": 0.01, "high": 1.0, "log": True}}},
            },
        },
    ],
}


# ---------------------------------------------------------------------- REST helpers


def rest_get(base: str, route: str, **query) -> bytes:
    with urllib.request.urlopen(f"{base}{route}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return response.read()


def rest_post(base: str, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{route}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def experiment_id(base: str, name: str) -> str:
    return json.loads(rest_get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=name))["experiment"]["experiment_id"]


def search_runs(base: str, exp_id: str, filter_string: str = "") -> list[dict]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [exp_id], "filter": filter_string, "max_results": 500}
        if token:
            body["page_token"] = token
        page = rest_post(base, "/api/2.0/mlflow/runs/search", body)
        runs.extend(page.get("runs", []))
        token = page.get("next_page_token")
        if not token:
            return runs


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def bpexp(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BPEXP_RUN_TAGS", "MLFLOW_TRACKING_URI")}
    return subprocess.run([sys.executable, "-m", "bpexp.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------- the batch


@pytest.fixture(scope="module")
def batch_run(mlflow_pg_server, pg_databases, tmp_path_factory):
    """``bpexp batch run`` of BATCH (two sweep workers) against the server; its result and where things are."""
    storage = pg_databases("storage")
    folder = tmp_path_factory.mktemp("batch-it")
    (folder / "b.yaml").write_text(yaml.safe_dump(BATCH, sort_keys=False))
    done = bpexp("batch", "run", "b.yaml", "--tracking-uri", mlflow_pg_server.uri, "--storage", storage, "--json", cwd=folder)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    return SimpleNamespace(payload=payload, stderr=done.stderr, storage=storage, folder=folder, base=mlflow_pg_server.uri)


def test_every_run_of_the_batch_reads_back_over_rest_with_its_tags_and_parent(batch_run):
    base, payload = batch_run.base, batch_run.payload
    assert payload["status"] == "finished" and "Traceback" not in batch_run.stderr
    batch_id = payload["batch_run_id"]
    exp_id = experiment_id(base, "batch-it")
    runs = {r["info"]["run_id"]: r for r in search_runs(base, exp_id, f"tags.`bpexp.batch_run` = '{batch_id}'")}
    assert len(runs) == len(search_runs(base, exp_id))  # the filter the UI can use finds every run of the batch

    own = runs.pop(batch_id)
    assert own["info"]["run_name"] == "batch nightly-it" and own["info"]["status"] == "FINISHED"
    assert tags_of(own)["bpexp.kind"] == "batch" and tags_of(own)["bpexp.batch"] == "nightly-it"
    by_name = {e["name"]: e for e in payload["experiments"]}
    sweep_parent = by_name["iris-sweep"]["run_id"]
    kinds = {}
    for run_id, run in runs.items():
        tags = tags_of(run)
        kinds[run_id] = tags["bpexp.kind"]
        assert tags["bpexp.batch"] == "nightly-it" and tags["bpexp.batch_run"] == batch_id
        assert tags["bpexp.batch_experiment"] in by_name
        parent = sweep_parent if tags["bpexp.kind"] == "trial" else batch_id
        assert tags["mlflow.parentRunId"] == parent, run["info"]["run_name"]
        assert run["info"]["status"] == "FINISHED", run["info"]["run_name"]
    assert sorted(kinds.values()) == ["lr_find", "sweep", "train", "trial", "trial", "trial", "trial"]
    assert kinds[by_name["iris-train"]["run_id"]] == "train" and kinds[by_name["iris-range"]["run_id"]] == "lr_find"

    # the sweep's report and the batch's summary are artifacts, served by the server
    listed = json.loads(rest_get(base, "/api/2.0/mlflow/artifacts/list", run_id=sweep_parent, path="report"))
    assert {"report/report.html", "report/report.md"} <= {f["path"] for f in listed["files"]}
    html = rest_get(base, "/get-artifact", path="report/report.html", run_uuid=sweep_parent).decode()
    assert html.lstrip().startswith("<!DOCTYPE html>") and by_name["iris-sweep"]["study_name"] in html
    summary = json.loads(rest_get(base, "/get-artifact", path="batch_summary.json", run_uuid=batch_id))
    assert summary["status"] == "finished" and summary["batch_run_id"] == batch_id


def test_the_ledger_and_the_studies_live_in_the_storage_database(batch_run):
    import optuna

    payload = batch_run.payload
    ledger = Ledger(batch_run.storage)
    row = ledger.get_run(payload["batch_run_id"])
    ledger.dispose()
    assert row.status == "finished" and row.trigger == "manual"
    assert [(e.name, e.state, e.run_id) for e in row.experiments] == [(e["name"], "finished", e["run_id"]) for e in payload["experiments"]]
    study_name = next(e["study_name"] for e in payload["experiments"] if e["kind"] == "sweep")
    study = optuna.load_study(study_name=study_name, storage=batch_run.storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_the_mlflow_ui_shows_the_batch_and_its_nested_runs_in_chromium(batch_run):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium (.ci/run installs Debian's chromium)")
    base, payload = batch_run.base, batch_run.payload
    exp_id = experiment_id(base, "batch-it")
    study_name = next(e["study_name"] for e in payload["experiments"] if e["kind"] == "sweep")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"{base}/#/experiments/{exp_id}/runs")  # not /#/experiments/<id>: that page shows traces
            page.get_by_text("batch nightly-it").first.wait_for(timeout=60_000)
            names = page.locator("[role=gridcell][col-id='attributes.`Run Name`']")
            assert "iris-train" not in page.content()  # children are collapsed under the batch's row

            def expand(row_text: str, child_text: str) -> None:
                names.filter(has_text=row_text).first.locator("button").first.click()
                page.get_by_text(child_text).first.wait_for(timeout=30_000)

            expand("batch nightly-it", "iris-train")
            expand(study_name, f"{study_name}-trial-0")
            page.screenshot(path=str(ARTIFACTS / "batch-mlflow-ui.png"), full_page=True)
            shown = names.all_inner_texts()
        finally:
            browser.close()
    text = "\n".join(shown)
    for name in ["batch nightly-it", "iris-train", "iris-range", study_name] + [f"{study_name}-trial-{i}" for i in range(4)]:
        assert name in text, (name, shown)


# ---------------------------------------------------------------------- faults


class Proxy:
    """A TCP forwarder on 127.0.0.1 to the tracking server; :meth:`stop` makes the server vanish for its clients."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone leaves it listening
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


def test_a_tracking_server_stopping_mid_batch_fails_the_rest_clearly_and_loses_no_finished_run(mlflow_pg_server, pg_databases, tmp_path):
    storage = pg_databases("faults")
    port = int(mlflow_pg_server.uri.rsplit(":", 1)[1])
    proxy = Proxy(port)
    slow = {"data": {"name": "digits"}, "model": {"kind": "mlp", "hidden": [64]}, "train": {"max_epochs": 60}}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump({"name": "faults", "experiments": [
        {"name": "before", "kind": "train", "spec": IRIS},
        {"name": "during", "kind": "train", "spec": slow},
        {"name": "after", "kind": "train", "spec": IRIS},
    ]}))
    env = {k: v for k, v in os.environ.items() if k != "BPEXP_RUN_TAGS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpexp.cli", "batch", "run", "f.yaml", "--tracking-uri", f"http://127.0.0.1:{proxy.port}",
         "--storage", storage, "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ledger = Ledger(storage)

    def first_finished() -> bool:
        try:
            runs = ledger.list_runs("faults")
        except Exception:  # the tables do not exist yet
            return False
        return bool(runs) and runs[0].experiments[0].state == "finished"

    deadline = time.monotonic() + 120
    while not first_finished():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proxy.stop()  # the server is gone for the batch from now on
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    payload = json.loads(out)
    states = {e["name"]: e for e in payload["experiments"]}
    assert states["before"]["state"] == "finished" and states["after"]["state"] == "failed"
    assert "cannot be reached" in states["after"]["error"] or "failed" in states["after"]["error"], states["after"]
    assert "could not be closed" in payload["message"]
    assert f"FAILED: tracking store http://127.0.0.1:{proxy.port}" in err  # said once per experiment, in words

    # nothing finished is lost: the server (reached directly) holds every run the batch finished
    exp_id = experiment_id(mlflow_pg_server.uri, "faults")
    runs = {r["info"]["run_id"]: r for r in search_runs(mlflow_pg_server.uri, exp_id)}
    for experiment in payload["experiments"]:
        if experiment["state"] == "finished":
            assert runs[experiment["run_id"]]["info"]["status"] == "FINISHED", experiment
    row = ledger.get_run(payload["batch_run_id"])
    ledger.dispose()
    assert row.status == "failed" and [e.state for e in row.experiments] == [states[n]["state"] for n in ("before", "during", "after")]


def test_an_unreachable_postgresql_storage_at_start_is_exit_2_and_runs_nothing(mlflow_pg_server, tmp_path):
    (tmp_path / "u.yaml").write_text(yaml.safe_dump({"name": "unreachable", "experiments": [{"name": "t", "kind": "train", "spec": IRIS}]}))
    started = time.perf_counter()
    result = CliRunner().invoke(cli, [
        "batch", "run", str(tmp_path / "u.yaml"), "--tracking-uri", mlflow_pg_server.uri,
        "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/bpexp",
    ])
    assert result.exit_code == 2, result.output
    assert "cannot" in result.stderr and "127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert time.perf_counter() - started < 30
    exp_id = experiment_id(mlflow_pg_server.uri, "unreachable")
    assert search_runs(mlflow_pg_server.uri, exp_id) == []
