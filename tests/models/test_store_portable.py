"""The store's Windows and macOS code paths, simulated where that is honest: Windows path rules with
PureWindowsPath, an ``os`` module without the POSIX-only calls, Windows' refusal to rename over an open file."""

from __future__ import annotations

import os
import sys
from pathlib import Path, PureWindowsPath

import pytest
from test_registry import serve_model  # type: ignore[import-not-found]

import corral.models.store as store_module
from corral.models.names import ModelName
from corral.models.registry import pull
from corral.models.store import Store, manifest_parts, replace, windows_long_path
from corral.models.verify import verify_store
from registry_fixture import FakeRegistry, fake_registry  # noqa: F401 - fixture

WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
MiB = 1 << 20


def test_long_windows_paths_get_the_extended_prefix() -> None:
    home = PureWindowsPath(r"C:\Users\somebody\.corral\models")
    assert windows_long_path(str(home)) == r"\\?\C:\Users\somebody\.corral\models"
    assert windows_long_path(r"\\nas\share\models") == r"\\?\UNC\nas\share\models"
    assert windows_long_path(r"\\?\C:\already") == r"\\?\C:\already"
    name = ModelName.parse(f"{'r' * 60}.example.com:5000/{'n' * 80}/{'m' * 80}:{'t' * 80}")
    manifest = PureWindowsPath(windows_long_path(str(home))).joinpath("manifests", *manifest_parts(name, windows=True))
    assert len(str(manifest)) > 260  # past MAX_PATH, which the \\?\ form lifts
    assert str(manifest).startswith("\\\\?\\C:\\") and manifest.drive == "\\\\?\\C:"


def test_no_store_file_name_has_a_character_windows_forbids(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    name = ModelName.parse("localhost:5000/me/model:v1")
    parts = manifest_parts(name, windows=True)
    assert parts == ("localhost%3A5000", "me", "model", "v1")
    digest = "sha256:" + "ab" * 32
    for part in [*parts, store.blob_path(digest).name, f"{store.blob_path(digest).name}-partial.json"]:
        assert not WINDOWS_FORBIDDEN & set(part), part
    # the folder name reads back as the host, port included
    assert store.name_at(store.manifests.joinpath(*parts)) == name
    assert manifest_parts(name, windows=False)[0] == "localhost:5000"  # elsewhere: Ollama's own layout


def test_replace_waits_for_a_reader_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows refuses to rename over a file another process has open; the rename is retried."""
    src, dst = tmp_path / "new", tmp_path / "manifest"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    real, refusals = os.replace, []

    def refuse_twice(a: str | Path, b: str | Path) -> None:
        if len(refusals) < 2:
            refusals.append(b)
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        real(a, b)

    monkeypatch.setattr(os, "replace", refuse_twice)
    monkeypatch.setattr(sys, "platform", "win32")
    replace(src, dst)
    assert dst.read_bytes() == b"new" and len(refusals) == 2

    monkeypatch.setattr(sys, "platform", "linux")  # on POSIX a PermissionError is real: no retry
    refusals.clear()
    src.write_bytes(b"newer")
    with pytest.raises(PermissionError):
        replace(src, dst)


def test_fsync_dir_opens_no_directory_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_open(*args: object) -> int:
        raise AssertionError("Windows cannot open a directory")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "open", no_open)
    store_module.fsync_dir(tmp_path)


@pytest.mark.parametrize("missing", [("pwrite",), ("fdatasync",), ("pwrite", "fdatasync")])
def test_pull_without_posix_only_calls(
    fake_registry: FakeRegistry,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    missing: tuple[str, ...],
) -> None:
    """Windows has no os.pwrite, macOS no os.fdatasync: a parallel, ranged pull still lands every byte."""
    for name in missing:
        monkeypatch.delattr(os, name, raising=False)
    manifest = serve_model(fake_registry, "me/portable", "v1", os.urandom(5 * MiB + 3))
    store = Store(tmp_path / "models")
    model = ModelName.parse(f"{fake_registry.host}/me/portable:v1")
    stats = pull(store, model, insecure=True, parts=4, part_size_min=MiB, checkpoint_interval=0.01)
    assert stats.blobs_downloaded == 3
    assert store.get(model).manifest == manifest
    assert verify_store(store).ok
