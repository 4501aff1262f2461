"""Runner isolation: each loaded model lives in its own process, so a native crash takes only that model.

llama.cpp aborts the whole process on some malformed models. ``ProcessWorker`` has the same surface
as ``ModelWorker`` (submit / wait_loaded / stop / join) but runs the ModelWorker in a child process
and relays jobs and events over a socket pair. The child is a fresh ``python -m corral.runtime.isolation``
(forking a threaded server is unsafe, and multiprocessing's spawn re-imports the caller's __main__).
"""

from __future__ import annotations

import hmac
import itertools
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

# The parts of a Job that cross the pipe; callbacks and the cancel flag stay on their own side.
_JOB_FIELDS = [f.name for f in fields(Job) if f.name not in ("emit", "on_result", "cancelled")]


@dataclass(frozen=True)
class RemoteRunner:
    """What the parent knows of a runner that lives in a child process."""

    info: ModelInfo
    pid: int


def _child_main(conn: Connection) -> None:
    """The runner process: load through the plugin system, then serve jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the server's to handle
    from corral.plugins import Plugins

    backend, spec, name, prefix_cache = conn.recv()

    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except OSError:  # the server has gone: nobody is left to tell, and the main loop will stop
                pass

    try:
        entry = Plugins().get(backend)
        worker = ModelWorker(lambda: entry.backend.load(spec), name, prefix_cache=prefix_cache)
        runner = worker.wait_loaded()
    except BaseException as exc:  # reported to the parent, which raises it for the request
        send(("load_error", exc))
        return
    send(("loaded", runner.info, worker.load_seconds))
    jobs: dict[int, Job] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away: nothing left to serve
            break
        kind = message[0]
        if kind == "job":
            job_id, data = message[1], message[2]

            def emit(event: Event, job_id: int = job_id) -> None:
                if event.done:
                    jobs.pop(job_id, None)
                send(("event", job_id, event))

            def on_result(result: Any, job_id: int = job_id) -> None:
                send(("result", job_id, result))

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


def _start_child(transport: str) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start the runner process and connect to it.

    ``socketpair`` (POSIX): the child inherits its end of a socket pair as a file descriptor.
    ``loopback`` (Windows, which cannot pass a descriptor to a child): the child connects to a
    one-shot listening socket on 127.0.0.1 and proves itself with a key it read from its stdin.
    """
    command = [sys.executable, "-m", "corral.runtime.isolation"]
    if transport == "socketpair":
        parent_sock, child_sock = socket.socketpair()
        proc = subprocess.Popen(
            [*command, str(child_sock.fileno())], pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL
        )
        child_sock.close()
        return proc, Connection(parent_sock.detach())
    key = secrets.token_hex(32)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        proc = subprocess.Popen([*command, "--connect", str(port)], stdin=subprocess.PIPE)
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


class ProcessWorker:
    """A ModelWorker in a child process, seen from the server."""

    def __init__(
        self, backend: str, spec: LoadSpec, name: str, prefix_cache: bool = True, transport: str | None = None
    ) -> None:
        self.name = name
        self._proc, self._conn = _start_child(transport or ("loopback" if sys.platform == "win32" else "socketpair"))
        self._conn.send((backend, spec, name, prefix_cache))
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
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

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

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
        cancelled: set[int] = set()
        while True:
            try:
                if not self._conn.poll(0.02):
                    self._forward_cancellations(cancelled)
                    continue
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            self._forward_cancellations(cancelled)
            kind = message[0]
            if kind == "event":
                job = self._jobs.get(message[1])
                if job is not None:
                    if message[2].done:
                        self._jobs.pop(message[1], None)
                    job.emit(message[2])
            elif kind == "usage":
                with self._usage_arrived:
                    self._usage_replies[message[1]] = message[2]
                    self._usage_arrived.notify_all()
            elif kind == "result":
                job = self._jobs.get(message[1])
                if job is not None and job.on_result is not None:
                    job.on_result(message[2])
            elif kind == "loaded":
                self.runner = RemoteRunner(message[1], self._proc.pid)
                self.load_seconds = message[2]
                self._ready.set()
            elif kind == "load_error":
                self._load_error = message[1]
                self._ready.set()
        self._crashed()

    def _forward_cancellations(self, already: set[int]) -> None:
        for job_id, job in list(self._jobs.items()):
            if job.cancelled.is_set() and job_id not in already:
                already.add(job_id)
                try:
                    self._send(("cancel", job_id))
                except OSError:
                    return

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
    _child_main(_child_connect(int(sys.argv[2])) if sys.argv[1] == "--connect" else Connection(int(sys.argv[1])))
