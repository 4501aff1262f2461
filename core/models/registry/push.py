"""Push a model: each blob the registry lacks (checked with HEAD), uploaded whole, then the manifest."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx

from corral.errors import CorralError
from corral.models.names import ModelName
from corral.models.registry.http import RETRY_STATUSES, MiB, Progress, Registry, RegistryError, describe
from corral.models.store import MANIFEST_MEDIA_TYPE, Store, check_digest


@dataclass
class PushStats:
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_skipped: int = 0  # already in the registry
    retries: int = 0


def push(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    progress: Progress = lambda p: None,
    max_tries: int = 5,
    backoff: float = 1.0,
    timeout: float = 300.0,
    cancel: threading.Event | None = None,
) -> PushStats:
    """Push ``name`` from ``store`` to its registry: blobs the registry lacks, then the manifest."""
    stats = PushStats()
    progress({"status": "retrieving manifest"})
    stored = store.get(name)
    manifest = stored.manifest
    reg = Registry(name, insecure=insecure, timeout=timeout, max_tries=max_tries, backoff=backoff, cancel=cancel)

    def retried() -> None:
        stats.retries += 1

    try:
        layers: dict[str, int] = {}
        for layer in [*manifest.layers, manifest.config]:
            layers.setdefault(check_digest(layer.digest), layer.size)
        for digest, size in layers.items():
            status = f"pushing {digest[7:19]}"
            head = reg.request("HEAD", reg.blob_url(digest), what=f"check blob {digest}", on_retry=retried)
            if head.status_code == 200:
                stats.blobs_skipped += 1
                progress({"status": status, "digest": digest, "total": size, "completed": size})
                continue
            if head.status_code != 404:
                raise RegistryError(
                    f"check blob {digest}: registry {reg.host} answered {head.status_code}: {describe(head)}"
                )
            path = store.blob_path(digest)
            if not path.is_file():
                raise CorralError(f"blob {digest} of {name} is missing from the store")
            _upload_blob(reg, path, digest, size, status, progress, stats, cancel)
            stats.blobs_uploaded += 1

        progress({"status": "pushing manifest"})
        body = manifest.to_bytes()
        resp = reg.request(
            "PUT",
            reg.manifest_url(),
            what="push manifest",
            headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            body=lambda: body,
            on_retry=retried,
        )
        if resp.status_code not in (200, 201):
            raise RegistryError(f"push manifest: registry {reg.host} answered {resp.status_code}: {describe(resp)}")
        progress({"status": "success"})
        return stats
    finally:
        reg.close()


def _upload_blob(
    reg: Registry,
    path: Path,
    digest: str,
    size: int,
    status: str,
    progress: Progress,
    stats: PushStats,
    cancel: threading.Event | None,
) -> None:
    what = f"upload blob {digest}"
    for attempt in range(reg.max_tries):
        last = attempt == reg.max_tries - 1
        sent = 0
        try:
            start = reg.request("POST", f"{reg.repo_url}/blobs/uploads/", what=what, on_retry=lambda: None)
            if start.status_code != 202 or not start.headers.get("Location"):
                raise RegistryError(
                    f"{what}: registry {reg.host} answered {start.status_code} to starting the upload: "
                    f"{describe(start)}"
                )
            location = urljoin(reg.base + "/", start.headers["Location"])
            put_url = f"{location}{'&' if '?' in location else '?'}digest={digest}"

            def body() -> Iterator[bytes]:
                nonlocal sent
                sent = 0
                last_report = 0.0
                with open(path, "rb") as fh:
                    while chunk := fh.read(MiB):
                        if cancel is not None and cancel.is_set():
                            raise CorralError("push cancelled")
                        sent += len(chunk)
                        yield chunk
                        if time.monotonic() - last_report >= 0.1:
                            last_report = time.monotonic()
                            progress({"status": status, "digest": digest, "total": size, "completed": sent})

            resp = reg.send(
                "PUT",
                put_url,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=body,
            )
            resp.read()
            if resp.status_code in (201, 204):
                stats.bytes_uploaded += sent
                progress({"status": status, "digest": digest, "total": size, "completed": size})
                return
            if resp.status_code not in RETRY_STATUSES or last:
                raise RegistryError(f"{what}: registry {reg.host} answered {resp.status_code}: {describe(resp)}")
        except httpx.TransportError as exc:
            if last:
                raise RegistryError(
                    f"{what}: cannot reach registry {reg.host} after {reg.max_tries} tries: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        stats.retries += 1
        reg.sleep_backoff(attempt)
