"""Shared fixtures. Tests mirror the package: tests/test_<module>.py."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import settings

# CI replays a fixed sequence of examples (the same every run), so a submission's result
# does not depend on which random examples a run happened to draw; locally they vary.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from bpexp.config import config_from_dict
from bpexp.data import load_dataset


@pytest.fixture(scope="session")
def digits64():
    """The digits dataset at float64, seed 0, with the default split."""
    cfg = config_from_dict({"data": {"name": "digits"}, "model": {"dtype": "float64"}})
    return load_dataset(cfg.data, seed=0, dtype="float64")


@pytest.fixture(scope="session")
def digits32():
    """The digits dataset at float32, seed 0, with the default split."""
    cfg = config_from_dict({"data": {"name": "digits"}})
    return load_dataset(cfg.data, seed=0, dtype="float32")


@pytest.fixture
def make_config():
    """Build a validated ExperimentConfig from nested keyword sections."""

    def _make(**sections):
        return config_from_dict(sections)

    return _make


@pytest.fixture(scope="session")
def two_iris_histories():
    """Two short iris trainings' Histories that differ (seeds 0 and 1): a picture drawn from one is not the other's."""
    from bpexp.config import config_from_dict
    from bpexp.data import load_dataset
    from bpexp.train import train

    config = config_from_dict({"data": {"name": "iris"}, "train": {"max_epochs": 4}})
    first = train(config, load_dataset(config.data, config.seed)).history
    second = train(config.model_copy(update={"seed": 1}), load_dataset(config.data, 1)).history
    return first, second


@pytest.fixture
def rng():
    """A seeded numpy Generator."""
    return np.random.default_rng(12345)


# ------------------------------------------------------------------ tracking and storage services


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory):
    # MLflow migrates a new SQLite database in 1-3 s; do it once and copy the file per test.
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no traffic beyond 127.0.0.1
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_sqlite_uri(tmp_path, _mlflow_template_db):
    """A fresh, already migrated MLflow SQLite tracking URI in the test's tmp folder (artifacts beside it)."""
    import shutil

    shutil.copyfile(_mlflow_template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(scope="session")
def pg_databases():
    """A factory of fresh PostgreSQL databases on 127.0.0.1:5432 (trust auth, user postgres).

    ``pg_databases("optuna")`` returns a ``postgresql+psycopg://`` URL of a new empty
    database ``bpexp_test_<random>_optuna``; every database made is dropped at the end
    of the session. Skips when no server answers there.
    """
    import uuid

    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server on 127.0.0.1:5432 ({exc})")
    token = uuid.uuid4().hex[:8]
    made: list[str] = []

    def make(suffix: str = "db") -> str:
        name = f"bpexp_test_{token}_{suffix}_{len(made)}"
        admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{PG_SERVER}/{name}"

    yield make
    for name in made:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def mlflow_pg_uri(pg_databases):
    """A PostgreSQL MLflow backend store, migrated once per session (MLflow's schema takes seconds to create)."""
    import os

    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = pg_databases("mlflow")
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@contextlib.contextmanager
def _mlflow_server_process(backend: str, root, timeout: float):
    """Run ``mlflow server`` over ``backend`` on 127.0.0.1 and a free port until the block ends.

    Waits for /health up to ``timeout`` seconds (MLflow migrates an empty store first),
    yields (uri, process), and stops the server's whole process group afterwards.
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", backend,
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server over {backend.split(':', 1)[0]} did not answer /health within {timeout:.0f} s")
            time.sleep(0.5)
        yield uri, proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 and a free port; yields its http:// URI.

    Backed by a SQLite file and an artifact folder in a session tmp folder; waited for
    through /health (up to 90 s on a fresh database) and terminated at the end.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    with _mlflow_server_process(f"sqlite:///{root / 'server.db'}", root, timeout=90) as (uri, _):
        yield uri


@pytest.fixture(scope="session")
def report_sweep(digits32):
    """A SweepRecord of 20 real, diagnosed digits runs and a range test (see tests/report_helpers.py).

    λ from 1e-5 to 300 (constant schedule), five other schedules and four stop
    thresholds at λ = 0.3. About 3 s on one core.
    """
    from report_helpers import build_real_sweep

    return build_real_sweep(digits32)


# ------------------------------------------------------------------ an mlflow server on PostgreSQL



@pytest.fixture(scope="module")
def mlflow_pg_server(pg_databases, tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1, its backend store a fresh PostgreSQL database; one per test module.

    Yields a namespace: ``uri`` (http://127.0.0.1:<port>), ``backend`` (the
    ``postgresql+psycopg://`` URL of its database, dropped at the end of the session),
    ``root`` (its folder: artifacts/, server.log) and ``proc``. Waited for through
    /health (up to 120 s: MLflow migrates an empty PostgreSQL database first).
    """
    import types

    backend = pg_databases("mlflow")
    root = tmp_path_factory.mktemp("mlflow-pg-server")
    with _mlflow_server_process(backend, root, timeout=120) as (uri, proc):
        yield types.SimpleNamespace(uri=uri, backend=backend, root=root, proc=proc)
