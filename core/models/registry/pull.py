"""Pull a model: resumable, parallel, verified blob downloads, then the manifest under the store lock.

See the package docstring for how partial downloads survive interruptions and slow connections.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx
from filelock import FileLock
from filelock import Timeout as LockTimeout

from corral.errors import CorralError, ModelNotFound, StorageFull
from corral.models.names import ModelName
from corral.models.registry.http import RETRY_STATUSES, MiB, Progress, Registry, RegistryError, describe
from corral.models.registry.partial import (
    _O_BINARY,
    _BlobDownload,
    _load_sidecar,
    _Part,
    _partial_paths,
    _plan_parts,
    _pwrite,
    _Throttle,
    _verify,
    _write_sidecar,
)
from corral.models.store import MANIFEST_MEDIA_TYPE, Manifest, Store, check_digest, disk_full, fsync_dir, is_disk_full


@dataclass
class PullStats:
    bytes_downloaded: int = 0  # blob bytes received from the registry in this call (network bytes)
    bytes_resumed: int = 0  # blob bytes already on disk from an earlier, interrupted pull
    blobs_downloaded: int = 0
    blobs_skipped: int = 0  # already in the store
    retries: int = 0  # requests that failed or stalled and were tried again
    stalls: int = 0  # parts cancelled because no bytes came for stall_timeout seconds
    splits: int = 0  # parts split so an idle worker could take over half


class _Puller:
    def __init__(
        self,
        store: Store,
        reg: Registry,
        *,
        progress: Progress,
        parts: int,
        part_size_min: int,
        stall_timeout: float,
        checkpoint_interval: float,
        rate_limit: float | None,
        cancel: threading.Event | None,
        stats: PullStats,
    ) -> None:
        self.store = store
        self.reg = reg
        self.progress = progress
        self.parts = max(1, parts)
        self.part_size_min = max(1, part_size_min)
        self.stall_timeout = stall_timeout
        self.checkpoint_interval = checkpoint_interval
        self.throttle = _Throttle(rate_limit) if rate_limit else None
        self.cancel = cancel
        self.stats = stats
        self.stats_lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self.stats_lock:
            for key, value in deltas.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    def _report(self, dl: _BlobDownload, completed: int | None = None) -> None:
        self.progress(
            {
                "status": f"pulling {dl.digest[7:19]}",
                "digest": dl.digest,
                "total": dl.size,
                "completed": dl.completed if completed is None else completed,
            }
        )

    # -- one blob --------------------------------------------------------------------------
    def download(self, digest: str, size: int) -> _BlobDownload:
        """Bring ``digest`` to a complete partial file (not yet verified). Caller holds its blob lock."""
        partial, sidecar = _partial_paths(self.store, digest)
        dl = _BlobDownload(digest=digest, size=size, partial=partial, sidecar=sidecar)
        resumed = _load_sidecar(dl)
        if not resumed:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            dl.parts = _plan_parts(size, self.parts, self.part_size_min)
        else:
            self._count(bytes_resumed=dl.completed)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o644)
        try:
            if not resumed:
                os.ftruncate(fd, size)  # sparse: the parts fill it in at their offsets
                _write_sidecar(dl, None)
                fsync_dir(partial.parent)
            self._report(dl)
            if dl.completed < size:
                self._run_parts(dl, fd)
        finally:
            os.close(fd)
        self._report(dl)
        return dl

    def _run_parts(self, dl: _BlobDownload, fd: int) -> None:
        abort = threading.Event()
        pending = deque(p for p in dl.parts if p.completed < p.end - p.offset)
        min_split = max(self.part_size_min, 64 * 1024)
        workers = 1 if dl.size < 2 * self.part_size_min else self.parts

        def next_part() -> _Part | None:
            with dl.lock:
                if pending:
                    part = pending.popleft()
                    part.active = True
                    return part
                victim = max((p for p in dl.parts if p.active), key=lambda p: p.remaining, default=None)
                if victim is None or victim.remaining < 2 * min_split:
                    return None
                mid = victim.offset + victim.claimed + victim.remaining // 2
                part = _Part(offset=mid, end=victim.end, active=True)
                victim.end = mid
                dl.parts.append(part)
            self._count(splits=1)
            return part

        def worker() -> None:
            while not abort.is_set() and (part := next_part()) is not None:
                try:
                    self._download_part(dl, part, fd, abort)
                finally:
                    with dl.lock:
                        part.active = False

        last_checkpoint = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"pull-{dl.digest[7:19]}") as pool:
            futures = [pool.submit(worker) for _ in range(workers)]
            try:
                while True:
                    done, not_done = wait(futures, timeout=0.1, return_when=FIRST_EXCEPTION)
                    failed = next((f for f in done if f.exception() is not None), None)
                    if failed is not None:
                        raise failed.exception()  # type: ignore[misc]
                    if self.cancel is not None and self.cancel.is_set():
                        raise CorralError("pull cancelled")
                    self._report(dl)
                    if not not_done:
                        break
                    if time.monotonic() - last_checkpoint >= self.checkpoint_interval:
                        _write_sidecar(dl, fd)
                        last_checkpoint = time.monotonic()
            finally:
                abort.set()
                wait(futures)
                _write_sidecar(dl, fd)
        if dl.completed != dl.size:  # every worker returned, so every part ran to its end
            raise RegistryError(f"download of {dl.digest} stopped at {dl.completed} of {dl.size} bytes")

    def _download_part(self, dl: _BlobDownload, part: _Part, fd: int, abort: threading.Event) -> None:
        failures = 0
        while True:
            with dl.lock:
                start, end = part.offset + part.completed, part.end
            if start >= end or abort.is_set():
                return
            try:
                got = self._stream_range(dl, part, fd, start, end, abort)
                error: Exception | None = None
            except (httpx.TransportError, _Retry) as exc:
                got = getattr(exc, "got", 0)
                error = exc
            if abort.is_set():
                return
            with dl.lock:
                if part.offset + part.completed >= part.end:
                    return  # done, or an idle worker took over the rest
            if got > 0:
                failures = 0  # progress was made: only consecutive fruitless tries count
            if error is None:
                if got > 0:
                    continue  # a short answer: ask for the rest
                error = _Retry(f"registry {self.reg.host} sent no bytes for {dl.digest}", 0)
            stalled = isinstance(error, httpx.ReadTimeout)
            if stalled:
                self._count(stalls=1)
            failures += 1
            if failures >= self.reg.max_tries:
                raise RegistryError(
                    f"download of {dl.digest} from registry {self.reg.host} failed after "
                    f"{self.reg.max_tries} tries: {_explain(error, self.stall_timeout)}"
                )
            self._count(retries=1)
            if not (stalled and got > 0):  # a part that stalled after making progress retries at once
                self.reg.sleep_backoff(failures - 1)

    def _stream_range(
        self, dl: _BlobDownload, part: _Part, fd: int, start: int, end: int, abort: threading.Event
    ) -> int:
        headers = {"Accept-Encoding": "identity"}
        whole = start == 0 and end == dl.size
        if not whole:
            headers["Range"] = f"bytes={start}-{end - 1}"
        resp = self.reg.send("GET", self.reg.blob_url(dl.digest), headers=headers, stream=True)
        got = 0
        try:
            status = resp.status_code
            if status == 404:
                raise RegistryError(f"blob {dl.digest} of {self.reg.name} not found in registry {self.reg.host}")
            if status in RETRY_STATUSES:
                resp.read()
                raise _Retry(f"registry {self.reg.host} answered {status}: {describe(resp)}", 0)
            skip = 0
            if status == 206:
                match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
                if match is None or int(match[1]) != start:
                    raise _Retry(f"registry {self.reg.host} sent the wrong range for {dl.digest}", 0)
                if match[3] != "*" and int(match[3]) != dl.size:
                    raise RegistryError(
                        f"registry {self.reg.host} says blob {dl.digest} has {match[3]} bytes; "
                        f"the manifest says {dl.size}"
                    )
            elif status == 200:
                skip = start  # the registry ignored Range and sent the whole blob: skip to our offset
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != dl.size:
                    raise RegistryError(
                        f"registry {self.reg.host} sends {length} bytes for blob {dl.digest}; "
                        f"the manifest says {dl.size}"
                    )
            else:
                resp.read()
                raise RegistryError(
                    f"download of {dl.digest}: registry {self.reg.host} answered {status}: {describe(resp)}"
                )
            for chunk in resp.iter_raw():
                if abort.is_set():
                    break
                if self.throttle is not None:
                    self.throttle.take(len(chunk))
                self._count(bytes_downloaded=len(chunk))
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                with dl.lock:
                    pos = part.offset + part.claimed
                    n = min(len(chunk), part.end - pos)
                    part.claimed += max(n, 0)
                if n <= 0:
                    break  # an idle worker took over the rest of this part
                _pwrite(fd, chunk if n == len(chunk) else chunk[:n], pos)
                with dl.lock:
                    part.completed += n
                got += n
                if n < len(chunk):
                    break
        except (httpx.TransportError, _Retry) as exc:
            exc.got = got  # type: ignore[union-attr]  # an httpx error gets the count as a new attribute
            raise
        finally:
            resp.close()
        return got

    # -- whole pull ------------------------------------------------------------------------
    def fetch_manifest(self) -> Manifest:
        reg = self.reg
        resp = reg.request(
            "GET",
            reg.manifest_url(),
            what="pull model manifest",
            headers={"Accept": MANIFEST_MEDIA_TYPE},
            on_retry=lambda: self._count(retries=1),
        )
        if resp.status_code == 404:
            raise ModelNotFound(f"model '{reg.name}' not found in registry {reg.host}")
        if resp.status_code != 200:
            raise RegistryError(
                f"pull model manifest: registry {reg.host} answered {resp.status_code}: {describe(resp)}"
            )
        try:
            manifest = Manifest.model_validate_json(resp.content)
        except ValueError as exc:
            kind = resp.headers.get("Content-Type", "unknown type")
            raise RegistryError(
                f"pull model manifest: registry {reg.host} sent a manifest Corral cannot read ({kind}): "
                f"{str(exc).splitlines()[0]}"
            ) from None
        for layer in [manifest.config, *manifest.layers]:
            layer.digest = check_digest(layer.digest)  # a hostile digest must never become a path
            if layer.size < 0:
                raise RegistryError(f"pull model manifest: layer {layer.digest} has a negative size")
        return manifest


def _explain(error: BaseException, stall_timeout: float) -> str:
    if isinstance(error, httpx.ReadTimeout):
        return f"no bytes for {stall_timeout:g} s"
    return f"{type(error).__name__}: {error}" if isinstance(error, httpx.TransportError) else str(error)


class _Retry(Exception):
    def __init__(self, message: str, got: int) -> None:
        super().__init__(message)
        self.got = got


def _check_disk(store: Store, needed: dict[str, int]) -> None:
    have = shutil.disk_usage(store.blobs).free
    for digest in needed:
        partial, _ = _partial_paths(store, digest)
        with contextlib.suppress(OSError):
            info = partial.stat()  # bytes an earlier pull already holds for this blob (Windows: no st_blocks)
            have += info.st_blocks * 512 if hasattr(info, "st_blocks") else info.st_size
    want = sum(needed.values())
    if want > have:
        raise StorageFull(
            f"not enough disk space to pull: {want} bytes needed in the store {store.root} ({have} bytes free)"
        )


def pull(
    store: Store,
    name: ModelName,
    *,
    insecure: bool = False,
    progress: Progress = lambda p: None,
    parts: int = 4,
    part_size_min: int = 16 * MiB,
    stall_timeout: float = 10.0,
    max_tries: int = 5,
    backoff: float = 1.0,
    checkpoint_interval: float = 1.0,
    rate_limit: float | None = None,
    cancel: threading.Event | None = None,
) -> PullStats:
    """Pull ``name`` from its registry into ``store``; returns what it cost. See the module docstring.

    ``parts``: parallel ranged requests for a blob of at least ``2 * part_size_min`` bytes.
    ``stall_timeout``: seconds without a byte before a request is cancelled and retried.
    ``max_tries``/``backoff``: attempts per request and the first backoff delay (doubling).
    ``checkpoint_interval``: seconds between progress records in the ``-partial.json`` sidecar.
    ``rate_limit``: bytes per second for the whole pull (None: as fast as it goes).
    ``cancel``: set it to stop the pull; what was downloaded stays resumable.
    """
    stats = PullStats()
    reg = Registry(name, insecure=insecure, timeout=stall_timeout, max_tries=max_tries, backoff=backoff, cancel=cancel)
    puller = _Puller(
        store,
        reg,
        progress=progress,
        parts=parts,
        part_size_min=part_size_min,
        stall_timeout=stall_timeout,
        checkpoint_interval=checkpoint_interval,
        rate_limit=rate_limit,
        cancel=cancel,
        stats=stats,
    )
    try:
        progress({"status": "pulling manifest"})
        manifest = puller.fetch_manifest()
        layers: dict[str, int] = {}
        for layer in [*manifest.layers, manifest.config]:  # layers first, config last, as Ollama does
            layers.setdefault(layer.digest, layer.size)
        store.blobs.mkdir(parents=True, exist_ok=True)
        missing = {d: s for d, s in layers.items() if not store.has_blob(d)}
        _check_disk(store, missing)
        locks_dir = store.root / ".pulls"
        locks_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            # One pull per blob at a time, across threads and processes; sorted, so no two pulls deadlock.
            for digest in sorted(missing):
                lock = FileLock(locks_dir / f"{digest.replace(':', '-')}.lock")
                try:
                    lock.acquire(timeout=0)
                except LockTimeout:
                    progress({"status": f"waiting for another pull of {digest[7:19]}", "digest": digest})
                    while True:
                        if cancel is not None and cancel.is_set():
                            raise CorralError("pull cancelled") from None
                        try:
                            lock.acquire(timeout=0.5)
                            break
                        except LockTimeout:
                            continue
                held.callback(lock.release)
            try:
                _fetch_and_commit(store, name, manifest, layers, missing, puller, stats, progress)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                for digest in missing:  # we hold their locks; a part that cannot finish only fills the disk
                    for path in _partial_paths(store, digest):
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                raise disk_full(store.root, f"pull {name}", sum(missing.values())) from None
        progress({"status": "success"})
        return stats
    finally:
        reg.close()


def _fetch_and_commit(
    store: Store,
    name: ModelName,
    manifest: Manifest,
    layers: dict[str, int],
    missing: dict[str, int],
    puller: _Puller,
    stats: PullStats,
    progress: Progress,
) -> None:
    """Download what is missing, verify it, and commit it with the manifest. Caller holds the blob locks."""
    reg = puller.reg
    downloads: list[_BlobDownload] = []
    for digest, size in layers.items():
        if store.has_blob(digest):  # was there, or another pull finished it while we waited
            if digest in missing:  # we hold its lock: a partial left beside it is stale
                for path in _partial_paths(store, digest):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            stats.blobs_skipped += 1
            progress({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size})
            continue
        downloads.append(puller.download(digest, size))
        stats.blobs_downloaded += 1

    progress({"status": "verifying sha256 digest"})
    for dl in downloads:
        actual = _verify(dl.partial)
        if actual != dl.digest:
            for path in (dl.partial, dl.sidecar):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise RegistryError(
                f"digest mismatch pulling {name} from {reg.host}: blob {dl.digest} arrived as {actual}; "
                "the download was discarded, pull again"
            )

    progress({"status": "writing manifest"})
    _commit(store, name, manifest, downloads)


def _commit(store: Store, name: ModelName, manifest: Manifest, downloads: list[_BlobDownload]) -> None:
    """Rename the verified partials into place and write the manifest; undo the renames on failure."""
    with store.lock():
        moved: list[_BlobDownload] = []
        try:
            for dl in downloads:
                final = store.blob_path(dl.digest)
                if not dl.partial.exists():
                    raise CorralError(
                        f"the partial download {dl.partial} disappeared during the pull (was the store pruned?)"
                    )
                if final.exists():
                    continue
                os.replace(dl.partial, final)
                moved.append(dl)
            fsync_dir(store.blobs)
            store.write_manifest(name, manifest)
        except BaseException:
            for dl in moved:  # back to complete partials: the store is as before, the next pull is instant
                with contextlib.suppress(OSError):
                    os.replace(store.blob_path(dl.digest), dl.partial)
            raise
    for dl in downloads:
        for path in (dl.partial, dl.sidecar):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
