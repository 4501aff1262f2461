"""Registries for the pull/push tests.

``registry``: a REAL registry -- Debian's ``docker-registry`` package (the CNCF distribution
registry) -- serving plain http on 127.0.0.1 from a temp directory, once per session.

``fake_registry``: a small in-process HTTP server that speaks just enough of the protocol to serve
manifests and blobs, and can misbehave on purpose: corrupted blobs, Bearer/Basic challenges,
5xx answers, stalled connections, ignored Range headers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from serverproc import free_port

DOCKER_REGISTRY = "/usr/bin/docker-registry"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``docker-registry serve``; yield ``"127.0.0.1:PORT"``."""
    binary = DOCKER_REGISTRY if Path(DOCKER_REGISTRY).exists() else shutil.which("docker-registry")
    if binary is None:
        pytest.fail(
            f"{DOCKER_REGISTRY} is missing: the registry tests need the real CNCF distribution registry; "
            ".ci/run installs it with apt-get install docker-registry (so does scripts/test.sh)"
        )
    root = tmp_path_factory.mktemp("docker-registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: error\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - open for the whole session
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"docker-registry exited with {proc.returncode}: {(root / 'registry.log').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on port {port}: {(root / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        log.close()


# ---- the fake ----------------------------------------------------------------------------


@dataclass
class FakeRegistry:
    """Serves ``manifests[(repo, tag)]`` and ``blobs[digest]`` (whatever bytes you put there)."""

    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    token: str | None = None  # demand "Bearer <token>"; the /token endpoint hands out `issue`
    issue: str | None = None  # what /token hands out (defaults to `token`; set another to be refused)
    basic: bool = False  # answer every /v2 request with a Basic challenge
    fail_status: int | None = None  # answer /v2 requests with this status ...
    fail_count: int | None = None  # ... this many times (None: always)
    stall_count: int = 0  # blob GETs that send half their bytes, then hang for stall_seconds
    stall_seconds: float = 5.0
    ignore_range: bool = False
    requests: list[dict] = field(default_factory=list)
    host: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        with self.lock:
            return sum(
                1 for r in self.requests if (method is None or r["method"] == method) and path_contains in r["path"]
            )


def _handler(fake: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            with fake.lock:
                fake.requests.append(
                    {"method": self.command, "path": url.path, "query": url.query, "headers": dict(self.headers)}
                )
                failing = fake.fail_status is not None and (fake.fail_count is None or fake.fail_count > 0)
                if failing and fake.fail_count is not None and url.path.startswith("/v2/"):
                    fake.fail_count -= 1
            if url.path == "/token":
                query = parse_qs(url.query)
                return self._send(
                    200,
                    json.dumps({"token": fake.issue or fake.token, "echo": query}).encode(),
                    {"Content-Type": "application/json"},
                )
            if not url.path.startswith("/v2/"):
                return self._send(404)
            if fake.basic:
                return self._error(401, "UNAUTHORIZED", "auth", {"WWW-Authenticate": 'Basic realm="fake"'})
            if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
                repo = "/".join(url.path.split("/")[2:4])
                challenge = (
                    f'Bearer realm="http://{fake.host}/token",service="fake-registry",scope="repository:{repo}:pull"'
                )
                return self._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge})
            if failing:
                return self._error(fake.fail_status or 500, "UNKNOWN", "the fake registry is failing on purpose")
            match = re.fullmatch(r"/v2/([^/]+/[^/]+)/(manifests|blobs)/([^/]+)", url.path)
            if match is None:
                return self._error(404, "NAME_UNKNOWN", "no such repository")
            repo, kind, ref = match.groups()
            if kind == "manifests":
                body = fake.manifests.get((repo, ref))
                if body is None:
                    return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                return self._send(200, body, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
            blob = fake.blobs.get(ref)
            if blob is None:
                return self._error(404, "BLOB_UNKNOWN", "blob unknown")
            return self._send_blob(blob)

        def _send_blob(self, blob: bytes) -> None:
            start, end, status = 0, len(blob), 200
            range_header = self.headers.get("Range")
            if range_header and not fake.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
                if m:
                    start = int(m[1])
                    end = min(int(m[2]) + 1, len(blob)) if m[2] else len(blob)
                    status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(blob)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            stall = False
            with fake.lock:
                if fake.stall_count > 0:
                    fake.stall_count -= 1
                    stall = True
            body = memoryview(blob)[start:end]
            if stall:
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                time.sleep(fake.stall_seconds)
                self.close_connection = True
                return
            for offset in range(0, len(body), 1 << 16):
                self.wfile.write(body[offset : offset + (1 << 16)])

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hang up on purpose here (cancelled parts, stalls): that is no error."""


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    server = _QuietServer(("127.0.0.1", 0), _handler(fake))
    fake.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
