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
    """SIGTERM or SIGHUP arrived: leave the wait and stop the server."""


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""The signals that stop ``bpexp ui`` and its server (SIGHUP: the terminal closed)."""


class StopSignals:
    """While entered, :data:`STOP_SIGNALS` raise ``_Stop`` in the main thread, once :meth:`arm` has run.

    A signal that arrives before :meth:`arm` is held until then. Raised inside
    ``subprocess.Popen``, after the server had started but before its ``Popen`` object
    was returned, it would leave no handle to stop the server with.
    """

    def __init__(self) -> None:
        self.received = False
        self.armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = True
        if self.armed:
            raise _Stop()

    def arm(self) -> None:
        """From now on a stop signal raises at once; raises ``_Stop`` if one arrived before."""
        self.armed = True
        if self.received:
            raise _Stop()


def start_server(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` (the server; its logs on stderr) in a process group of its own, where POSIX has them.

    ``mlflow server`` runs uvicorn as a child. Signalled while it starts, before it
    forwards signals to that child, it can die and leave the child serving the port:
    :func:`stop_server` signals the whole group instead.
    """
    try:
        log = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr replaced in-process (a test runner's): the process's own
        log = 2
    return subprocess.Popen(command, env=env, stdout=log, start_new_session=os.name == "posix")


def _signal_group(process: subprocess.Popen, signum: int) -> bool:
    """Send ``signum`` to the process group :func:`start_server` made; False when none of it is left."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_server(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a server from :func:`start_server` and whatever it started: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns once the server is reaped and (on POSIX) nothing of its process group is
    left running, or ``grace`` seconds after the SIGKILL.
    """
    if os.name != "posix":
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return
    _signal_group(process, signal.SIGTERM)  # mlflow server and uvicorn both stop on SIGTERM
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reaps the server, which would otherwise count as a member still
        if not _signal_group(process, 0):
            return
        time.sleep(0.05)
    _signal_group(process, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + grace
    while _signal_group(process, 0) and time.monotonic() < deadline:
        time.sleep(0.05)


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
    # a stop signal, even while the server is still starting, must stop the server too
    process: subprocess.Popen | None = None
    with StopSignals() as stop:
        try:
            process = start_server(server_command(uri, host, port, artifacts, auth), env)
            stop.arm()
            wait_for_health(url, process, timeout)
            click.echo(f"MLflow UI for {uri}: {url}/#/experiments  (Ctrl-C stops it)")
            sys.stdout.flush()
            process.wait()
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            stop.armed = False  # a second signal must not cut the stopping short
            if process is not None:
                stop_server(process)
