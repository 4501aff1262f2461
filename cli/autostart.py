"""Start ``corral serve`` in the background when nothing answers at a loopback CORRAL_HOST."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corral.config import Settings, bound_to_loopback
from corral.errors import CorralError


def anything_listens(base_url: str, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``base_url``'s port succeeds: a refusal is the common answer when
    no server runs, and it comes before the HTTP client is even imported."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def server_answers(base_url: str, timeout: float = 0.5) -> bool:
    import httpx  # after the server is started, so its import overlaps the server's start

    try:
        return httpx.get(f"{base_url}/api/version", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def detached(platform: str) -> dict[str, Any]:
    """Popen options for a server that outlives this command (so the model stays loaded between
    commands) and is not hit by the terminal's Ctrl+C: its own session on POSIX; on Windows, where
    ``start_new_session`` does nothing, no console and its own process group."""
    if platform == "win32":
        flags = getattr(subprocess, "DETACHED_PROCESS", 0x00000008) | getattr(
            subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200
        )
        return {"creationflags": flags, "close_fds": True}
    return {"start_new_session": True}


def ensure_server(settings: Settings, wait_seconds: float = 60.0) -> str:
    """Return the server's URL, starting one first if it is ours to start."""
    url = settings.base_url
    if anything_listens(url) and server_answers(url):
        return url
    if not bound_to_loopback(settings):
        return url  # a remote server is not ours to start: the client will say it cannot connect
    log_path = settings.home / "logs" / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CORRAL_HOST": settings.host},
            **detached(sys.platform),
        )
    (settings.home / "logs" / "server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if server_answers(url, timeout=0.25):
            return url
        if proc.poll() is not None:
            raise CorralError(f"could not start corral serve (exit {proc.returncode}): {_tail(log_path)}")
        time.sleep(0.05)
    raise CorralError(f"corral serve did not answer at {url} within {wait_seconds:.0f} s; see {log_path}")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no log"
