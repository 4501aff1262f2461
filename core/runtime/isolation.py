"""Runner isolation: each loaded model lives in its own process, so a native crash takes only that model.

llama.cpp aborts the whole process on some malformed models. ``ProcessWorker`` has the same surface
as ``ModelWorker`` (submit / wait_loaded / stop / join) but runs the ModelWorker in a child process
and relays jobs and events over a socket pair. The child is a fresh ``python -m corral.runtime.isolation``
(forking a threaded server is unsafe, and multiprocessing's spawn re-imports the caller's __main__).
"""

from __future__ import annotations

import hmac
import itertools
import logging
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from typing import Any

from corral.errors import RunnerCrashed
from corral.hookspecs import LoadSpec, ModelInfo
from corral.runtime.worker import Event, Job, ModelWorker, WorkerUsage

log = logging.getLogger("corral.runtime.isolation")

# The parts of a Job that cross the pipe; callbacks and the cancel flag stay on their own side.
_JOB_FIELDS = [f.name for f in fields(Job) if f.name not in ("emit", "on_result", "cancelled", "on_cancel")]


@dataclass(frozen=True)
class RemoteRunner:
    """What the parent knows of a runner that lives in a child process."""

    info: ModelInfo
    pid: int


def _child_main(conn: Connection, prepare: str | None = None) -> None:
    """The runner process: load through the plugin system, then serve jobs until told to stop.
    ``prepare``: a spare's backend (empty: the best one), whose engine it imports while it waits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the server's to handle
    from corral.plugins import Plugins

    plugins = Plugins()
    if prepare is not None:
        _prepare(plugins, prepare)
    try:
        backend, spec, name, prefix_cache = _recv(conn)
    except (EOFError, OSError):  # a spare the server never needed: it has gone, and so do we
        return

    send_lock = threading.Lock()
    outbox: list[tuple[Any, ...]] = []  # this step's events, sent together by flush (owner thread only)

    def send(message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with send_lock:
            try:
                conn.send_bytes(data)
            except OSError:  # the server has gone: nobody is left to tell, and the main loop will stop
                pass

    def flush() -> None:
        if outbox:
            batch = outbox[:]
            outbox.clear()
            send(("batch", batch))

    try:
        entry = plugins.get(backend)
        worker = ModelWorker(lambda: entry.backend.load(spec), name, prefix_cache=prefix_cache, flush=flush)
        runner = worker.wait_loaded()
    except BaseException as exc:  # reported to the parent, which raises it for the request
        send(("load_error", exc))
        return
    send(("loaded", runner.info, worker.load_seconds))
    jobs: dict[int, Job] = {}
    while True:
        try:
            message = _recv(conn)
        except (EOFError, OSError):  # the server went away: nothing left to serve
            break
        kind = message[0]
        if kind == "job":
            job_id, data = message[1], message[2]

            def emit(event: Event, job_id: int = job_id) -> None:
                if event.done:
                    jobs.pop(job_id, None)
                    outbox.append((job_id, event))
                elif event == Event(text=event.text):  # most events are a token's text: send just that
                    outbox.append((job_id, event.text))
                else:
                    outbox.append((job_id, event))

            def on_result(result: Any, job_id: int = job_id) -> None:
                outbox.append((job_id, _Result(result)))

            job = Job(**data, emit=emit, on_result=on_result)
            jobs[job_id] = job
            worker.submit(job)
        elif kind == "usage":
            send(("usage", message[1], worker.usage()))
        elif kind == "cancel" and message[1] in jobs:
            jobs[message[1]].cancel()
        elif kind == "stop":
            break
    worker.stop()
    worker.join(30)


def _prepare(plugins: Any, backend: str) -> None:
    """Import ``backend``'s engine ahead of its first load, if it says how (``Backend.prepare``). A
    failure only loses the head start: the load that follows reports whatever is really wrong."""
    try:
        entry = plugins.select(backend or None)
        prepare = getattr(entry.backend, "prepare", None)
        if prepare is not None:
            prepare()
    except Exception as exc:
        log.debug("a spare runner could not prepare backend %r: %s", backend, exc)


@dataclass(frozen=True)
class _Result:
    """An embedding job's vectors, as they cross the pipe."""

    value: Any


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


Child = tuple[subprocess.Popen[bytes], Connection]


def default_transport() -> str:
    return "loopback" if sys.platform == "win32" else "socketpair"


def _start_child(transport: str, prepare: str | None = None) -> Child:
    """Start the runner process and connect to it; ``prepare``: see ``_child_main``.

    ``socketpair`` (POSIX): the child inherits its end of a socket pair as a file descriptor.
    ``loopback`` (Windows, which cannot pass a descriptor to a child): the child connects to a
    one-shot listening socket on 127.0.0.1 and proves itself with a key it read from its stdin.
    """
    command = [sys.executable, "-m", "corral.runtime.isolation"]
    tail = ["--prepare", prepare] if prepare is not None else []
    if transport == "socketpair":
        parent_sock, child_sock = socket.socketpair()
        proc = subprocess.Popen(
            [*command, str(child_sock.fileno()), *tail], pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL
        )
        child_sock.close()
        return proc, Connection(parent_sock.detach())
    key = secrets.token_hex(32)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        proc = subprocess.Popen([*command, "--connect", str(port), *tail], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(key.encode() + b"\n")
        proc.stdin.close()
        server.settimeout(0.25)
        deadline = time.monotonic() + 60
        while True:
            try:
                sock, _ = server.accept()
            except TimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RunnerCrashed(f"the model runner process did not connect (exit code {proc.poll()})") from None
                continue
            sock.settimeout(10)
            try:
                proof = sock.recv(len(key) + 1).decode(errors="replace").strip()
            except OSError:
                proof = ""
            if hmac.compare_digest(proof, key):
                sock.settimeout(None)
                return proc, Connection(sock.detach())
            sock.close()  # not our child: some other local program found the port


def _child_connect(port: int) -> Connection:
    key = sys.stdin.readline().strip()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(key.encode() + b"\n")
    return Connection(sock.detach())


class SpareRunner:
    """At most one runner process started before a model needs it. Its start (Python, the plugins, the
    engine's native libraries: about 0.6 s on a 2-core machine) then runs beside ``corral serve``'s own
    start, or while no model is loaded, and the next load pays only for reading the model. The scheduler
    keeps one only while nothing is loaded, so a spare costs memory (about 45 MB) only when idle."""

    def __init__(self, backend: str | None = None, transport: str | None = None) -> None:
        self._backend = backend or ""
        self._transport = transport or default_transport()
        self._lock = threading.Lock()
        self._starting: threading.Thread | None = None
        self._child: Child | None = None

    def start(self) -> None:
        """Start a spare, in the background (a loopback child takes a moment to connect), unless one is up."""
        with self._lock:
            if self._starting is None:
                self._starting = threading.Thread(target=self._spawn, name="corral-spare-runner", daemon=True)
                self._starting.start()

    def _spawn(self) -> None:
        try:
            self._child = _start_child(self._transport, prepare=self._backend)
        except (OSError, RunnerCrashed) as exc:  # the load that needs a runner will start its own, and say why
            log.debug("no spare runner: %s", exc)

    @property
    def pid(self) -> int | None:
        """The waiting spare's process id, once it has started; None when there is none."""
        with self._lock:
            starting = self._starting
        if starting is not None:
            starting.join()
        child = self._child
        return child[0].pid if child is not None else None

    def take(self, transport: str) -> Child | None:
        """The spare, now the caller's, if it is alive and speaks ``transport``; None otherwise."""
        with self._lock:
            starting, self._starting = self._starting, None
        if starting is None:
            return None
        starting.join()
        child, self._child = self._child, None
        if child is None:
            return None
        if transport != self._transport or child[0].poll() is not None:
            _discard(child)
            return None
        return child

    def close(self) -> None:
        child = self.take(self._transport)
        if child is not None:
            _discard(child)


def _discard(child: Child) -> None:
    proc, conn = child
    conn.close()  # a waiting spare reads EOF and exits
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ProcessWorker:
    """A ModelWorker in a child process, seen from the server; ``spare``: a pre-started one to use."""

    def __init__(
        self, backend: str, spec: LoadSpec, name: str, prefix_cache: bool = True, transport: str | None = None,
        spare: SpareRunner | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        transport = transport or default_transport()
        child = spare.take(transport) if spare is not None else None
        self._proc, self._conn = child or _start_child(transport)
        self._send_lock = threading.Lock()
        self._send((backend, spec, name, prefix_cache))
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count()
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.runner: RemoteRunner | None = None
        self.load_seconds = 0.0
        self._usage_replies: dict[int, WorkerUsage | None] = {}
        self._usage_arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"corral-relay-{name}", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait_loaded(self, timeout: float | None = None) -> RemoteRunner:
        self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        assert self.runner is not None
        return self.runner

    def submit(self, job: Job) -> None:
        job_id = next(self._ids)
        self._jobs[job_id] = job
        try:
            self._send(("job", job_id, {name: getattr(job, name) for name in _JOB_FIELDS}))
        except OSError:
            self._jobs.pop(job_id, None)
            job.emit(
                Event(
                    done=True,
                    done_reason="error",
                    error="the model runner has stopped",
                    exception=RunnerCrashed("the model runner has stopped"),
                )
            )
            return
        job.on_cancel = lambda: self._cancel(job_id)
        if job.cancelled.is_set():  # cancelled before the hook was in place
            self._cancel(job_id)

    def _cancel(self, job_id: int) -> None:
        if job_id in self._jobs:
            try:
                self._send(("cancel", job_id))
            except OSError:  # the runner is gone; the relay fails the job
                pass

    def _send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self._conn.send_bytes(data)

    def usage(self, timeout: float = 1.0) -> WorkerUsage | None:
        """Asked of the child when wanted (a scrape), so an unwatched server pays nothing per step."""
        if self.runner is None or not self.alive:
            return None
        request_id = next(self._ids)
        try:
            self._send(("usage", request_id))
        except OSError:
            return None
        with self._usage_arrived:
            self._usage_arrived.wait_for(lambda: request_id in self._usage_replies, timeout)
            return self._usage_replies.pop(request_id, None)

    def stop(self) -> None:
        try:
            self._send(("stop",))
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> None:
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._reader.join(5)

    # ---- the relay thread ------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                message = _recv(self._conn)
            except (EOFError, OSError):
                break
            except Exception:  # a message that cannot be read: the runner is no use any more
                log.exception("unreadable message from the runner for %s", self.name)
                self._proc.kill()
                break
            kind = message[0]
            if kind == "batch":  # one step's events, in the order they happened
                for job_id, item in message[1]:
                    job = self._jobs.get(job_id)
                    if job is None:
                        continue
                    if isinstance(item, str):
                        job.emit(Event(text=item))
                    elif isinstance(item, _Result):
                        if job.on_result is not None:
                            job.on_result(item.value)
                    else:
                        if item.done:
                            self._jobs.pop(job_id, None)
                        job.emit(item)
            elif kind == "usage":
                with self._usage_arrived:
                    self._usage_replies[message[1]] = message[2]
                    self._usage_arrived.notify_all()
            elif kind == "loaded":
                self.runner = RemoteRunner(message[1], self._proc.pid)
                self.load_seconds = message[2]
                self._ready.set()
            elif kind == "load_error":
                self._load_error = message[1]
                self._ready.set()
        self._crashed()

    def _crashed(self) -> None:
        """The pipe closed: fail whatever was waiting on this runner, saying how it died."""
        try:
            code: int | None = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        error = RunnerCrashed(
            f"the model runner for '{self.name}' crashed ({how}); see the server log, or run with --debug"
        )
        if not self._ready.is_set():
            self._load_error = error
            self._ready.set()
        for job_id, job in list(self._jobs.items()):
            self._jobs.pop(job_id, None)
            if code != 0 or not job.cancelled.is_set():
                job.emit(Event(done=True, done_reason="error", error=str(error), exception=error))


if __name__ == "__main__":
    # Run the imported module's copy, so what crosses the pipe pickles as corral.runtime.isolation's, not __main__'s.
    from corral.runtime.isolation import _child_connect as _connect
    from corral.runtime.isolation import _child_main as _main

    args = sys.argv[1:]
    spare_of = args[args.index("--prepare") + 1] if "--prepare" in args else None
    _main(_connect(int(args[1])) if args[0] == "--connect" else Connection(int(args[0])), spare_of)
