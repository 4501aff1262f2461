"""A pull's partial downloads: the ``-partial`` file and its sidecar of per-part progress, written
only after the bytes it counts are fsynced, so an interrupted pull resumes where each part stopped;
positioned writes, sha256 checks, and the optional rate limit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from corral.models.store import Store


@dataclass
class _Part:
    offset: int
    end: int  # exclusive; may shrink while the part runs when an idle worker takes over its tail
    completed: int = 0  # bytes written (and counted) from offset
    claimed: int = 0  # bytes written or being written from offset; completed <= claimed
    active: bool = False

    @property
    def remaining(self) -> int:
        return self.end - self.offset - self.claimed


@dataclass
class _BlobDownload:
    digest: str
    size: int
    partial: Path
    sidecar: Path
    parts: list[_Part] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.parts)

    def snapshot(self) -> dict:
        with self.lock:
            parts = [{"offset": p.offset, "size": p.end - p.offset, "completed": p.completed} for p in self.parts]
        return {"digest": self.digest, "size": self.size, "parts": sorted(parts, key=lambda p: p["offset"])}


def _partial_paths(store: Store, digest: str) -> tuple[Path, Path]:
    base = store.blob_path(digest)
    return base.with_name(base.name + "-partial"), base.with_name(base.name + "-partial.json")


def _load_sidecar(dl: _BlobDownload) -> bool:
    """Adopt the parts an earlier pull recorded, if they describe this blob and the file is intact."""
    try:
        data = json.loads(dl.sidecar.read_text())
        if data.get("digest") != dl.digest or data.get("size") != dl.size:
            return False
        if dl.partial.stat().st_size != dl.size:
            return False
        parts, cursor = [], 0
        for item in sorted(data["parts"], key=lambda p: p["offset"]):
            offset, size, completed = int(item["offset"]), int(item["size"]), int(item["completed"])
            if offset != cursor or size <= 0 or not 0 <= completed <= size:
                return False
            parts.append(_Part(offset=offset, end=offset + size, completed=completed, claimed=completed))
            cursor = offset + size
        if cursor != dl.size:
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    dl.parts = parts
    return True


def _write_sidecar(dl: _BlobDownload, fd: int | None) -> None:
    """Record progress. The data it counts is fsynced first, so the record never runs ahead of the file."""
    state = dl.snapshot()  # taken before the sync: every byte it counts was already written
    if fd is not None:
        _datasync(fd)
    tmp = dl.sidecar.with_name(dl.sidecar.name + ".tmp")
    try:
        tmp.write_text(json.dumps(state))
        os.replace(tmp, dl.sidecar)
    except BaseException:  # a full disk, say: no half-written record stays behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _plan_parts(size: int, parts: int, part_size_min: int) -> list[_Part]:
    if size < 2 * part_size_min or parts <= 1:
        return [_Part(0, size)]
    count = max(1, min(parts, size // part_size_min))
    step = -(-size // count)
    return [_Part(off, min(off + step, size)) for off in range(0, size, step)]


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return f"sha256:{hashlib.file_digest(fh, 'sha256').hexdigest()}"


# Portability: Windows has no pwrite and opens descriptors in text mode unless told O_BINARY; macOS
# has no fdatasync; Windows flushes a file (FlushFileBuffers) only through a handle open for writing.
_O_BINARY = getattr(os, "O_BINARY", 0)
_seek_write_lock = threading.Lock()


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, offset)
        return
    with _seek_write_lock:  # the parts' threads share one descriptor and so one file position
        os.lseek(fd, offset, os.SEEK_SET)
        os.write(fd, data)


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, (os.O_RDWR if sys.platform == "win32" else os.O_RDONLY) | _O_BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verify(path: Path) -> str:
    """Flush the file to disk (it must be durable before it is renamed) and return its sha256."""
    _fsync_file(path)
    return _sha256_file(path)


class _Throttle:
    """A shared pace for all parts, in bytes per second (for tests and for users on a shared line)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.sent = 0

    def take(self, n: int) -> None:
        with self.lock:
            self.sent += n
            due = self.start + self.sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
