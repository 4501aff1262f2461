"""The chat page at /ui: packaged static files served with a strict Content-Security-Policy, and `/`
answering plain text to API clients but sending a browser (which asks for text/html) to the page."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

ROOT_TEXT = "Corral is running"

# The page runs only its own files: no inline script or style, no other origin, no plugins, no
# framing, and Trusted Types so that no string can ever become markup (the page builds its DOM
# from nodes and text; a model's answer is never parsed as HTML).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset | None:
    """One file of the page, read once from the package, with its gzipped copy and an ETag."""
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in MEDIA_TYPES:
        return None
    file = resources.files("corral.server").joinpath("ui", name)
    if not file.is_file():
        return None
    body = file.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, gzip.compress(body, compresslevel=9, mtime=0), MEDIA_TYPES[suffix], etag)


def serve(request: Request, name: str) -> Response:
    found = asset(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    # no-cache: revalidate each time (cheap with the ETag), so a new Corral's page is never stale.
    headers = {**SECURITY_HEADERS, "ETag": found.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if found.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        body = found.gzipped
    else:
        body = found.body
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        body = b""
    return Response(body, media_type=found.media_type, headers=headers)


def wants_html(request: Request) -> bool:
    """A browser navigating asks for text/html; Ollama's clients and curl ask for */* or nothing."""
    return "text/html" in request.headers.get("accept", "")


router = APIRouter()


@router.get("/")
@router.head("/")
async def root(request: Request) -> Response:
    if wants_html(request):
        return RedirectResponse("/ui", status_code=302)
    return Response(ROOT_TEXT, media_type="text/plain")


@router.get("/ui", include_in_schema=False)
@router.head("/ui", include_in_schema=False)
async def page(request: Request) -> Response:
    return serve(request, "index.html")


@router.get("/ui/{name}", include_in_schema=False)
@router.head("/ui/{name}", include_in_schema=False)
async def page_file(request: Request, name: str) -> Response:
    return serve(request, name)


__all__ = ["router", "CONTENT_SECURITY_POLICY", "ROOT_TEXT"]
