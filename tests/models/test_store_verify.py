"""`corral verify`: a flipped byte is found and named by model; --repair plus a pull makes the model whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_registry import make_model  # type: ignore[import-not-found]

from corral.models.names import ModelName
from corral.models.registry import pull, push
from corral.models.store import MEDIA_MODEL, Store
from corral.models.verify import verify_store
from registry_fixture import registry  # noqa: F401 - fixture

MiB = 1 << 20


def corral(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    env.pop("CORRAL_MODELS", None)
    return subprocess.run(
        [sys.executable, "-m", "corral.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )


def flip_a_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_flipped_byte_found_repaired_and_pulled_again(registry: str, tmp_path: Path) -> None:  # noqa: F811
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/verified:v1")
    manifest = make_model(source, name, os.urandom(3 * MiB + 7))
    push(source, name, insecure=True)

    home = tmp_path / "home"
    store = Store(home / "models")
    pull(store, name, insecure=True)
    other = ModelName.parse("untouched:v1")
    make_model(store, other, os.urandom(1000), template="other {{ .Prompt }}")

    mine = manifest.digests() | store.get(other).manifest.digests()
    hashed = sum(store.blob_path(d).stat().st_size for d in mine)
    clean = corral(home, "verify")
    assert clean.returncode == 0 and clean.stderr == ""
    assert clean.stdout == f"all whole: 2 model(s), {len(mine)} blob(s), {hashed} bytes hashed\n"
    weights = manifest.layer(MEDIA_MODEL)
    assert weights is not None
    flip_a_byte(store.blob_path(weights.digest), 1_234_567)

    found = corral(home, "verify")
    assert found.returncode == 1
    assert found.stdout.splitlines()[0].startswith(
        f"{name.display}: blob {weights.digest} is corrupt (its content hashes to sha256:"
    )
    assert "untouched" not in found.stdout
    assert found.stderr.strip().splitlines()[-1] == (
        f"Error: 1 of 2 model(s) damaged ({name.display}): `corral verify --repair`, then pull (or create) them again"
    )
    assert corral(home, "verify", "untouched:v1").returncode == 0  # a named subset checks only that model

    repaired = corral(home, "verify", "--repair", name.display)
    assert repaired.returncode == 1  # moved aside is not whole yet
    moved = store.root / "corrupt"
    aside = list(moved.iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(weights.digest.replace(":", "-"))
    assert f"moved the corrupt blob {weights.digest} aside to {aside[0]}" in repaired.stdout
    assert not store.blob_path(weights.digest).exists()

    missing = corral(home, "verify", name.display)
    assert missing.returncode == 1 and missing.stdout == f"{name.display}: blob {weights.digest} is missing\n"

    stats = pull(store, name, insecure=True)
    assert stats.blobs_downloaded == 1 and stats.blobs_skipped == 2
    whole = corral(home, "verify")
    assert whole.returncode == 0 and whole.stdout == clean.stdout, whole
    assert store.blob_path(weights.digest).read_bytes() == source.blob_path(weights.digest).read_bytes()
    print(
        f"\nverify (clean): {clean.stdout.strip()}"
        f"\nverify (flipped byte): {found.stdout.strip()} | {found.stderr.strip()}"
        f"\nverify --repair: {repaired.stdout.strip()} | {repaired.stderr.strip()}\nafter pull: {whole.stdout.strip()}"
    )


def test_unknown_model_and_unreadable_manifest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = corral(home, "verify", "nothere")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: model 'nothere' not found in the store {home / 'models'}"
    bad = home / "models" / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    report = verify_store(Store(home / "models"))
    assert not report.ok and report.damaged[0].name == "broken:latest"
    assert report.damaged[0].damage[0].describe().startswith("the manifest cannot be read: ")


@pytest.mark.skipif(sys.platform == "win32", reason="pexpect's pseudo-terminal does not exist on Windows")
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the hashing shows a bar over the bytes to hash; in a pipe (above) only the result."""
    import pexpect

    home = tmp_path / "home"
    store = Store(home / "models")
    manifest = make_model(store, ModelName.parse("barred:v1"), os.urandom(24 * MiB))
    total = sum(store.blob_path(d).stat().st_size for d in manifest.digests())
    env = {**os.environ, "CORRAL_HOME": str(home), "COLUMNS": "120"}
    env.pop("CORRAL_MODELS", None)
    child = pexpect.spawn(sys.executable, ["-m", "corral.cli.main", "verify"], env=env, encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0
    assert "verifying sha256 digests" in screen
    assert f"{total / 1e6:.1f}/{total / 1e6:.1f} MB" in screen  # the bar's last frame: every byte hashed
    assert screen.rstrip().endswith(f"all whole: 1 model(s), 3 blob(s), {total} bytes hashed")
