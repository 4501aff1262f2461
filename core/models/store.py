"""The model store: content-addressed blobs and manifests on disk, in Ollama's layout.

    <root>/blobs/sha256-<hex>
    <root>/manifests/<host>/<namespace>/<model>/<tag>
    <root>/unpacked/sha256-<hex>/     a folder-valued blob (an ONNX model's tar), unpacked on first use

Every write goes to a temporary file in the same directory, is fsynced and renamed into place;
blobs are verified by sha256 before they become visible. A lock file serialises writers.

Every temporary file or folder Corral makes in the store is named ``.tmp-<owner>-<kind>-...``:
``<owner>`` is a token whose lock file (``.owners/<owner>.lock``) the making process holds for as
long as it lives, so ``corral.models.prune`` can remove what a killed process left without touching
what a running one is writing. A write that finds the disk full raises ``StorageFull`` (one line:
the store, the bytes needed) after removing its temporary file.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from filelock import FileLock
from filelock import Timeout as LockTimeout
from pydantic import BaseModel, Field

from corral.errors import BadRequest, CorralError, ModelNotFound, StorageFull
from corral.models.names import ModelName

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
# Corral's own: an onnxruntime-genai model folder as one deterministic tar (see corral.models.onnx_layer)
MEDIA_ONNX = "application/vnd.corral.onnx.model"

_CHUNK = 1 << 20
_BLOB_NAME = re.compile(r"^sha256-[0-9a-f]{64}$")
TEMP_PREFIX = ".tmp-"
OWNERS_DIR = ".owners"
TEMP_NAME = re.compile(r"^\.tmp-(?P<owner>[0-9a-f]{16})-")


class Layer(BaseModel):
    mediaType: str
    digest: str
    size: int
    from_: str | None = Field(None, alias="from", exclude=True)


class Manifest(BaseModel):
    schemaVersion: int = 2
    mediaType: str = MANIFEST_MEDIA_TYPE
    config: Layer
    layers: list[Layer]

    def layer(self, media_type: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.mediaType == media_type), None)

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    manifest: Manifest
    manifest_digest: str
    modified_at: datetime


def check_digest(digest: str) -> str:
    """Accept ``sha256:<64 hex>`` (or Ollama's ``sha256-`` file spelling); anything else could escape the store."""
    algo, _, hexpart = digest.replace("-", ":", 1).partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise BadRequest(f"invalid digest '{digest}': expected sha256:<64 lowercase hex digits>")
    return f"sha256:{hexpart}"


def fsync_dir(path: Path) -> None:
    if sys.platform == "win32":  # Windows cannot open a directory; NTFS orders the rename itself
        return
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(root: Path, action: str, needed: int, *, at_least: bool = False) -> StorageFull:
    """The one-line error for a write that found the store's disk full."""
    try:
        free = f"{shutil.disk_usage(root if root.exists() else root.parent).free} bytes free"
    except OSError:
        free = "free space unknown"
    amount = f"{'at least ' if at_least else ''}{needed} bytes"
    return StorageFull(f"not enough disk space to {action}: {amount} needed in the store {root} ({free})")


def replace(src: str | Path, dst: str | Path, *, attempts: int = 50) -> None:
    """``os.replace``, retried on Windows while another process holds ``dst`` open (a reader that
    opened it without FILE_SHARE_DELETE makes the rename fail with PermissionError until it closes)."""
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if sys.platform != "win32" or attempt == attempts - 1:
                raise
            time.sleep(min(0.01 * 2**attempt, 0.5))


def windows_long_path(path: str) -> str:
    r"""An absolute Windows path in the ``\\?\`` form, which lifts the 260-character MAX_PATH limit
    (a store path plus a 253-character registry host and three 80-character name parts can pass it)."""
    if path.startswith("\\\\?\\"):
        return path
    if path.startswith("\\\\"):  # \\server\share\... -> \\?\UNC\server\share\...
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


# A registry host's port (``localhost:5000``) cannot be in a Windows file name (':' names an NTFS
# stream), so there the host's folder spells it ``%3A``; '%' can never be in a host, so it reads back.
_COLON_ON_WINDOWS = "%3A"


def manifest_parts(name: ModelName, *, windows: bool | None = None) -> tuple[str, str, str, str]:
    """The four folder names of a model's manifest path under ``manifests/``."""
    host, namespace, model, tag = name.path_parts()
    if sys.platform == "win32" if windows is None else windows:
        host = host.replace(":", _COLON_ON_WINDOWS)
    return host, namespace, model, tag


# ---- temporary files, each tagged with a living owner --------------------------------------------

_owners: dict[Path, tuple[str, FileLock]] = {}
_owners_lock = threading.Lock()


def owner_token(root: Path) -> str:
    """This process's token in the store at ``root``; its lock is held until the process exits
    (the operating system releases it even after SIGKILL), which is how a prune tells the living
    from the dead. A forked child shares the lock, so it stays held while either runs."""
    with _owners_lock:
        held = _owners.get(root)
        if held is None:
            (root / OWNERS_DIR).mkdir(parents=True, exist_ok=True)
            token = secrets.token_hex(8)
            lock = FileLock(root / OWNERS_DIR / f"{token}.lock", timeout=0, thread_local=False)
            lock.acquire()
            held = _owners[root] = (token, lock)
        return held[0]


def owner_alive(root: Path, token: str) -> bool:
    """Whether the process that owns ``token`` still runs (this process counts as running)."""
    held = _owners.get(root)
    if held is not None and held[0] == token:
        return True
    return lock_held(root / OWNERS_DIR / f"{token}.lock")


def lock_held(path: Path) -> bool:
    """Whether a process holds the file lock at ``path`` now (a lock file left behind is no lock)."""
    if not path.exists():
        return False
    probe = FileLock(path, timeout=0, thread_local=False)
    try:
        probe.acquire()
    except LockTimeout:
        return True
    probe.release()
    return False


def temp_prefix(root: Path, kind: str) -> str:
    return f"{TEMP_PREFIX}{owner_token(root)}-{kind}-"


def make_temp_file(root: Path, directory: Path, kind: str, suffix: str = ".tmp") -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``directory`` (inside the store at ``root``), named for its owner."""
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=directory, prefix=temp_prefix(root, kind), suffix=suffix)


def temp_dir(root: Path, directory: Path, kind: str) -> tempfile.TemporaryDirectory[str]:
    """A ``TemporaryDirectory`` in ``directory`` (inside the store at ``root``), named for its owner."""
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=directory, prefix=temp_prefix(root, kind))


def _unlink_quietly(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_atomic(target: Path, data: bytes, *, root: Path, action: str | None = None) -> None:
    """Write ``data`` to a temp file beside ``target`` (in the store at ``root``), fsync it and rename
    it into place. A full disk raises ``StorageFull`` and leaves neither the temp file nor a changed ``target``."""
    fd, tmp = make_temp_file(root, target.parent, "write")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if is_disk_full(exc):
            raise disk_full(root, action or f"write {target.name}", len(data)) from None
        raise


class Store:
    def __init__(self, root: Path) -> None:
        root = Path(root).expanduser()
        if sys.platform == "win32":
            root = Path(windows_long_path(str(root.absolute())))
        self.root = root
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    def temp_file(self, directory: Path, kind: str, suffix: str = ".tmp") -> tuple[int, str]:
        return make_temp_file(self.root, directory, kind, suffix)

    def temp_dir(self, directory: Path, kind: str) -> tempfile.TemporaryDirectory[str]:
        return temp_dir(self.root, directory, kind)

    # ---- locking -------------------------------------------------------------------------
    def lock(self) -> FileLock:
        """One writer at a time across processes (create, pull, rm, cp)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / ".lock", timeout=600)

    # ---- blobs -----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).replace(":", "-")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def unpacked_path(self, digest: str) -> Path:
        """Where a folder-valued blob is unpacked: derived from the blob, removed with it."""
        return self.root / "unpacked" / check_digest(digest).replace(":", "-")

    def remove_blob(self, digest: str) -> bool:
        """Delete a blob and its unpacked copy; False if the blob was not there (or, on Windows, is
        open: a loaded model's file cannot be deleted there; unreferenced, it goes at the next prune).
        Callers hold the lock."""
        shutil.rmtree(self.unpacked_path(digest), ignore_errors=True)
        try:
            self.blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        except PermissionError:
            if sys.platform != "win32":
                raise
            return False
        return True

    def write_blob_stream(
        self,
        chunks: Iterator[bytes] | IO[bytes],
        expected: str | None = None,
        *,
        size_hint: int | None = None,
        action: str = "store a blob",
    ) -> Layer:
        """Store a stream of bytes; verify it against ``expected`` if given. Returns its digest and size.
        ``size_hint`` (the stream's length, when known) is what a full-disk error says is needed."""
        fd, tmp = self.temp_file(self.blobs, "incoming")
        if size_hint is not None and size_hint > shutil.disk_usage(self.blobs).free:  # fail before writing
            _unlink_quietly(tmp)
            raise disk_full(self.root, action, size_hint)
        sha, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                source = iter(lambda: chunks.read(_CHUNK), b"") if hasattr(chunks, "read") else chunks
                for chunk in source:
                    sha.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = f"sha256:{sha.hexdigest()}"
            if expected is not None and check_digest(expected) != digest:
                raise BadRequest(f"digest mismatch: expected {expected}, got {digest}")
            final = self.blob_path(digest)
            if final.is_file():  # the same bytes are already there (and may be open: Windows refuses the rename)
                _unlink_quietly(tmp)
            else:
                replace(tmp, final)
            fsync_dir(self.blobs)
            return Layer(mediaType="", digest=digest, size=size)
        except BaseException as exc:
            _unlink_quietly(tmp)
            if is_disk_full(exc):
                known = size_hint is not None and size_hint >= size
                raise disk_full(self.root, action, size_hint if known else size + _CHUNK, at_least=not known) from None  # type: ignore[arg-type]
            raise

    def write_blob_file(self, path: Path, media_type: str, *, action: str | None = None) -> Layer:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            layer = self.write_blob_stream(fh, size_hint=size, action=action or f"store {Path(path).name}")
        return layer.model_copy(update={"mediaType": media_type})

    def write_blob_bytes(self, data: bytes, media_type: str, *, action: str = "store a blob") -> Layer:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has_blob(digest):
            self.write_blob_stream(iter([data]), expected=digest, size_hint=len(data), action=action)
        return Layer(mediaType=media_type, digest=digest, size=len(data))

    def read_blob_text(self, digest: str) -> str:
        return self.blob_path(digest).read_text(encoding="utf-8")

    # ---- manifests -------------------------------------------------------------------------
    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*manifest_parts(name))

    def _find_manifest_path(self, name: ModelName) -> Path | None:
        """Exact path first, then a case-insensitive match (Ollama's names are case-insensitive)."""
        exact = self._manifest_path(name)
        if exact.is_file():
            return exact
        node = self.manifests
        for part in manifest_parts(name):
            if not node.is_dir():
                return None
            match = next((child for child in node.iterdir() if child.name.lower() == part.lower()), None)
            if match is None:
                return None
            node = match
        return node if node.is_file() else None

    def write_manifest(self, name: ModelName, manifest: Manifest, *, action: str | None = None) -> None:
        missing = [d for d in manifest.digests() if not self.has_blob(d)]
        if missing:
            raise CorralError(f"refusing to write a manifest whose blobs are missing: {', '.join(missing)}")
        target = self._find_manifest_path(name) or self._manifest_path(name)
        action = action or f"write the manifest of {name.display}"
        write_atomic(target, manifest.to_bytes(), root=self.root, action=action)

    def get(self, name: ModelName | str) -> StoredModel:
        model_name = ModelName.parse(name) if isinstance(name, str) else name
        path = self._find_manifest_path(model_name)
        if path is None:
            raise ModelNotFound(f"model '{model_name.display if isinstance(name, ModelName) else name}' not found")
        return self._load(path)

    def exists(self, name: ModelName) -> bool:
        return self._find_manifest_path(name) is not None

    def name_at(self, path: Path) -> ModelName:
        """The model whose manifest is at ``path``."""
        host, namespace, model, tag = path.relative_to(self.manifests).parts
        return ModelName(host.replace(_COLON_ON_WINDOWS, ":"), namespace, model, tag)

    def _load(self, path: Path) -> StoredModel:
        data = path.read_bytes()
        try:
            manifest = Manifest.model_validate_json(data)
        except ValueError as exc:
            raise CorralError(f"corrupt manifest {path}: {exc}") from None
        return StoredModel(
            name=self.name_at(path),
            manifest=manifest,
            manifest_digest=f"sha256:{hashlib.sha256(data).hexdigest()}",
            modified_at=datetime.fromtimestamp(path.stat().st_mtime, tz=UTC),
        )

    def list(self) -> list[StoredModel]:
        if not self.manifests.is_dir():
            return []
        models = []
        for path in self.manifests.glob("*/*/*/*"):
            if path.is_file() and not path.name.startswith("."):
                with contextlib.suppress(CorralError, OSError):
                    models.append(self._load(path))
        return sorted(models, key=lambda m: m.modified_at, reverse=True)

    def delete(self, name: ModelName) -> None:
        """Remove a manifest, then those of its blobs no remaining manifest references. Other
        unreferenced blobs stay: they may be uploads for a create that has not run yet."""
        with self.lock():
            path = self._find_manifest_path(name)
            if path is None:
                raise ModelNotFound(f"model '{name.display}' not found")
            own = self._load(path).manifest.digests()
            path.unlink()
            fsync_dir(path.parent)
            for parent in path.parents:  # drop empty model/namespace/host folders
                if parent == self.manifests or any(parent.iterdir()):
                    break
                parent.rmdir()
            self.prune(own)

    # builtins.list: inside this class, a bare `list` is the method Store.list.
    def prune(self, candidates: set[str] | None = None) -> builtins.list[str]:
        """Delete unreferenced blobs (among ``candidates`` if given). Callers hold the lock. Only
        complete blobs (``sha256-<64 hex>``) are candidates: a pull's ``-partial`` files are not."""
        referenced = set().union(*(m.manifest.digests() for m in self.list()))
        removed = []
        if self.blobs.is_dir():
            for blob in self.blobs.iterdir():
                digest = blob.name.replace("-", ":", 1)
                if not _BLOB_NAME.match(blob.name) or digest in referenced:
                    continue
                if (candidates is None or digest in candidates) and self.remove_blob(digest):
                    removed.append(blob.name)
        return removed
