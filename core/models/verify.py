"""Check that the store is whole: every manifest readable, every blob it names present with its sha256.

``verify_store`` re-hashes each blob once (models share blobs) and reports the damage by model.
With ``repair=True`` a corrupt blob is moved aside into ``<store>/corrupt/`` (never deleted: it is
the user's data, and the evidence), so the model's blob counts as missing and the next ``pull``
fetches it again; a missing blob needs no repair for that.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import CorralError, ModelNotFound
from corral.models.names import ModelName
from corral.models.store import Manifest, Store, fsync_dir, replace

_CHUNK = 4 << 20
CORRUPT_DIR = "corrupt"

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Damage:
    digest: str  # the blob, or "" for the manifest itself
    problem: str  # "missing", "corrupt", or "unreadable manifest"
    detail: str = ""

    def describe(self) -> str:
        if not self.digest:
            return f"the manifest cannot be read: {self.detail}"
        text = f"blob {self.digest} is {self.problem}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class ModelReport:
    name: str
    damage: list[Damage] = field(default_factory=list)


@dataclass
class VerifyReport:
    models: list[ModelReport]
    blobs: int = 0  # distinct blobs checked
    bytes: int = 0  # bytes hashed
    moved: dict[str, Path] = field(default_factory=dict)  # digest -> where the corrupt blob went

    @property
    def damaged(self) -> list[ModelReport]:
        return [m for m in self.models if m.damage]

    @property
    def ok(self) -> bool:
        return not self.damaged


@dataclass(frozen=True)
class _Target:
    name: str
    manifest: Manifest | None
    error: str = ""


def _targets(store: Store, names: list[str] | None) -> list[_Target]:
    if names:
        found = []
        for text in names:
            try:
                stored = store.get(ModelName.parse(text))
            except ModelNotFound:
                raise ModelNotFound(f"model '{text}' not found in the store {store.root}") from None
            found.append(_Target(stored.name.display, stored.manifest))
        return found
    targets = []
    if store.manifests.is_dir():
        for path in sorted(store.manifests.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            display = store.name_at(path).display
            try:
                targets.append(_Target(display, Manifest.model_validate_json(path.read_bytes())))
            except (OSError, ValueError) as exc:
                targets.append(_Target(display, None, str(exc).splitlines()[0]))
    return targets


def planned_bytes(store: Store, names: list[str] | None = None) -> int:
    """Bytes ``verify_store`` will hash: for a progress bar's total."""
    sizes = {}
    for target in _targets(store, names):
        for digest in target.manifest.digests() if target.manifest else ():
            path = store.blob_path(digest)
            sizes[digest] = path.stat().st_size if path.is_file() else 0
    return sum(sizes.values())


def _hash(path: Path, advance: Advance) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            advance(len(chunk))
    return f"sha256:{sha.hexdigest()}"


def _check_blob(store: Store, digest: str, advance: Advance) -> tuple[Damage | None, int]:
    path = store.blob_path(digest)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return Damage(digest, "missing"), 0
    actual = _hash(path, advance)
    if actual != digest:
        return Damage(digest, "corrupt", f"its content hashes to {actual}"), actual_size
    return None, actual_size


def _present(store: Store, digest: str) -> bool:
    try:
        return store.blob_path(digest).is_file()
    except CorralError:  # not a sha256 digest: there is no file to move
        return False


def _move_aside(store: Store, digest: str) -> Path:
    """Move a corrupt blob out of ``blobs/`` (and drop its unpacked copy); returns where it went."""
    aside = store.root / CORRUPT_DIR
    aside.mkdir(parents=True, exist_ok=True)
    blob = store.blob_path(digest)
    target = aside / f"{blob.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    with store.lock():
        try:
            replace(blob, target)
        except PermissionError:  # Windows: a loaded model holds the file open
            raise CorralError(
                f"cannot move the corrupt blob {digest} aside: it is in use; "
                "stop the model that uses it, then repair again"
            ) from None
        store.remove_blob(digest)  # the unpacked copy (the blob itself is already gone)
        fsync_dir(store.blobs)
    return target


def verify_store(
    store: Store, names: list[str] | None = None, *, repair: bool = False, advance: Advance = lambda n: None
) -> VerifyReport:
    """Verify the named models (all when ``names`` is empty); ``advance`` is told each hashed chunk's size."""
    targets = _targets(store, names)
    report = VerifyReport(models=[ModelReport(t.name) for t in targets])
    results: dict[str, Damage | None] = {}
    for target, model in zip(targets, report.models, strict=True):
        if target.manifest is None:
            model.damage.append(Damage("", "unreadable manifest", target.error))
            continue
        layers = [target.manifest.config, *target.manifest.layers]
        for layer in layers:
            if layer.digest not in results:
                try:
                    damage, hashed = _check_blob(store, layer.digest, advance)
                except OSError as exc:  # an unreadable blob (I/O error) is as bad as a corrupt one
                    damage, hashed = Damage(layer.digest, "corrupt", f"cannot be read: {exc.strerror or exc}"), 0
                except CorralError as exc:  # a digest in the manifest that is not a sha256
                    damage, hashed = Damage(layer.digest, "corrupt", str(exc)), 0
                results[layer.digest] = damage
                report.blobs += 1
                report.bytes += hashed
                if repair and damage is not None and damage.problem == "corrupt" and _present(store, layer.digest):
                    report.moved[layer.digest] = _move_aside(store, layer.digest)
            found = results[layer.digest]
            if found is not None and found not in model.damage:
                model.damage.append(found)
    return report
