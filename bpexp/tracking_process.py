"""Tracking from a helper process, so that a sweep's MLflow writes overlap its training.

:class:`ProcessTracker` is a :class:`~bpexp.tracking.Tracker` whose calls go to a child
process (``python -m bpexp.tracking_process``) that owns the real tracker: a
:class:`~bpexp.tracking_direct.DirectSqlTracker` on a migrated SQL store, which writes
MLflow's tables without importing MLflow, else an :class:`~bpexp.tracking.MlflowTracker`
(:func:`~bpexp.tracking_direct.open_tracker`). Opening the store, creating runs and
writing them cost CPU in Python (under 1 s once, or 1.5-5 s by machine where MLflow
must be imported, then 8-25 ms by machine per 60-epoch trial run on SQLite: ``python
benchmarks/tracking_write_cost.py``) and wait on the store; in a thread they would
share the GIL with the training loop, in the child they run beside it on the other core.

- Writes are queued and return at once; they reach the store in call order.
- :meth:`ProcessTracker.start_run` returns a *pending* run id at once; any later
  call may use it. :meth:`ProcessTracker.resolve` gives the real MLflow run id
  (waiting for the child if needed); call it before storing an id anywhere.
- Reads (:meth:`run_status`, :meth:`find_runs`, ...) wait for the child's answer.
- :meth:`ProcessTracker.flush` waits until everything queued is written and
  raises the first error the child met (as :class:`~bpexp.errors.ServiceError`).

:meth:`check` only probes the URI in this process (no MLflow import), so an
unreachable store still fails within seconds and before any training; the child
then opens the store while the caller goes on. When this process dies, the child
reads end-of-file, writes what it was sent and exits.

The child also listens on a Unix socket (:attr:`ProcessTracker.address`): the worker
processes of ``bpexp sweep --workers N`` connect to it (``ProcessTracker(connect=...)``)
instead of each starting a child of its own, so the store is opened (and MLflow
imported, where needed) once per machine's sweep, not once per worker. Its calls
are served one at a time, in order per connection.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

from bpexp.errors import ServiceError
from bpexp.tracking import (
    DEFAULT_EXPERIMENT,
    MlflowTracker,
    RunRecord,
    Tracker,
    curves_png,
    probe_tracking_uri,
    resolve_tracking_uri,
)

PENDING_PREFIX = "bpexp-pending-run-"
"""Pending run ids start with this; the child maps them to the ids MLflow gives."""

CONNECT_SECONDS = 30.0
"""How long a worker waits for the tracking process's socket to appear (it is bound at the child's start)."""

MAX_WARNINGS = 3
"""The child prints this many failed writes as they happen; :meth:`ProcessTracker.flush` counts them all."""
_HEADER = struct.Struct("!I")  # each message: 4-byte big-endian length, then a pickle
_STOP = object()


def _send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    """The next message, or None at end of file."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - our own child process, over its own pipe


class ProcessTracker(Tracker):
    """A Tracker whose writes run in a child process (see the module docstring).

    Args:
        uri: a tracking URI (see :func:`bpexp.tracking.resolve_tracking_uri`).
        experiment: the MLflow experiment, created on first use.
        connect: the :attr:`address` of another ProcessTracker's child to send the calls
            to, instead of starting a child here.
    """

    asynchronous = True

    def __init__(self, uri: str | None = None, experiment: str | None = None, *, connect: str | None = None) -> None:
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.connect = connect
        self.address: str | None = None
        """The child's Unix socket, once started here (None when connected to another's, or without AF_UNIX)."""
        self._proc: subprocess.Popen | None = None
        self._socket: socket.socket | None = None
        self._folder: str | None = None
        self._rfile: BinaryIO | None = None
        self._wfile: BinaryIO | None = None
        self._outbox: queue.Queue = queue.Queue()
        self._futures: dict[int, Future] = {}
        self._pending: dict[str, Future] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._errors: list[str] = []
        self._sender: threading.Thread | None = None
        self._reader: threading.Thread | None = None

    # -- the child
    def _start(self) -> None:
        if self._wfile is not None:
            return
        if self.connect is not None:
            self._socket = _connect(self.connect)
            self._rfile, self._wfile = self._socket.makefile("rb"), self._socket.makefile("wb")
        else:
            env = dict(os.environ)
            # the child only writes: one BLAS thread, and nothing of its own on stdout
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = "1"
            command = [sys.executable, "-m", "bpexp.tracking_process"]
            if hasattr(socket, "AF_UNIX"):
                self._folder = tempfile.mkdtemp(prefix="bpexp-tracking-")  # mode 0700: this user's processes only
                self.address = os.path.join(self._folder, "socket")
                command += ["--listen", self.address]
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # its warnings reach the user's terminal
                env=env,
            )
            self._rfile, self._wfile = self._proc.stdout, self._proc.stdin
        self._sender = threading.Thread(target=self._send_loop, name="bpexp-tracking-send", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="bpexp-tracking-read", daemon=True)
        self._sender.start()
        self._reader.start()
        self._request("open", (self.uri, self.experiment), reply=False)

    def _send_loop(self) -> None:
        # a full pipe blocks this thread, never the caller's
        stream = self._wfile
        assert stream is not None
        while True:
            message = self._outbox.get()
            if message is _STOP:
                break
            try:
                _send(stream, message)
            except (BrokenPipeError, OSError):
                self._fail_all("the tracking process ended")
                return
        try:
            stream.close()
            if self._socket is not None:
                self._socket.shutdown(socket.SHUT_WR)  # the child's end of this connection reads end-of-file
        except OSError:
            pass

    def _read_loop(self) -> None:
        stream = self._rfile
        assert stream is not None
        while True:
            message = _receive(stream)
            if message is None:
                break
            number, ok, value = message
            with self._lock:
                future = self._futures.pop(number, None)
                if not ok:
                    self._errors.append(str(value))
            if future is not None:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(ServiceError(str(value)))
        self._fail_all("the tracking process ended before answering")

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(ServiceError(f"tracking store {self.uri}: {reason}"))

    def _request(self, method: str, args: tuple = (), kwargs: Mapping[str, Any] | None = None, *, reply: bool) -> Future:
        self._start()
        number = next(self._ids)
        future: Future = Future()
        with self._lock:
            # every request gets a future, so a failed write is reported even when nobody waits
            self._futures[number] = future
        self._outbox.put((number, method, args, dict(kwargs or {}), reply))
        return future

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Send a request and wait for its answer."""
        return self._request(method, args, kwargs, reply=True).result()

    def _cast(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a write; its error, if any, is raised by :meth:`flush`."""
        self._request(method, args, kwargs, reply=False)

    # -- the Tracker interface
    def check(self) -> None:
        """Probe the URI here (seconds at most, no MLflow import) and start the child.

        Raises:
            ServiceError: the store cannot be reached.
        """
        probe_tracking_uri(self.uri)
        self._start()

    def worker_spec(self) -> dict[str, Any]:
        """As :meth:`Tracker.worker_spec`, plus the socket a worker process connects to."""
        self._start()
        return {**super().worker_spec(), "connect": self.address or self.connect}

    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
        # unique across the processes that share one child
        handle = f"{PENDING_PREFIX}{os.getpid()}-{next(self._ids)}"
        self._pending[handle] = self._request("start_run", (handle, name), {"parent_run_id": parent_run_id, "tags": dict(tags or {})},
                                              reply=True)
        return handle

    def resolve(self, run_id: str) -> str:
        """The MLflow run id of ``run_id`` (a pending id waits for the child).

        Raises:
            ServiceError: the child could not create the run.
        """
        future = self._pending.get(run_id)
        return future.result() if future is not None else run_id

    def resolved(self, run_id: str) -> str | None:
        """The MLflow run id if the child has created the run by now, else None (never waits)."""
        future = self._pending.get(run_id)
        if future is None:
            return run_id
        return future.result() if future.done() and future.exception() is None else None

    def log_batch(self, run_id: str, *, metrics: Iterable[tuple[str, float, int]] = (), params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> None:
        self._cast("log_batch", run_id, metrics=list(metrics), params=dict(params or {}), tags=dict(tags or {}))

    def log_artifacts(self, run_id: str, local_dir: str | Path) -> None:
        # the caller may delete the folder as soon as this returns: send the bytes
        root = Path(local_dir)
        files = {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}
        self._cast("log_artifact_files", run_id, files)

    def log_run_curves(self, run_id: str, folder: str, title: str, also: Sequence[str] = (), *, png: bytes | None = None) -> None:
        # read back, drawn (unless drawn ahead, see prepare_curves) and stored in the child:
        # this process need not wait for the store
        self._cast("log_run_curves", run_id, folder, title, list(also), png=png)

    def prepare_curves(self, run_id: str, history: Any, title: str) -> None:
        # drawn in the child beside the training (from the stored history.json when history
        # is None); kept there for log_run_curves
        self._cast("prepare_curves", run_id, history, title)

    def log_figure(self, run_id: str, drawer: str, data: Any, path: str) -> None:
        # drawn in the child: matplotlib's import and the drawing stay off this process
        self._cast("log_figure", run_id, drawer, data, path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._cast("end_run", run_id, status)

    def reopen_run(self, run_id: str) -> None:
        self._cast("reopen_run", run_id)

    def read_run(self, run_id: str) -> RunRecord | None:
        return self._call("read_run", run_id)

    def download_artifact(self, run_id: str, path: str, dst_dir: str | Path) -> Path | None:
        found = self._call("download_artifact", run_id, path, str(dst_dir))
        return None if found is None else Path(found)

    def run_status(self, run_id: str) -> str | None:
        return self._call("run_status", run_id)

    def find_runs(self, tags: Mapping[str, str], status: str | None = None) -> list[tuple[str, dict[str, str]]]:
        return self._call("find_runs", dict(tags), status)

    def flush(self) -> None:
        """Wait until every queued call is done.

        Raises:
            ServiceError: the first error the child met since the last flush.
        """
        self._call("ping")
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ServiceError(f"tracking store {self.uri}: {errors[0]}{more}")

    def close(self) -> None:
        """Flush, then let the child exit (or, connected to another's child, hang up). Safe to call twice."""
        if self._wfile is None:
            return
        try:
            self.flush()
        finally:
            self._outbox.put(_STOP)
            if self._sender is not None:
                self._sender.join()
            if self._proc is not None:
                self._proc.wait()
            if self._reader is not None:
                self._reader.join()
            if self._socket is not None:
                self._socket.close()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
            self._proc = self._socket = self._folder = self._rfile = self._wfile = None


def _connect(address: str) -> socket.socket:
    """A connection to a tracking process's socket, waiting up to :data:`CONNECT_SECONDS` for it to be bound.

    Raises:
        ServiceError: nothing listens there.
    """
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if time.monotonic() > deadline:
                raise ServiceError(f"the sweep's tracking process does not answer at {address}: {exc}") from exc
            time.sleep(0.05)


# ------------------------------------------------------------------- the child


class _Writer:
    """The child's side: one tracker (see :func:`~bpexp.tracking_direct.open_tracker`), pending ids mapped to real ones."""

    def __init__(self) -> None:
        self.tracker: MlflowTracker | None = None
        self.ids: dict[str, str] = {}
        self.prepared: tuple[str, str, bytes] | None = None  # (run id, title, curves.png) drawn ahead

    def real(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(PENDING_PREFIX):
            if value not in self.ids:
                raise ServiceError(f"run {value} was never created (an earlier error)")
            return self.ids[value]
        return value

    def handle(self, method: str, args: tuple, kwargs: dict) -> Any:
        if method == "ping":
            return None
        if method == "open":
            if self.tracker is None:
                from bpexp.tracking_direct import open_tracker

                self.tracker = open_tracker(*args)  # MLflow itself is imported only where needed
                return None
            uri, experiment = args  # a connected process: it must want the store this child has open
            wanted = (resolve_tracking_uri(uri), experiment or DEFAULT_EXPERIMENT)
            if wanted != (self.tracker.uri, self.tracker.experiment):
                raise ServiceError(f"this tracking process writes to {self.tracker.uri} ({self.tracker.experiment}), not {wanted[0]} ({wanted[1]})")
            return None
        if self.tracker is None:
            raise ServiceError("the tracking store is not open")
        kwargs = {k: self.real(v) for k, v in kwargs.items()}
        if method == "start_run":
            handle, name = args  # the handle is the id being made, not one to look up
            run_id = self.tracker.start_run(name, **kwargs)
            self.ids[handle] = run_id
            return run_id
        args = tuple(self.real(a) for a in args)
        if method == "log_artifact_files":
            run_id, files = args
            with tempfile.TemporaryDirectory(prefix="bpexp-artifacts-") as tmp:
                for relative, data in files.items():
                    target = Path(tmp, relative)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                self.tracker.log_artifacts(run_id, tmp)
            return None
        if method == "download_artifact":
            found = self.tracker.download_artifact(*args)
            return None if found is None else str(found)
        if method == "prepare_curves":
            run_id, history, title = args
            if self.prepared is not None and self.prepared[:2] == (run_id, title):
                return None  # several workers that ran out of trials asked for the same best
            if history is None:
                history = self.tracker.stored_history(run_id)
                if history is None:
                    return None  # not written yet: the sweep's end draws it
            self.prepared = (run_id, title, curves_png(history, title))
            return None
        if method == "log_run_curves":
            run_id, folder, title, also = args
            png = kwargs.get("png")
            if png is None and self.prepared is not None and self.prepared[:2] == (run_id, title):
                png = self.prepared[2]
            return self.tracker.log_run_curves(run_id, folder, title, [self.real(other) for other in also], png=png)
        if method in ("log_batch", "log_figure", "end_run", "reopen_run", "read_run", "run_status", "find_runs"):
            return getattr(self.tracker, method)(*args, **kwargs)
        raise ServiceError(f"unknown tracking call {method!r}")


class _Server:
    """The child's loop: requests from stdin and from every socket connection, served one at a time."""

    def __init__(self) -> None:
        self.writer = _Writer()
        self.lock = threading.Lock()  # one tracker, one call at a time
        self.warned = 0
        self.connections: list[threading.Thread] = []

    def serve(self, incoming: BinaryIO, outgoing: BinaryIO) -> None:
        """Answer the requests of one stream until its end of file."""
        while True:
            message = _receive(incoming)
            if message is None:
                return
            number, method, args, kwargs, reply = message
            try:
                with self.lock:
                    value = self.writer.handle(method, args, kwargs)
            except Exception as exc:  # the store failed: report it, keep serving
                text = f"{method} failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
                with self.lock:
                    warn = not reply and self.warned < MAX_WARNINGS
                    self.warned += warn
                    last = self.warned == MAX_WARNINGS
                if warn:
                    more = "; further tracking errors are counted at the end" if last else ""
                    print(f"bpexp: warning: tracking: {text}{more}", file=sys.stderr, flush=True)
                _send(outgoing, (number, False, text))
                continue
            _send(outgoing, (number, True, value if reply else None))

    def listen(self, address: str) -> None:
        """Accept connections on the Unix socket ``address``, each served by its own thread."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        listener.listen()

        def accept() -> None:
            while True:
                connection, _ = listener.accept()
                thread = threading.Thread(target=self._serve_connection, args=(connection,), daemon=True)
                self.connections.append(thread)
                thread.start()

        threading.Thread(target=accept, name="bpexp-tracking-accept", daemon=True).start()

    def _serve_connection(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as incoming, connection.makefile("wb") as outgoing:
            try:
                self.serve(incoming, outgoing)
            except OSError:
                pass  # the connected process died: what it sent is written, nobody waits for answers


def main(argv: list[str] | None = None) -> int:
    """The child: answer requests from stdin on stdout (and on ``--listen SOCKET``) until stdin ends.

    Returns:
        The exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything else that prints must not corrupt the replies
    server = _Server()
    if args[:1] == ["--listen"]:
        server.listen(args[1])
    server.serve(stdin, stdout)
    # The owner closes its end only after its workers closed theirs; a worker that died
    # has hung up too, and one that outlives a killed owner is served to its end. Then
    # every request is answered and each write is committed as it is made: skip the
    # interpreter's teardown of MLflow and SQLAlchemy (half a second the caller waits for).
    for thread in list(server.connections):
        thread.join()
    if args[:1] == ["--listen"]:  # the owner may have been killed before removing them
        shutil.rmtree(os.path.dirname(args[1]), ignore_errors=True)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
