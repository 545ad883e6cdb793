"""`bpexp ui`: a real MLflow server over the embedded store, on loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from bpexp.cli import cli
from bpexp.cli.ui_cmd import is_loopback, server_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_names():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.org")


def test_server_command_names_allowed_hosts_only_off_loopback():
    local = server_command("sqlite:////x/m.db", "127.0.0.1", 5000, None, auth=False)
    assert "--allowed-hosts" not in local and "--app-name" not in local
    assert local[local.index("--host") + 1] == "127.0.0.1"
    public = server_command("sqlite:////x/m.db", "10.1.2.3", 5001, "/arts", auth=True)
    assert public[public.index("--allowed-hosts") + 1].startswith("10.1.2.3,10.1.2.3:5001")
    assert public[public.index("--app-name") + 1] == "basic-auth"
    assert public[public.index("--artifacts-destination") + 1] == "/arts"


def test_public_host_without_auth_warns_and_bad_store_exits_2():
    # port 1 on loopback refuses at once: the store check fails after the warning, before any server starts
    result = CliRunner().invoke(
        cli, ["ui", "--host", "192.0.2.1", "--tracking-uri", "postgresql+psycopg://postgres@127.0.0.1:1/none"]
    )
    assert result.exit_code == 2
    assert "without --auth" in result.stderr
    assert "bpexp: error:" in result.stderr and "Traceback" not in result.stderr


def test_http_uri_is_refused():
    result = CliRunner().invoke(cli, ["ui", "--tracking-uri", "http://127.0.0.1:9/"])
    assert result.exit_code == 2 and "already a tracking server" in result.stderr


def test_ui_serves_the_embedded_store_and_stops_on_sigterm(tmp_path):
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    train = subprocess.run(
        [sys.executable, "-m", "bpexp.cli", "train", "--max-epochs", "2", "--experiment", "ui-check", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert train.returncode == 0, train.stderr
    run_id = json.loads(train.stdout)["run_id"]
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bpexp.cli", "ui", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, line
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            experiment = json.load(response)["experiment"]
        body = json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode()
        search = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
            data=body, headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(search, timeout=10) as response:
            runs = json.load(response)["runs"]
        assert [run["info"]["run_id"] for run in runs] == [run_id]
    finally:
        server.send_signal(signal.SIGTERM)
        started = time.monotonic()
        server.wait(timeout=30)
    assert time.monotonic() - started < 30
    # the server's port is free again: nothing is left running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _processes_with(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (read from /proc)."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_sigterm_while_the_server_starts_leaves_no_server_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    port = _free_port()
    marker = f"--port {port}"
    ui = subprocess.Popen(
        [sys.executable, "-m", "bpexp.cli", "ui", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not [pid for pid in _processes_with(marker) if pid != ui.pid] and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the mlflow server process exists, long before it answers
    assert [pid for pid in _processes_with(marker) if pid != ui.pid], "the mlflow server never started"
    ui.send_signal(signal.SIGTERM)
    ui.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_with(marker) == []
