"""``bpexp ui``: the MLflow UI over bpexp's tracking store, on 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import click

from bpexp.errors import ServiceError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_command(uri: str, host: str, port: int, artifacts: str | None, auth: bool) -> list[str]:
    """The ``mlflow server`` command line that serves ``uri`` on ``host:port``."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifacts:
        command += ["--artifacts-destination", artifacts]
    if auth:
        command += ["--app-name", "basic-auth"]
    if not is_loopback(host):
        # MLflow refuses Host headers it does not know (403 "Invalid Host header"); name this one.
        command += ["--allowed-hosts", f"{host},{host}:{port},localhost:*,127.0.0.1:*"]
    return command


def wait_for_health(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``url``/health until it answers 200.

    Raises:
        ServiceError: when the server exits first or does not answer in ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"mlflow server exited with code {process.returncode} before it answered at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServiceError(f"mlflow server did not answer at {url}/health within {timeout:.0f} s")


class _Stop(BaseException):
    """SIGTERM arrived: leave the wait and stop the server."""


def _raise_stop(signum, frame) -> None:
    raise _Stop()


@click.command("ui")
@click.option("--tracking-uri", default=None, help="Backend store to show; default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; anything but loopback exposes the runs.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--artifacts", default=None, help="Where uploaded artifacts go (mlflow's --artifacts-destination).")
@click.option("--auth", is_flag=True, help="Turn on MLflow's basic-auth app (needs mlflow[auth] and its environment).")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the server to answer.")
def ui_command(tracking_uri: str | None, host: str, port: int, artifacts: str | None, auth: bool, timeout: float) -> None:
    """Start the MLflow UI over bpexp's runs and print its address.

    Binds to 127.0.0.1 by default, so only this machine sees the runs. Another
    --host exposes them to the network: bpexp warns unless --auth is on. Stop it
    with Ctrl-C.

    \b
    Examples:
      bpexp ui                                   the embedded store in this folder
      bpexp ui --tracking-uri postgresql+psycopg://user@db/bpexp --port 5001
    """
    from bpexp.tracking import probe_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise ServiceError(f"{uri} is already a tracking server: open it in a browser instead of starting another")
    if not is_loopback(host) and not auth:
        click.echo(
            f"bpexp: warning: serving on {host} without --auth: anyone who can reach port {port} reads and edits every run",
            err=True,
        )
    probe_tracking_uri(uri)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown_host}:{port}"
    # SIGTERM, even while the server is still starting, must stop the server too
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    process: subprocess.Popen | None = None
    try:
        # the server's own logs go to stderr; stdout carries only the address line
        process = subprocess.Popen(server_command(uri, host, port, artifacts, auth), env=env, stdout=sys.stderr)
        wait_for_health(url, process, timeout)
        click.echo(f"MLflow UI for {uri}: {url}/#/experiments  (Ctrl-C stops it)")
        sys.stdout.flush()
        process.wait()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process is not None and process.poll() is None:
            process.terminate()  # mlflow server stops its uvicorn workers on SIGTERM
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
