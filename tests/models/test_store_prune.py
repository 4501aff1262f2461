"""Pruning the store at `corral serve` start: what killed processes left goes, what running ones write stays."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_registry import make_model  # type: ignore[import-not-found]

from bundled import smollm2_path
from corral.models.names import ModelName
from corral.models.prune import BLOB_GRACE, PARTIAL_KEEP, prune_store
from corral.models.store import TEMP_NAME, Store
from corral.models.verify import verify_store
from serverproc import free_port

HOLD_A_TEMP_FILE = """
import sys, time
from pathlib import Path
from corral.models.store import Store
store = Store(Path(sys.argv[1]))
fd, path = store.temp_file(store.blobs, "incoming")
import os; os.write(fd, b"x" * 1000); os.close(fd)
print(path, flush=True)
time.sleep(600)
"""


def temps(store: Store) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if TEMP_NAME.match(p.name))


def test_a_running_writers_temp_file_stays_and_a_killed_ones_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_TEMP_FILE, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        path = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        assert path.is_file() and TEMP_NAME.match(path.name)
        report = prune_store(store)
        assert path.is_file() and report.count == 0  # its owner runs: never touched
        child.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
        child.wait()
    finally:
        child.kill()
        child.wait()
    report = prune_store(store)
    assert not path.exists()
    assert report.removed == {"temporary file(s) of stopped processes": [(path, 1000)]}
    assert report.bytes_removed == 1000
    assert list((store.root / ".owners").glob("*.lock")) == []  # the dead owner's lock file went too


def test_this_process_keeps_its_own_temp_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    fd, path = store.temp_file(store.blobs, "incoming")
    os.close(fd)
    prune_store(store)
    assert Path(path).exists()
    os.unlink(path)


def test_unreferenced_blobs_go_after_the_grace_period(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    name = ModelName.parse("kept:v1")
    manifest = make_model(store, name, os.urandom(5000))
    orphan_old = store.write_blob_bytes(b"an upload nobody used", "")
    orphan_new = store.write_blob_bytes(b"an upload whose create may still come", "")
    old = time.time() - BLOB_GRACE - 60
    os.utime(store.blob_path(orphan_old.digest), (old, old))

    report = prune_store(store)
    assert not store.has_blob(orphan_old.digest)
    assert store.has_blob(orphan_new.digest)
    assert all(store.has_blob(d) for d in manifest.digests())
    assert report.removed == {"unreferenced blob(s)": [(store.blob_path(orphan_old.digest), orphan_old.size)]}
    assert verify_store(store).ok


def test_pull_parts_are_kept_for_a_day(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    store.blobs.mkdir(parents=True)
    fresh = store.blobs / f"sha256-{'a' * 64}-partial"
    stale = store.blobs / f"sha256-{'b' * 64}-partial"
    for partial in (fresh, stale):
        partial.write_bytes(b"p" * 300)
        Path(f"{partial}.json").write_text("{}")
    old = time.time() - PARTIAL_KEEP - 60
    for path in (stale, Path(f"{stale}.json")):
        os.utime(path, (old, old))
    ollamas = store.blobs / f"sha256-{'c' * 64}-partial-0"  # not Corral's: left alone
    ollamas.write_bytes(b"o")

    report = prune_store(store)
    assert fresh.exists() and Path(f"{fresh}.json").exists() and ollamas.exists()
    assert not stale.exists() and not Path(f"{stale}.json").exists()
    assert sorted(p.name for p, _ in report.removed["stale pull part(s)"]) == sorted([stale.name, f"{stale.name}.json"])
    assert len(report.kept_partials) == 2
    line = report.summary(store.root)
    assert "removed 2 stale pull part(s) (302 bytes)" in line and "kept 2 resumable pull file(s)" in line


def test_a_corrupt_manifest_stops_blob_pruning(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    orphan = store.write_blob_bytes(b"maybe the broken manifest's", "")
    old = time.time() - BLOB_GRACE - 60
    os.utime(store.blob_path(orphan.digest), (old, old))
    bad = store.manifests / "registry.ollama.ai" / "library" / "broken" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    report = prune_store(store)
    assert store.has_blob(orphan.digest)
    assert report.skipped == "a manifest cannot be read (run `corral verify`)"


# ---- end to end: a real server killed during `corral create` ---------------------------------------


def start_server(home: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}", **env}
    log = open(home / "serve.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, "-m", "corral.cli.main", "serve"], env=environment, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / "serve.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("corral serve did not start")


def test_server_killed_during_create_leaves_a_temp_blob_that_the_next_start_prunes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = Store(home / "models")
    gguf = smollm2_path()
    (tmp_path / "Modelfile").write_text(f"FROM {gguf}\n")
    port = free_port()
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST": f"127.0.0.1:{port}"}
    left: list[Path] = []
    for _attempt in range(5):  # until the kill lands while the upload's temporary blob exists
        server = start_server(home, port)
        create = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "create", "crashy", "-f", str(tmp_path / "Modelfile")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not any(p.stat().st_size > 0 for p in temps(store)) and time.monotonic() < deadline:
                if create.poll() is not None:
                    break
                time.sleep(0.001)
            server.kill()  # SIGKILL on POSIX, TerminateProcess on Windows
            server.wait()
        finally:
            server.kill()
            create.wait(60)
        left = [p for p in temps(store) if p.exists()]
        if left:
            break
    assert left, "no kill landed during the upload in 5 tries"
    leaked = sum(p.stat().st_size for p in left)
    assert create.returncode == 1  # the client saw its server die
    assert not store.exists(ModelName.parse("crashy"))

    server = start_server(home, port)
    try:
        assert temps(store) == []
        log = (home / "serve.log").read_text()
        line = [text for text in log.splitlines() if text.startswith("pruned the store")][-1]
        assert re.search(rf"removed {len(left)} temporary file\(s\) of stopped processes \(\d+ bytes\)", line), line
        assert int(re.search(r"\((\d+) bytes\)", line)[1]) >= leaked  # type: ignore[index]
        print(f"\nleft by the kill: {[p.name for p in left]} ({leaked} bytes); the restart logged: {line}")
        # the store is whole, and the same create now works
        report = verify_store(store)
        assert report.ok
        again = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "create", "crashy", "-f", str(tmp_path / "Modelfile")],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert again.returncode == 0, again.stderr
        verified = subprocess.run(
            [sys.executable, "-m", "corral.cli.main", "verify"], env=env, capture_output=True, text=True, timeout=120
        )
        assert verified.returncode == 0 and verified.stdout.startswith("all whole: 1 model(s), 2 blob(s)"), verified
    finally:
        server.kill()
        server.wait()


def test_noprune_keeps_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home / "models")
    stale = store.blobs / f"sha256-{'d' * 64}-partial"
    store.blobs.mkdir(parents=True)
    stale.write_bytes(b"old")
    old = time.time() - PARTIAL_KEEP - 60
    os.utime(stale, (old, old))
    server = start_server(home, free_port(), CORRAL_NOPRUNE="1")
    try:
        assert stale.exists()
        assert "pruned the store" not in (home / "serve.log").read_text()
    finally:
        server.kill()
        server.wait()
    server = start_server(home, free_port())
    try:
        assert not stale.exists()
        assert "removed 1 stale pull part(s) (3 bytes)" in (home / "serve.log").read_text()
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("kind", ["incoming", "write"])
def test_temp_names_carry_a_living_owner(tmp_path: Path, kind: str) -> None:
    store = Store(tmp_path / "models")
    fd, path = store.temp_file(store.blobs, kind)
    os.close(fd)
    match = TEMP_NAME.match(Path(path).name)
    assert match is not None and (store.root / ".owners" / f"{match['owner']}.lock").exists()


HOLD_THE_STORE_LOCK = """
import sys, time
from pathlib import Path
from corral.models.store import Store
lock = Store(Path(sys.argv[1])).lock()
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_blob_pruning_waits_for_no_writer(tmp_path: Path) -> None:
    """A create, copy or pull in another process holds the writer lock: its blobs are left alone."""
    store = Store(tmp_path / "models")
    orphan = store.write_blob_bytes(b"about to be referenced by a manifest", "")
    old = time.time() - BLOB_GRACE - 60
    os.utime(store.blob_path(orphan.digest), (old, old))
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_STORE_LOCK, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "held"  # type: ignore[union-attr]
        report = prune_store(store)
        assert store.has_blob(orphan.digest)
        assert report.skipped == "another process is writing to the store"
        assert "unreferenced blobs not checked: another process is writing to the store" in report.summary(store.root)
    finally:
        writer.kill()
        writer.wait()
    assert prune_store(store).removed == {"unreferenced blob(s)": [(store.blob_path(orphan.digest), orphan.size)]}
