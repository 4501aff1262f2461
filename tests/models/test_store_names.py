"""Model names and the content-addressed store: layout, atomicity, verification, pruning."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from corral.errors import BadRequest, InvalidName, ModelNotFound
from corral.models.names import ModelName
from corral.models.store import CONFIG_MEDIA_TYPE, MEDIA_MODEL, MEDIA_SYSTEM, Manifest, Store


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m"), "smollm2:135m"),
        ("llama3.2", ("registry.ollama.ai", "library", "llama3.2", "latest"), "llama3.2:latest"),
        ("me/pirate", ("registry.ollama.ai", "me", "pirate", "latest"), "me/pirate:latest"),
        ("localhost:5000/me/pirate:v1", ("localhost:5000", "me", "pirate", "v1"), "localhost:5000/me/pirate:v1"),
        ("http://localhost:5000/me/pirate:v1", ("localhost:5000", "me", "pirate", "v1"), "localhost:5000/me/pirate:v1"),
    ],
)
def test_names_fill_in_ollamas_defaults(text: str, parts: tuple[str, ...], display: str) -> None:
    name = ModelName.parse(text)
    assert name.path_parts() == parts
    assert name.display == display


@pytest.mark.parametrize(
    "bad",
    ["", "../etc/passwd", "a/../../b", "/abs/path", "x/y/z/w", "bad name", "a\\b", "-dash", "a:b:c/", "..", "ok:../x"],
)
def test_names_that_could_escape_the_store_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(bad)


def test_names_match_case_insensitively(tmp_path: Path) -> None:
    store = Store(tmp_path)
    layer = store.write_blob_bytes(b"weights", MEDIA_MODEL)
    config = store.write_blob_bytes(b"{}", CONFIG_MEDIA_TYPE)
    store.write_manifest(ModelName.parse("Pirate:V1"), Manifest(config=config, layers=[layer]))
    assert store.get("pirate:v1").name.model == "Pirate"
    assert store.exists(ModelName.parse("PIRATE:v1"))


def test_the_layout_is_ollamas(tmp_path: Path) -> None:
    store = Store(tmp_path)
    layer = store.write_blob_bytes(b"weights", MEDIA_MODEL)
    config = store.write_blob_bytes(b"{}", CONFIG_MEDIA_TYPE)
    store.write_manifest(ModelName.parse("m:t"), Manifest(config=config, layers=[layer]))
    digest = hashlib.sha256(b"weights").hexdigest()
    assert (tmp_path / "blobs" / f"sha256-{digest}").read_bytes() == b"weights"
    manifest = json.loads((tmp_path / "manifests/registry.ollama.ai/library/m/t").read_text())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["layers"] == [{"mediaType": MEDIA_MODEL, "digest": f"sha256:{digest}", "size": 7}]
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp files left behind


def test_a_blob_that_does_not_match_its_digest_never_becomes_visible(tmp_path: Path) -> None:
    store = Store(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(BadRequest, match="digest mismatch"):
        store.write_blob_stream(iter([b"data"]), expected=wrong)
    assert list((tmp_path / "blobs").iterdir()) == []


def test_a_manifest_needs_its_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    config = store.write_blob_bytes(b"{}", CONFIG_MEDIA_TYPE)
    missing = config.model_copy(update={"digest": "sha256:" + "a" * 64})
    with pytest.raises(Exception, match="missing"):
        store.write_manifest(ModelName.parse("m"), Manifest(config=config, layers=[missing]))
    assert not (tmp_path / "manifests").exists()


@pytest.mark.parametrize("digest", ["sha256:../../x", "md5:abc", "sha256:" + "A" * 64, "sha256-" + "0" * 63])
def test_bad_digests_cannot_name_a_path(tmp_path: Path, digest: str) -> None:
    with pytest.raises(BadRequest):
        Store(tmp_path).blob_path(digest)


def test_delete_keeps_shared_blobs_and_prunes_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    shared = store.write_blob_bytes(b"weights", MEDIA_MODEL)
    config = store.write_blob_bytes(b"{}", CONFIG_MEDIA_TYPE)
    own = store.write_blob_bytes(b"You are a pirate", MEDIA_SYSTEM)
    store.write_manifest(ModelName.parse("base"), Manifest(config=config, layers=[shared]))
    store.write_manifest(ModelName.parse("pirate"), Manifest(config=config, layers=[shared, own]))
    store.delete(ModelName.parse("pirate"))
    assert store.has_blob(shared.digest) and store.has_blob(config.digest)
    assert not store.has_blob(own.digest)
    assert [m.name.model for m in store.list()] == ["base"]
    with pytest.raises(ModelNotFound):
        store.delete(ModelName.parse("pirate"))
    store.delete(ModelName.parse("base"))
    assert list((tmp_path / "blobs").iterdir()) == []
    assert list((tmp_path / "manifests").iterdir()) == []
