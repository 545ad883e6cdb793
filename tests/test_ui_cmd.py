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

import pytest
from click.testing import CliRunner

from bpexp.cli import cli
from bpexp.cli import ui_cmd
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



# A stand-in for `mlflow server`: a parent that starts a child, as mlflow server starts
# uvicorn. Each writes its pid to a file named after its role once it is ready; a
# "stubborn" child ignores SIGTERM.
FAKE_SERVER = """
import os, signal, subprocess, sys, time
folder, role = sys.argv[1], sys.argv[2]
if role == "parent":
    subprocess.Popen([sys.executable, __file__, folder, sys.argv[3]])
elif role == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(folder, role), "w") as f:
    f.write(str(os.getpid()))
time.sleep(300)
"""


def _fake_server(folder, child: str = "child") -> list[str]:
    script = folder / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return [sys.executable, str(script), str(folder), "parent", child]


def _wait_for_pid(path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text())


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_group(processes: list[subprocess.Popen]) -> None:
    """Leave nothing running when a test fails half-way."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_a_stop_signal_while_the_server_is_being_started_stops_it_and_its_child(tmp_path, monkeypatch):
    # SIGTERM arrives after the server process exists but before bpexp holds its Popen
    # object: it must wait for that object, then stop the server and what it started
    started: list[subprocess.Popen] = []

    def start_then_signalled(command, env):
        process = real_start(command, env)
        started.append(process)
        _wait_for_pid(tmp_path / "child")
        os.kill(os.getpid(), signal.SIGTERM)
        return process

    real_start = ui_cmd.start_server
    monkeypatch.setattr(ui_cmd, "start_server", start_then_signalled)
    monkeypatch.setattr(ui_cmd, "server_command", lambda *args: _fake_server(tmp_path))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(cli, ["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--timeout", "60"])
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGTERM) is previous
        parent, child = int((tmp_path / "parent").read_text()), int((tmp_path / "child").read_text())
        assert started[0].pid == parent and started[0].returncode is not None
        assert not _alive(parent) and not _alive(child)
    finally:
        _kill_group(started)


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_stop_server_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    process = ui_cmd.start_server(_fake_server(tmp_path, child="stubborn"), dict(os.environ))
    try:
        child = _wait_for_pid(tmp_path / "stubborn")
        parent = _wait_for_pid(tmp_path / "parent")
        ui_cmd.stop_server(process, grace=0.5)
        assert process.returncode == -signal.SIGTERM  # the parent stopped on SIGTERM
        assert not _alive(parent) and not _alive(child)  # the child only on SIGKILL
    finally:
        _kill_group([process])
