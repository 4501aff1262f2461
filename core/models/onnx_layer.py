"""ONNX models in the store: an onnxruntime-genai folder kept as one layer, a tar of the folder.

The store holds content-addressed blobs (Ollama's layout, pushed and pulled as OCI layers) and a genai
model is a folder, so the folder travels as a tar with media type ``MEDIA_ONNX``. The tar is
deterministic (sorted names, zeroed times and owners, fixed modes), so one folder always gives one
digest and creating the same model twice writes nothing new. It is unpacked once, on first use, into
``Store.unpacked_path(digest)`` — a temporary folder renamed into place, so a crash leaves either
nothing or the whole folder — and that copy is deleted with its blob.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from corral.errors import BadRequest, InvalidModelFile
from corral.formats.onnx import PROVENANCE, VOCAB_GGUF, is_genai_folder, read_json
from corral.formats.units import param_size
from corral.models.store import Store, fsync_dir

GENAI_CONFIG = "genai_config.json"


def pack(folder: Path, out: IO[bytes]) -> None:
    """Write ``folder`` (regular files and folders only) to ``out`` as a deterministic tar."""
    folder = Path(folder)
    if not is_genai_folder(folder):
        raise InvalidModelFile(f"{folder}: not an onnxruntime-genai model folder (it has no {GENAI_CONFIG})")
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise InvalidModelFile(f"{path}: an ONNX model folder may hold only regular files and folders")
            info = tar.gettarinfo(str(path), arcname=rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)


def pack_to_temp(folder: Path, directory: Path, *, store: Store | None = None) -> Path:
    """``pack`` into a new temporary file in ``directory`` (named for its owner when it is in ``store``,
    so a prune can remove it if this process dies); the caller removes it."""
    directory.mkdir(parents=True, exist_ok=True)
    if store is not None:
        fd, tmp = store.temp_file(directory, "onnx-pack", ".tar.tmp")
    else:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".onnx-", suffix=".tar.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pack(folder, fh)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _members(tar: tarfile.TarFile, label: str) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()):
            raise InvalidModelFile(f"{label}: the ONNX model holds {m.name!r}, which is not a file or a folder")
    if not any(m.name == GENAI_CONFIG and m.isfile() for m in members):
        raise InvalidModelFile(f"{label}: not an ONNX model layer (no {GENAI_CONFIG} at its top)")
    return members


def is_onnx_tar(path: Path) -> bool:
    """Whether ``path`` is a tar holding a genai folder (an uploaded or stored ONNX layer)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            _members(tar, str(path))
    except (tarfile.TarError, InvalidModelFile, OSError):
        return False
    return True


def unpacked(store: Store, digest: str) -> Path:
    """The folder of an ONNX layer, unpacking its blob on first use."""
    final = store.unpacked_path(digest)
    if (final / GENAI_CONFIG).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with store.temp_dir(final.parent, "unpack") as tmp:
        work = Path(tmp) / "model"
        blob = store.blob_path(digest)
        try:
            with tarfile.open(blob, mode="r:") as tar:
                # "data" refuses absolute names, "..", links out of the folder and device files.
                tar.extractall(work, members=_members(tar, digest), filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise InvalidModelFile(
                f"the ONNX layer {digest} cannot be unpacked ({exc}): pull or create it again"
            ) from None
        _fsync_files(work)
        try:
            os.replace(work, final)
        except OSError:
            if not (final / GENAI_CONFIG).is_file():  # another process unpacked it first: theirs is as good
                raise
        fsync_dir(final.parent)
    return final


def adopt(store: Store, digest: str, folder: Path) -> None:
    """Move ``folder``, the contents of the layer ``digest``, into place as its unpacked copy (a rename
    within the store's file system), so that the first load need not unpack the tar again."""
    final = store.unpacked_path(digest)
    if (final / GENAI_CONFIG).is_file():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    _fsync_files(folder)
    with contextlib.suppress(OSError):  # another process unpacked it first: theirs is as good
        os.replace(folder, final)
        fsync_dir(final.parent)


def _fsync_files(folder: Path) -> None:
    """On disk before the folder is renamed into place: a crash must not leave a complete-looking copy."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "r+b" if sys.platform == "win32" else "rb") as fh:  # Windows flushes only a writable handle
                os.fsync(fh.fileno())


def onnx_config_blob(folder: Path, source_meta: dict[str, Any] | None = None) -> bytes:
    """The config layer for an ONNX model: Ollama's fields, with ``model_format`` "onnx" and the
    builder's precision as the quantization level."""
    provenance = read_json(folder / PROVENANCE)
    genai = read_json(folder / GENAI_CONFIG).get("model", {})
    meta = source_meta
    if meta is None and (folder / VOCAB_GGUF).is_file():
        from corral.formats.gguf import read_metadata

        meta = read_metadata(folder / VOCAB_GGUF)
    meta = meta or {}
    family = str(meta.get("general.architecture") or genai.get("type") or "")
    count = meta.get("general.parameter_count")
    config = {
        "model_format": "onnx",
        "model_family": family,
        "model_families": [family] if family else None,
        "model_type": param_size(int(count)) if count else "",
        "file_type": str(provenance.get("precision", "")).upper(),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return json.dumps(config, separators=(",", ":")).encode()


def precision_of(folder: Path) -> str:
    """The weights' precision as the converter recorded it ("INT8"), or "ONNX" for a folder from elsewhere."""
    return str(read_json(Path(folder) / PROVENANCE).get("precision", "onnx")).upper()


def check_folder(folder: Path, label: str) -> None:
    if not is_genai_folder(folder):
        raise BadRequest(f"{label}: {folder} is a directory but not an ONNX model folder (it has no {GENAI_CONFIG})")
