"""The model store: content-addressed blobs and manifests on disk, in Ollama's layout.

    <root>/blobs/sha256-<hex>
    <root>/manifests/<host>/<namespace>/<model>/<tag>
    <root>/unpacked/sha256-<hex>/     a folder-valued blob (an ONNX model's tar), unpacked on first use

Every write goes to a temporary file in the same directory, is fsynced and renamed into place;
blobs are verified by sha256 before they become visible. A lock file serialises writers.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from filelock import FileLock
from pydantic import BaseModel, Field

from corral.errors import BadRequest, CorralError, ModelNotFound
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
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    """Write to a temp file beside ``target``; fsync and rename only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

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
        """Delete a blob and its unpacked copy; False if the blob was not there. Callers hold the lock."""
        shutil.rmtree(self.unpacked_path(digest), ignore_errors=True)
        try:
            self.blob_path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def write_blob_stream(self, chunks: Iterator[bytes] | IO[bytes], expected: str | None = None) -> Layer:
        """Store a stream of bytes; verify it against ``expected`` if given. Returns its digest and size."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-", suffix=".tmp")
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
            os.replace(tmp, self.blob_path(digest))
            fsync_dir(self.blobs)
            return Layer(mediaType="", digest=digest, size=size)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_blob_file(self, path: Path, media_type: str) -> Layer:
        with open(path, "rb") as fh:
            layer = self.write_blob_stream(fh)
        return layer.model_copy(update={"mediaType": media_type})

    def write_blob_bytes(self, data: bytes, media_type: str) -> Layer:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.has_blob(digest):
            self.write_blob_stream(iter([data]), expected=digest)
        return Layer(mediaType=media_type, digest=digest, size=len(data))

    def read_blob_text(self, digest: str) -> str:
        return self.blob_path(digest).read_text(encoding="utf-8")

    # ---- manifests -------------------------------------------------------------------------
    def _manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.path_parts())

    def _find_manifest_path(self, name: ModelName) -> Path | None:
        """Exact path first, then a case-insensitive match (Ollama's names are case-insensitive)."""
        exact = self._manifest_path(name)
        if exact.is_file():
            return exact
        node = self.manifests
        for part in name.path_parts():
            if not node.is_dir():
                return None
            match = next((child for child in node.iterdir() if child.name.lower() == part.lower()), None)
            if match is None:
                return None
            node = match
        return node if node.is_file() else None

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        missing = [d for d in manifest.digests() if not self.has_blob(d)]
        if missing:
            raise CorralError(f"refusing to write a manifest whose blobs are missing: {', '.join(missing)}")
        target = self._find_manifest_path(name) or self._manifest_path(name)
        with atomic_writer(target) as fh:
            fh.write(manifest.to_bytes())

    def get(self, name: ModelName | str) -> StoredModel:
        model_name = ModelName.parse(name) if isinstance(name, str) else name
        path = self._find_manifest_path(model_name)
        if path is None:
            raise ModelNotFound(f"model '{model_name.display if isinstance(name, ModelName) else name}' not found")
        return self._load(path)

    def exists(self, name: ModelName) -> bool:
        return self._find_manifest_path(name) is not None

    def _load(self, path: Path) -> StoredModel:
        data = path.read_bytes()
        try:
            manifest = Manifest.model_validate_json(data)
        except ValueError as exc:
            raise CorralError(f"corrupt manifest {path}: {exc}") from None
        parts = path.relative_to(self.manifests).parts
        return StoredModel(
            name=ModelName(*parts),
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
