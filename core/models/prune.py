"""Prune the store when ``corral serve`` starts: what crashed processes left, and what nothing uses.

Removed:
- temporary files and folders (``.tmp-<owner>-...``, anywhere in the store) whose owner has exited:
  the owner's lock in ``.owners/`` is free, so the process that wrote them is gone (even if it was
  killed with SIGKILL); those of a running process are never touched;
- a pull's resumable parts (``sha256-<hex>-partial`` and its ``.json``) last written more than
  ``PARTIAL_KEEP`` ago, or whose blob is complete anyway; parts that a running pull holds the
  blob lock of, and younger ones, stay so that the next pull resumes them;
- complete blobs that no manifest references, once they are older than ``BLOB_GRACE`` (a younger
  one may be an upload whose ``create`` has not run yet -- Ollama waits an hour too); this step
  takes the store's writer lock, and is skipped when another process holds it or a manifest
  cannot be read (its blobs would look unreferenced);
- unpacked copies of blobs that are gone, and empty manifest folders.

Files Corral does not know (such as Ollama's own ``-partial-N`` chunks in a shared store) stay.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import Timeout as LockTimeout

from corral.models.store import OWNERS_DIR, TEMP_NAME, Manifest, Store, lock_held, owner_alive

PARTIAL_KEEP = 24 * 3600.0  # a pull interrupted today resumes tomorrow; Ollama keeps partials an hour
BLOB_GRACE = 3600.0  # Ollama's layerPruneGracePeriod

_PARTIAL = re.compile(r"^(?P<blob>sha256-[0-9a-f]{64})-partial(\.json(\.tmp)?)?$")
_BLOB = re.compile(r"^sha256-[0-9a-f]{64}$")


@dataclass
class PruneReport:
    removed: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)  # kind -> (path, bytes)
    kept_partials: list[tuple[Path, int]] = field(default_factory=list)
    skipped: str | None = None  # why unreferenced blobs were not looked at, if they were not

    def add(self, kind: str, path: Path, size: int) -> None:
        self.removed.setdefault(kind, []).append((path, size))

    @property
    def bytes_removed(self) -> int:
        return sum(size for items in self.removed.values() for _, size in items)

    @property
    def count(self) -> int:
        return sum(len(items) for items in self.removed.values())

    def summary(self, root: Path) -> str:
        """One log line: what was removed and how many bytes (and what was kept on purpose)."""
        kinds = ", ".join(f"{len(items)} {kind}" for kind, items in self.removed.items())
        line = f"pruned the store {root}: "
        line += f"removed {kinds} ({self.bytes_removed} bytes)" if self.removed else "nothing to remove"
        if self.kept_partials:
            kept = sum(size for _, size in self.kept_partials)
            line += (
                f"; kept {len(self.kept_partials)} resumable pull file(s) "
                f"({kept} bytes, younger than {PARTIAL_KEEP / 3600:g} h)"
            )
        if self.skipped:
            line += f"; unreferenced blobs not checked: {self.skipped}"
        return line


def _size(path: Path) -> int:
    """Bytes a file or a folder tree takes (what removing it gives back)."""
    try:
        if path.is_symlink() or not path.is_dir():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _remove(path: Path) -> int:
    size = _size(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def prune_store(
    store: Store, *, now: float | None = None, partial_keep: float = PARTIAL_KEEP, blob_grace: float = BLOB_GRACE
) -> PruneReport:
    """Remove what the module docstring lists; returns what was removed."""
    report = PruneReport()
    if not store.root.is_dir():
        return report
    now = time.time() if now is None else now
    _prune_temporaries(store, report)
    _prune_partials(store, report, now, partial_keep)
    _prune_unreferenced(store, report, now, blob_grace)
    _prune_unpacked(store, report)
    return report


def _prune_temporaries(store: Store, report: PruneReport) -> None:
    alive: dict[str, bool] = {}
    for folder, dirs, files in os.walk(store.root):
        here = Path(folder)
        for name in [*dirs, *files]:
            match = TEMP_NAME.match(name)
            if match is None:
                continue
            owner = match["owner"]
            if owner not in alive:
                alive[owner] = owner_alive(store.root, owner)
            if not alive[owner]:
                report.add("temporary file(s) of stopped processes", here / name, _remove(here / name))
        dirs[:] = [d for d in dirs if not TEMP_NAME.match(d) and d != OWNERS_DIR]
    for lock in (store.root / OWNERS_DIR).glob("*.lock"):
        if not owner_alive(store.root, lock.stem):
            with contextlib.suppress(OSError):
                lock.unlink()


def _pull_running(store: Store, blob: str) -> bool:
    return lock_held(store.root / ".pulls" / f"{blob}.lock")


def _prune_partials(store: Store, report: PruneReport, now: float, keep: float) -> None:
    if not store.blobs.is_dir():
        return
    groups: dict[str, list[Path]] = {}
    for path in store.blobs.iterdir():
        match = _PARTIAL.match(path.name)
        if match is not None:
            groups.setdefault(match["blob"], []).append(path)
    for blob, paths in groups.items():
        if _pull_running(store, blob):
            continue
        newest = max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)
        complete = (store.blobs / blob).is_file()
        if complete or now - newest > keep:
            for path in paths:
                report.add("stale pull part(s)", path, _remove(path))
        else:
            report.kept_partials += [(p, _size(p)) for p in paths]


def _referenced(store: Store) -> set[str] | None:
    """Every digest a manifest names, or None when a manifest cannot be read."""
    digests: set[str] = set()
    if not store.manifests.is_dir():
        return digests
    for folder, _dirs, files in os.walk(store.manifests):
        for name in files:
            if name.startswith("."):
                continue
            try:
                digests |= Manifest.model_validate_json(Path(folder, name).read_bytes()).digests()
            except (OSError, ValueError):
                return None
    return digests


def _prune_unreferenced(store: Store, report: PruneReport, now: float, grace: float) -> None:
    """Under the writer lock, so no create, copy or pull is between writing a blob and its manifest."""
    lock = store.lock()
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        report.skipped = "another process is writing to the store"
        return
    try:
        _prune_empty_folders(store.manifests)
        referenced = _referenced(store)
        if referenced is None:
            report.skipped = "a manifest cannot be read (run `corral verify`)"
            return
        if not store.blobs.is_dir():
            return
        for path in store.blobs.iterdir():
            if not _BLOB.match(path.name) or path.name.replace("-", ":", 1) in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > grace:
                    size = _size(path)
                    if store.remove_blob(path.name):
                        report.add("unreferenced blob(s)", path, size)
    finally:
        lock.release()


def _prune_unpacked(store: Store, report: PruneReport) -> None:
    unpacked = store.root / "unpacked"
    if not unpacked.is_dir():
        return
    for path in unpacked.iterdir():
        if _BLOB.match(path.name) and not (store.blobs / path.name).is_file():
            report.add("unpacked copies of removed blobs", path, _remove(path))


def _prune_empty_folders(manifests: Path) -> None:
    if not manifests.is_dir():
        return
    for folder, _dirs, _files in os.walk(manifests, topdown=False):
        if Path(folder) != manifests:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # fails, as it should, when the folder is not empty
