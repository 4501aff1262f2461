"""Pull and push against a real registry (docker-registry) and a fake one that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corral.errors import BadRequest, CorralError, ModelNotFound
from corral.models.names import ModelName
from corral.models.registry import PullStats, RegistryAuthError, RegistryError, pull, push
from corral.models.store import CONFIG_MEDIA_TYPE, MEDIA_MODEL, MEDIA_TEMPLATE, Layer, Manifest, Store
from registry_fixture import FakeRegistry

MiB = 1 << 20
FAST = {"backoff": 0.01, "max_tries": 3}  # tests must not sleep through real backoffs


def model_blobs(weights: bytes, template: str = "{{ .Prompt }}") -> tuple[Manifest, dict[str, bytes]]:
    """A tiny model in memory: weights (random bytes, not a real GGUF), a template and a config."""

    def layer(data: bytes, media_type: str) -> Layer:
        return Layer(mediaType=media_type, digest=f"sha256:{hashlib.sha256(data).hexdigest()}", size=len(data))

    model, tmpl = layer(weights, MEDIA_MODEL), layer(template.encode(), MEDIA_TEMPLATE)
    config_json = {"model_format": "gguf", "model_family": "llama"}
    config_json["rootfs"] = {"type": "layers", "diff_ids": [model.digest, tmpl.digest]}
    config_bytes = json.dumps(config_json).encode()
    config = layer(config_bytes, CONFIG_MEDIA_TYPE)
    blobs = {model.digest: weights, tmpl.digest: template.encode(), config.digest: config_bytes}
    return Manifest(config=config, layers=[model, tmpl]), blobs


def make_model(store: Store, name: ModelName, weights: bytes, template: str = "{{ .Prompt }}") -> Manifest:
    manifest, blobs = model_blobs(weights, template)
    for layer in [*manifest.layers, manifest.config]:
        store.write_blob_bytes(blobs[layer.digest], layer.mediaType)
    with store.lock():
        store.write_manifest(name, manifest)
    return manifest


def snapshot(store: Store) -> dict[str, str]:
    """Every blob and manifest in the store with its sha256; partial downloads and locks left out."""
    files = {}
    for path in sorted(store.root.rglob("*")):
        rel = path.relative_to(store.root).as_posix()
        bookkeeping = "-partial" in path.name or rel.startswith((".pulls/", ".owners/")) or rel == ".lock"
        if path.is_file() and not bookkeeping:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs.glob("*partial*")) if store.blobs.is_dir() else []


def manifest_bytes(store: Store, name: ModelName) -> bytes:
    return store.manifests.joinpath(*name.path_parts()).read_bytes()


def statuses(events: list[dict]) -> list[str]:
    return [e["status"] for e in events]


# ---- against the real registry ----------------------------------------------------------------


def test_push_delete_pull_round_trip(registry: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    name = ModelName.parse(f"{registry}/me/tiny:v1")
    manifest = make_model(store, name, os.urandom(6 * MiB + 123))
    blobs = {d: store.blob_path(d).read_bytes() for d in manifest.digests()}
    original_manifest = manifest_bytes(store, name)

    pushed: list[dict] = []
    push_stats = push(store, name, insecure=True, progress=pushed.append)
    assert push_stats.blobs_uploaded == 3 and push_stats.blobs_skipped == 0
    assert push_stats.bytes_uploaded == manifest.size
    assert statuses(pushed)[0] == "retrieving manifest"
    assert statuses(pushed)[-2:] == ["pushing manifest", "success"]
    for digest in manifest.digests():
        last = [e for e in pushed if e.get("digest") == digest][-1]
        assert last["status"] == f"pushing {digest[7:19]}" and last["completed"] == last["total"]

    store.delete(name)
    assert not store.exists(name) and not any(store.has_blob(d) for d in blobs)

    events: list[dict] = []
    stats = pull(store, name, insecure=True, progress=events.append, parts=4, part_size_min=1 * MiB)
    assert stats.blobs_downloaded == 3 and stats.blobs_skipped == 0
    assert stats.bytes_downloaded == manifest.size and stats.bytes_resumed == 0
    for digest, data in blobs.items():
        assert store.blob_path(digest).read_bytes() == data
    assert manifest_bytes(store, name) == original_manifest
    assert store.get(name).manifest == manifest
    assert leftovers(store) == []

    assert statuses(events)[0] == "pulling manifest"
    assert statuses(events)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    for digest in blobs:
        mine = [e for e in events if e.get("digest") == digest]
        assert mine and all(e["status"] == f"pulling {digest[7:19]}" for e in mine)
        assert mine[-1]["completed"] == mine[-1]["total"] == len(blobs[digest])
        assert [e["completed"] for e in mine] == sorted(e["completed"] for e in mine)

    again = pull(store, name, insecure=True)  # everything is already here: nothing is downloaded
    assert again.bytes_downloaded == 0 and again.blobs_skipped == 3


def test_push_twice_skips_blobs_the_registry_has(registry: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    name = ModelName.parse(f"{registry}/me/twice:v1")
    manifest = make_model(store, name, os.urandom(2 * MiB))
    push(store, name, insecure=True)

    events: list[dict] = []
    stats = push(store, name, insecure=True, progress=events.append)
    assert (stats.blobs_uploaded, stats.blobs_skipped, stats.bytes_uploaded) == (0, 3, 0)
    layer_events = [e for e in events if "digest" in e]
    assert {e["digest"] for e in layer_events} == manifest.digests()
    assert all(e["completed"] == e["total"] for e in layer_events)

    # a second model sharing the weights uploads only what is new: its template and config
    other = ModelName.parse(f"{registry}/me/twice:v2")
    weights = store.blob_path(manifest.layer(MEDIA_MODEL).digest).read_bytes()
    make_model(store, other, weights, template="{{ .System }} {{ .Prompt }}")
    stats = push(store, other, insecure=True)
    assert (stats.blobs_uploaded, stats.blobs_skipped) == (2, 1)


def test_missing_model_is_model_not_found(registry: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    with pytest.raises(ModelNotFound, match=r"model '.*/me/nothing-here:v9' not found in registry 127\.0\.0\.1"):
        pull(store, ModelName.parse(f"{registry}/me/nothing-here:v9"), insecure=True)
    assert snapshot(store) == {} and leftovers(store) == []


def test_https_is_the_default(registry: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    with pytest.raises(RegistryError, match="cannot reach registry"):
        pull(store, ModelName.parse(f"{registry}/me/tiny:v1"), max_tries=1)  # https to an http-only registry


PULL_IN_CHILD = """
import sys
import threading
from pathlib import Path
from corral.models.names import ModelName
from corral.models.registry import pull
from corral.models.store import Store
pull(Store(Path(sys.argv[1])), ModelName.parse(sys.argv[2]), insecure=True, parts=4,
     part_size_min=1 << 20, rate_limit=float(sys.argv[3]), checkpoint_interval=0.1)
"""


@pytest.mark.posix_signals
def test_pull_killed_with_sigkill_resumes(registry: str, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/big:v1")
    manifest = make_model(source, name, os.urandom(24 * MiB))
    push(source, name, insecure=True)
    big = manifest.layer(MEDIA_MODEL)

    store = Store(tmp_path / "models")
    sidecar = store.blobs / f"{big.digest.replace(':', '-')}-partial.json"
    child = subprocess.Popen([sys.executable, "-c", PULL_IN_CHILD, str(store.root), str(name), str(8 * MiB)])
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, "the throttled pull ended before it could be killed"
            assert time.monotonic() < deadline, "the throttled pull made no progress"
            try:
                state = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                state = None
            if state and sum(p["completed"] for p in state["parts"]) >= big.size * 0.3:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    state = json.loads(sidecar.read_text())
    on_disk = sum(p["completed"] for p in state["parts"])
    # bytes the killed pull wrote after its last checkpoint: fetched, but not known to be on disk
    written, truth = Path(str(sidecar).removesuffix(".json")).read_bytes(), source.blob_path(big.digest).read_bytes()
    unrecorded = 0
    for part in state["parts"]:
        start, stop = part["offset"] + part["completed"], part["offset"] + part["size"]
        run = next((i for i in range(start, stop) if written[i] != truth[i]), stop) - start
        unrecorded += run if run > 16 else 0  # a few bytes can match by chance
    assert big.size * 0.3 <= on_disk < big.size
    assert len(state["parts"]) >= 4  # it was pulling in parallel ranged parts
    assert snapshot(store) == {}  # no blob, no manifest: only the partial download

    stats = pull(store, name, insecure=True, parts=4, part_size_min=1 * MiB)
    assert stats.bytes_resumed >= on_disk
    # what was on disk is not fetched again; a part cut short by a split may waste the rest of a read
    assert manifest.size - stats.bytes_resumed <= stats.bytes_downloaded <= manifest.size - stats.bytes_resumed + MiB
    assert stats.bytes_downloaded < manifest.size
    assert store.blob_path(big.digest).read_bytes() == source.blob_path(big.digest).read_bytes()
    assert manifest_bytes(store, name) == manifest_bytes(source, name)
    assert leftovers(store) == []
    print(
        f"\nkill-and-resume: blob {big.size} bytes, {on_disk} recorded on disk at the kill "
        f"(+{unrecorded} written after the last checkpoint); the resumed pull downloaded "
        f"{stats.bytes_downloaded} of {manifest.size} model bytes"
    )


# ---- against the fake registry ----------------------------------------------------------------


def serve_model(fake: FakeRegistry, repo: str, tag: str, weights: bytes, *, corrupt: bool = False) -> Manifest:
    """Put a model on the fake; with ``corrupt``, the weights blob is served with one byte flipped."""
    manifest, blobs = model_blobs(weights)
    if corrupt:
        digest = manifest.layer(MEDIA_MODEL).digest
        blobs[digest] = bytes([blobs[digest][0] ^ 0xFF]) + blobs[digest][1:]
    fake.blobs.update(blobs)
    fake.manifests[(repo, tag)] = manifest.to_bytes()
    return manifest


def seeded_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "models")
    make_model(store, ModelName.parse("already/here:v1"), os.urandom(MiB))
    return store


def test_corrupted_blob_is_refused_and_store_unchanged(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    manifest = serve_model(fake_registry, "me/bad", "v1", os.urandom(3 * MiB), corrupt=True)
    store = seeded_store(tmp_path)
    before = snapshot(store)
    name = ModelName.parse(f"{fake_registry.host}/me/bad:v1")
    with pytest.raises(RegistryError, match=r"digest mismatch .*the download was discarded"):
        pull(store, name, insecure=True, parts=4, part_size_min=256 * 1024, **FAST)
    assert snapshot(store) == before
    bad = manifest.layer(MEDIA_MODEL).digest.replace(":", "-")
    assert not [n for n in leftovers(store) if n.startswith(bad)]
    assert not store.exists(name)


def test_hostile_digest_never_becomes_a_path(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    manifest = serve_model(fake_registry, "me/evil", "v1", b"weights")
    raw = json.loads(fake_registry.manifests[("me/evil", "v1")])
    raw["layers"][0]["digest"] = "sha256:../../../../etc/passwd"
    fake_registry.manifests[("me/evil", "v1")] = json.dumps(raw).encode()
    store = seeded_store(tmp_path)
    before = snapshot(store)
    with pytest.raises(BadRequest, match="invalid digest"):
        pull(store, ModelName.parse(f"{fake_registry.host}/me/evil:v1"), insecure=True, **FAST)
    assert snapshot(store) == before and manifest


def test_bearer_challenge_is_answered_with_a_token(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    manifest = serve_model(fake_registry, "me/private", "v1", os.urandom(2 * MiB))
    fake_registry.token = "s3cret-token"
    store = Store(tmp_path / "models")
    name = ModelName.parse(f"{fake_registry.host}/me/private:v1")
    stats = pull(store, name, insecure=True, parts=4, part_size_min=256 * 1024, **FAST)
    assert stats.blobs_downloaded == 3
    assert store.get(name).manifest == manifest
    tokens = [r for r in fake_registry.requests if r["path"] == "/token"]
    assert len(tokens) == 1  # one token, shared by every part
    assert (
        "service=fake-registry" in tokens[0]["query"] and "scope=repository%3Ame%2Fprivate%3Apull" in tokens[0]["query"]
    )
    blob_gets = [r for r in fake_registry.requests if "/blobs/" in r["path"]]
    assert blob_gets and all(r["headers"].get("Authorization") == "Bearer s3cret-token" for r in blob_gets[-3:])


def test_token_refused_is_a_clear_error(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    serve_model(fake_registry, "me/private", "v1", b"weights")
    fake_registry.token, fake_registry.issue = "right", "wrong"
    store = Store(tmp_path / "models")
    with pytest.raises(RegistryAuthError, match="401 unauthorized .* even with the token"):
        pull(store, ModelName.parse(f"{fake_registry.host}/me/private:v1"), insecure=True, **FAST)
    assert snapshot(store) == {}


def test_basic_challenge_is_unsupported(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    serve_model(fake_registry, "me/private", "v1", b"weights")
    fake_registry.basic = True
    with pytest.raises(RegistryAuthError, match="Basic authentication, which Corral does not support"):
        pull(Store(tmp_path / "models"), ModelName.parse(f"{fake_registry.host}/me/private:v1"), insecure=True, **FAST)


def test_server_error_fails_after_retries(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    serve_model(fake_registry, "me/down", "v1", b"weights")
    fake_registry.fail_status = 500
    store = seeded_store(tmp_path)
    before = snapshot(store)
    with pytest.raises(RegistryError, match=r"answered 500 after 3 tries: UNKNOWN: the fake registry is failing"):
        pull(store, ModelName.parse(f"{fake_registry.host}/me/down:v1"), insecure=True, **FAST)
    assert fake_registry.count("GET", "/manifests/") == 3
    assert snapshot(store) == before


def test_blob_server_errors_fail_after_retries_and_keep_nothing(
    fake_registry: FakeRegistry,
    tmp_path: Path,
) -> None:
    manifest = serve_model(fake_registry, "me/flaky", "v1", os.urandom(MiB))
    del fake_registry.blobs[manifest.config.digest]  # layers arrive, the config is gone: 404
    store = seeded_store(tmp_path)
    before = snapshot(store)
    with pytest.raises(RegistryError, match=r"blob sha256:[0-9a-f]{64} of .* not found in registry"):
        pull(store, ModelName.parse(f"{fake_registry.host}/me/flaky:v1"), insecure=True, **FAST)
    assert snapshot(store) == before


def test_transient_errors_are_retried(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    manifest = serve_model(fake_registry, "me/flaky", "v1", os.urandom(MiB))
    fake_registry.fail_status, fake_registry.fail_count = 503, 2
    store = Store(tmp_path / "models")
    stats = pull(store, ModelName.parse(f"{fake_registry.host}/me/flaky:v1"), insecure=True, **FAST)
    assert stats.retries == 2
    assert store.get(f"{fake_registry.host}/me/flaky:v1").manifest == manifest


def test_stalled_part_is_cancelled_and_retried(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(4 * MiB)
    manifest = serve_model(fake_registry, "me/slow", "v1", weights)
    fake_registry.stall_count, fake_registry.stall_seconds = 1, 20.0  # the first blob request hangs halfway
    store = Store(tmp_path / "models")
    started = time.monotonic()
    stats = pull(
        store,
        ModelName.parse(f"{fake_registry.host}/me/slow:v1"),
        insecure=True,
        parts=4,
        part_size_min=256 * 1024,
        stall_timeout=0.5,
        **FAST,
    )
    assert time.monotonic() - started < 10  # it did not wait for the hung connection
    assert stats.stalls >= 1 and stats.retries >= 1
    assert store.blob_path(manifest.layer(MEDIA_MODEL).digest).read_bytes() == weights


def test_registry_ignoring_range_still_works(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(2 * MiB)
    manifest = serve_model(fake_registry, "me/norange", "v1", weights)
    fake_registry.ignore_range = True
    store = Store(tmp_path / "models")
    stats: PullStats = pull(
        store,
        ModelName.parse(f"{fake_registry.host}/me/norange:v1"),
        insecure=True,
        parts=4,
        part_size_min=256 * 1024,
        **FAST,
    )
    assert store.blob_path(manifest.layer(MEDIA_MODEL).digest).read_bytes() == weights
    assert stats.bytes_downloaded >= manifest.size  # the parts had to skip to their offsets


def test_resume_discards_a_sidecar_for_another_blob_size(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    weights = os.urandom(MiB)
    manifest = serve_model(fake_registry, "me/odd", "v1", weights)
    store = Store(tmp_path / "models")
    store.blobs.mkdir(parents=True)
    base = store.blob_path(manifest.layer(MEDIA_MODEL).digest)
    Path(f"{base}-partial").write_bytes(b"junk" * 10)
    Path(f"{base}-partial.json").write_text(
        json.dumps({"digest": manifest.layer(MEDIA_MODEL).digest, "size": 40, "parts": []})
    )
    stats = pull(store, ModelName.parse(f"{fake_registry.host}/me/odd:v1"), insecure=True, **FAST)
    assert stats.bytes_resumed == 0
    assert base.read_bytes() == weights and leftovers(store) == []


def test_two_pulls_of_one_model_download_it_once(registry: str, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/shared:v1")
    manifest = make_model(source, name, os.urandom(4 * MiB))
    push(source, name, insecure=True)
    store = Store(tmp_path / "models")
    results: list[PullStats | BaseException] = []

    def run() -> None:
        try:
            results.append(pull(store, name, insecure=True, part_size_min=MiB, rate_limit=16 * MiB))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, PullStats) for r in results), results
    assert sum(r.blobs_downloaded for r in results) == 3  # the second waited, then found the blobs
    assert sum(r.bytes_downloaded for r in results) == manifest.size
    assert snapshot(store) == {k: v for k, v in snapshot(source).items()}
    assert leftovers(store) == []


def test_cancelled_pull_keeps_its_partial_and_resumes(registry: str, tmp_path: Path) -> None:
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/cancel:v1")
    manifest = make_model(source, name, os.urandom(8 * MiB))
    push(source, name, insecure=True)
    store = Store(tmp_path / "models")
    cancel = threading.Event()

    def watch(event: dict) -> None:
        if event.get("completed", 0) >= 2 * MiB and event.get("total", 0) > 4 * MiB:
            cancel.set()

    with pytest.raises(CorralError, match="cancelled"):
        pull(store, name, insecure=True, part_size_min=MiB, rate_limit=8 * MiB, progress=watch, cancel=cancel)
    assert snapshot(store) == {}
    assert any(n.endswith("-partial.json") for n in leftovers(store))

    stats = pull(store, name, insecure=True, part_size_min=MiB)
    assert stats.bytes_resumed >= 2 * MiB and stats.bytes_downloaded < manifest.size
    assert snapshot(store) == snapshot(source) and leftovers(store) == []


def test_prune_keeps_partial_downloads(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    store.blobs.mkdir(parents=True)
    partial = store.blobs / f"sha256-{'a' * 64}-partial"
    partial.write_bytes(b"half")
    Path(f"{partial}.json").write_text("{}")
    with store.lock():
        store.prune()
    assert partial.exists() and Path(f"{partial}.json").exists()
