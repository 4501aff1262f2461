"""Safe defaults for the HTTP server: browser origins allow-listed, DNS-rebinding guard, body size cap."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.config import Settings, bound_to_loopback

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


def install_security(app: FastAPI, settings: Settings) -> None:
    extra = "|".join(re.escape(o.rstrip("/")).replace(r"\*", ".*") for o in settings.origins)
    pattern = f"({_LOCAL_ORIGIN})" + (f"|({extra})" if extra else "")
    cors: dict[str, Any] = dict(allow_origin_regex=pattern, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(GuardMiddleware, check_host=bound_to_loopback(settings))
