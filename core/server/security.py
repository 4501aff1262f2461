"""Safe defaults for the HTTP server: API keys, browser origins allow-listed, DNS-rebinding guard, body size cap."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.config import Settings, bound_to_loopback

log = logging.getLogger("corral.server.security")

MAX_BODY_BYTES = 64 * 1024 * 1024  # blobs go through /api/blobs, which streams and is exempt
_LOCAL_ORIGIN = r"https?://(localhost|127\.0\.0\.1|\[::1\]|0\.0\.0\.0)(:\d+)?"
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0"}


def _host_only(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str) -> bool:
    """When bound to loopback, only local names may reach us: a rebound DNS name carries its own Host."""
    host = _host_only(host_header)
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    def __init__(self, app: ASGIApp, check_host: bool, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.check_host = check_host
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.check_host and "host" in headers and not host_allowed(headers["host"]):
            await _reject(send, 403, f"host '{headers['host']}' is not allowed (the server is bound to loopback)")
            return
        length = headers.get("content-length", "")
        is_blob = scope.get("path", "").startswith("/api/blobs/")
        if not is_blob and length.isdigit() and int(length) > self.max_body:
            await _reject(send, 413, f"request body is larger than {self.max_body} bytes")
            return
        await self.app(scope, receive, send)


async def _reject(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


# Reachable without a key: the liveness line, the version (clients probe it), the probes, and the
# chat page's static files (they hold no data; the page asks for a key when the API answers 401).
OPEN_ROUTES = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
    ("GET", "/ui"),
    ("HEAD", "/ui"),
}
OPEN_PREFIXES = ("/health/",)
OPEN_STATIC = "/ui/"


class KeyRing:
    """The accepted API keys: CORRAL_API_KEYS plus CORRAL_API_KEYS_FILE, re-read when the file changes
    (its mtime, size or inode), so keys rotate without a restart. Keys are never logged."""

    def __init__(self, inline: str = "", path: Path | None = None) -> None:
        self._inline = _split_keys(inline.replace(",", "\n"))
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._from_file: list[bytes] = []
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.api_keys.get_secret_value(), settings.api_keys_file)

    @property
    def enabled(self) -> bool:
        """Keys are required when any are configured, or when a key file is named (even an empty one:
        a file emptied by mistake must lock the server, not open it)."""
        return bool(self._inline) or self._path is not None

    def keys(self) -> list[bytes]:
        if self._path is None:
            return self._inline
        with self._lock:
            try:
                st = os.stat(self._path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._seen:
                    self._from_file = _split_keys(self._path.read_text(encoding="utf-8"))
                    self._seen = stamp
            except OSError as exc:  # unreadable now: keep the last good keys rather than open up
                if self._seen is not None or not self._from_file:
                    log.warning("cannot read CORRAL_API_KEYS_FILE %s: %s", self._path, exc.strerror)
                self._seen = None
            return self._inline + self._from_file

    def accepts(self, presented: str) -> bool:
        """Constant-time comparison against every key (no early exit that would time which key is close)."""
        candidate = presented.encode("utf-8", "surrogateescape")
        found = False
        for key in self.keys():
            found |= hmac.compare_digest(candidate, key)
        return found


def _split_keys(text: str) -> list[bytes]:
    lines = (line.strip() for line in text.splitlines())
    return [line.encode() for line in lines if line and not line.startswith("#")]


def presented_key(headers: dict[str, str], path: str) -> str | None:
    """The key a request carries: ``Authorization: Bearer`` anywhere, ``x-api-key`` on Anthropic's route.
    Never the query string: URLs end up in logs and browser history."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if path.startswith("/v1/messages") and headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    return None


def unauthorized_body(path: str) -> bytes:
    """401 in the shape each API's clients parse: Ollama's, OpenAI's, Anthropic's."""
    if path.startswith("/v1/messages"):
        body: Any = {"type": "error", "error": {"type": "authentication_error", "message": "unauthorized"}}
    elif path.startswith("/v1/"):
        body = {
            "error": {
                "message": "unauthorized",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    else:
        body = {"error": "unauthorized"}
    return json.dumps(body).encode()


class ApiKeyMiddleware:
    """Every route but OPEN_ROUTES needs a valid key when keys are configured; CORS preflights pass
    (the CORS layer outside answers them, and browsers never send credentials on a preflight)."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or is_open(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = presented_key(headers, scope["path"])
        if key is not None and self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        await send({
            "type": "http.response.start", "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="corral"')],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": unauthorized_body(scope["path"])})


def is_open(method: str, path: str) -> bool:
    static = method in ("GET", "HEAD") and path.startswith(OPEN_STATIC)
    return (method, path) in OPEN_ROUTES or path.startswith(OPEN_PREFIXES) or static or method == "OPTIONS"


def install_security(app: FastAPI, settings: Settings) -> None:
    # Added first, so it runs inside CORS: a 401 still carries the CORS headers a browser needs.
    app.add_middleware(ApiKeyMiddleware, keys=KeyRing.from_settings(settings))
    extra = "|".join(re.escape(o.rstrip("/")).replace(r"\*", ".*") for o in settings.origins)
    pattern = f"({_LOCAL_ORIGIN})" + (f"|({extra})" if extra else "")
    cors: dict[str, Any] = dict(allow_origin_regex=pattern, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(GuardMiddleware, check_host=bound_to_loopback(settings))
