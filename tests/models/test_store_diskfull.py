"""A full disk, for real: the store on a small tmpfs that this test mounts (it needs root on Linux).

A pull, a create and a copy that hit ENOSPC fail with one line naming the store and the bytes
needed, leave no model, blob or temporary file behind, and the server goes on serving.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_registry import make_model  # type: ignore[import-not-found]
from test_store_prune import smollm2_path  # type: ignore[import-not-found]

from corral.errors import StorageFull
from corral.models.create import create_from_modelfile
from corral.models.names import ModelName
from corral.models.registry import pull, push
from corral.models.store import MEDIA_MODEL, TEMP_NAME, Store
from corral.models.verify import verify_store
from corral.server.model_routes import copy_model
from registry_fixture import registry  # noqa: F401 - fixture
from serverproc import running_server

MiB = 1 << 20


def mount_small_fs(where: Path, size: int) -> None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, which only root on Linux can mount")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    where = tmp_path / "small"
    mount_small_fs(where, 16 * MiB)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the disk is full, as another program on the machine might."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def leftovers(store: Store) -> list[str]:
    """Temporary files and partial downloads: none may outlive a failed write."""
    return sorted(p.name for p in store.root.rglob("*") if TEMP_NAME.match(p.name) or "-partial" in p.name)


ONE_LINE = r"not enough disk space to {action}: {needed} bytes needed in the store {root} \((\d+) bytes free\)"


def one_line(action: str, needed: int | str, root: Path) -> str:
    return ONE_LINE.format(action=re.escape(action), needed=needed, root=re.escape(str(root)))


def test_pull_onto_a_disk_that_is_too_small(registry: str, small_fs: Path, tmp_path: Path) -> None:  # noqa: F811
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/toobig:v1")
    manifest = make_model(source, name, os.urandom(20 * MiB))
    push(source, name, insecure=True)
    store = Store(small_fs / "models")
    with pytest.raises(StorageFull) as caught:
        pull(store, name, insecure=True)
    message = str(caught.value)
    assert re.fullmatch(
        r"not enough disk space to pull: "
        + str(manifest.size)
        + rf" bytes needed in the store {re.escape(str(store.root))} \(\d+ bytes free\)",
        message,
    )
    assert leftovers(store) == [] and not store.exists(name) and list(store.blobs.iterdir()) == []
    print(f"\npull (too big): {message}")


def test_disk_fills_up_during_a_pull(registry: str, small_fs: Path, tmp_path: Path) -> None:  # noqa: F811
    source = Store(tmp_path / "source")
    name = ModelName.parse(f"{registry}/me/filled:v1")
    manifest = make_model(source, name, os.urandom(6 * MiB))
    push(source, name, insecure=True)
    weights = manifest.layer(MEDIA_MODEL)
    assert weights is not None
    store = Store(small_fs / "models")
    filler: list[Path] = []

    def progress(event: dict) -> None:  # the disk fills after the free-space check, before the bytes come
        if event.get("digest") == weights.digest and not filler:
            filler.append(fill(small_fs))

    with pytest.raises(StorageFull) as caught:
        pull(store, name, insecure=True, progress=progress, part_size_min=MiB)
    message = str(caught.value)
    assert re.fullmatch(one_line(f"pull {name.display}", manifest.size, store.root), message), message
    assert leftovers(store) == [] and not store.exists(name)
    assert [p.name for p in store.blobs.iterdir()] == []  # nothing partial visible
    filler[0].unlink()
    pull(store, name, insecure=True)  # with room again, the same pull works
    assert verify_store(store).ok
    print(f"\npull (disk filled during it): {message}")


def test_create_and_copy_on_a_full_disk(small_fs: Path, tmp_path: Path) -> None:
    store = Store(small_fs / "models")
    gguf = smollm2_path()  # 98 MB: more than the 16 MiB disk holds
    with pytest.raises(StorageFull) as caught:
        create_from_modelfile(store, "big", f"FROM {gguf}\n")
    created = str(caught.value)
    assert re.fullmatch(one_line("create big:latest", gguf.stat().st_size, store.root), created), created
    assert leftovers(store) == [] and not store.exists(ModelName.parse("big")) and list(store.blobs.iterdir()) == []

    make_model(store, ModelName.parse("small:v1"), os.urandom(MiB))
    filler = fill(small_fs)
    with pytest.raises(StorageFull) as caught:
        copy_model(store, ModelName.parse("small:v1"), ModelName.parse("twin:v1"))
    copied = str(caught.value)
    manifest_size = len(store.get("small:v1").manifest.to_bytes())
    assert re.fullmatch(one_line("copy small:v1 to twin:v1", manifest_size, store.root), copied), copied
    assert leftovers(store) == [] and not store.exists(ModelName.parse("twin:v1"))
    filler.unlink()
    copy_model(store, ModelName.parse("small:v1"), ModelName.parse("twin:v1"))
    assert store.exists(ModelName.parse("twin:v1")) and verify_store(store).ok
    print(f"\ncreate (too big): {created}\ncopy (full disk): {copied}")


def test_server_goes_on_serving_after_a_full_disk(small_fs: Path, tmp_path: Path, tiny_gguf: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = Store(small_fs / "models")
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_MODELS": str(store.root)}
    gguf = smollm2_path()
    (tmp_path / "Big").write_text(f"FROM {gguf}\n")
    (tmp_path / "Small").write_text(f"FROM {tiny_gguf}\n")
    with running_server(home, CORRAL_MODELS=str(store.root)) as url:
        env["CORRAL_HOST"] = url.removeprefix("http://")

        def corral(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "corral.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
            )

        big = corral("create", "big", "-f", str(tmp_path / "Big"))
        assert big.returncode == 1
        error = big.stderr.strip().splitlines()[-1]
        digest = re.search(r"sha256:[0-9a-f]{64}", error)
        assert digest is not None
        action = f"store the uploaded blob {digest[0]}"
        assert re.fullmatch("Error: " + one_line(action, gguf.stat().st_size, store.root), error), big.stderr
        assert leftovers(store) == [] and list(store.blobs.iterdir()) == []

        # an upload of unknown length (chunked) runs into ENOSPC itself: the answer is a 507, not a 500
        data = os.urandom(20 * MiB)
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        answer = httpx.post(
            f"{url}/api/blobs/{digest}", content=iter([data[i : i + MiB] for i in range(0, len(data), MiB)]), timeout=60
        )
        assert answer.status_code == 507
        chunked = answer.json()["error"]
        assert re.fullmatch(one_line(f"store the uploaded blob {digest}", r"at least \d+", store.root), chunked), (
            chunked
        )
        assert leftovers(store) == [] and list(store.blobs.iterdir()) == []

        assert httpx.get(f"{url}/api/tags", timeout=10).json() == {"models": []}
        small = corral("create", "small", "-f", str(tmp_path / "Small"))
        assert small.returncode == 0, small.stderr
        filler = fill(small_fs)
        copied = corral("cp", "small", "twin")
        assert copied.returncode == 1
        copy_error = copied.stderr.strip()
        manifest_size = len(store.get("small").manifest.to_bytes())
        assert re.fullmatch(
            "Error: " + one_line("copy small:latest to twin:latest", manifest_size, store.root), copy_error
        ), copy_error
        filler.unlink()
        names = [m["name"] for m in httpx.get(f"{url}/api/tags", timeout=10).json()["models"]]
        assert names == ["small:latest"] and leftovers(store) == []
        assert corral("cp", "small", "twin").returncode == 0
        assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
    print(f"\ncorral create (server, full disk): {error}\nPOST /api/blobs chunked (server, disk filled): 507 {chunked}"
          f"\ncorral cp (server, full disk): {copy_error}")
