"""The CPU container image: scripts/build-image.sh builds it (handing over the llama-cpp-python wheel
already built, never compiling it again), and the container serves /api/chat under an arbitrary UID
with keys, then stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from corral.models.names import ModelName
from corral.models.recipes import import_bundled
from corral.models.store import Store
from serverproc import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/corral:test"
KEY = "container-test-key"


def engine() -> str:
    found = shutil.which("podman") or shutil.which("docker")
    assert found, "podman or docker is needed (scripts/test.sh installs podman, runc and mmdebstrap)"
    return found


def environment() -> dict[str, str]:
    """The containers.conf the build script wrote for this host (runc, cgroupfs, ulimits), if any."""
    conf = ROOT / "build" / "image" / "containers.conf"
    return {
        **os.environ,
        **({"CONTAINERS_CONF": str(conf)} if conf.exists() and "CONTAINERS_CONF" not in os.environ else {}),
    }


@pytest.fixture(scope="module")
def image() -> str:
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh"), TAG], capture_output=True, text=True, timeout=1700
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "using llama_cpp_python-" in built.stderr  # the wheel was handed over, not compiled again
    return TAG


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    models = tmp_path / "models"
    import_bundled(Store(models), ModelName.parse("smollm2:135m"))
    for path in [models, *models.rglob("*")]:  # the container's UID is not ours
        path.chmod(0o777 if path.is_dir() else 0o666)
    port = free_port()
    name = f"corral-test-{port}"
    run = [
        engine(), "run", "-d", "--name", name, "--user", "123456:0", "-p", f"127.0.0.1:{port}:11434",
        "-v", f"{models}:/models", "-e", f"CORRAL_API_KEYS={KEY}", "-e", "CORRAL_PRELOAD=smollm2:135m", image,
    ]  # fmt: skip
    started = subprocess.run(run, capture_output=True, text=True, env=environment(), timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        yield f"http://127.0.0.1:{port}", name
    finally:
        subprocess.run([engine(), "rm", "-f", name], capture_output=True, env=environment(), timeout=120)


def test_the_container_serves_chat_and_stops_cleanly(container: tuple[str, str]) -> None:
    url, name = container
    deadline = time.monotonic() + 300
    ready = None
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/health/ready", timeout=2)
            if ready.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    logs = subprocess.run([engine(), "logs", name], capture_output=True, text=True, env=environment()).stdout
    assert ready is not None and ready.status_code == 200, logs
    assert httpx.post(f"{url}/api/chat", json={"model": "smollm2:135m", "messages": []}).status_code == 401
    body = {
        "model": "smollm2:135m", "stream": False, "options": {"temperature": 0, "num_predict": 16},
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }  # fmt: skip
    r = httpx.post(f"{url}/api/chat", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=300)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["message"]["content"]
    metrics = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert 'corral:model_loaded{backend="cpu",model_name="smollm2:135m",processor="100% CPU"} 1.0' in metrics
    stopped = subprocess.run(
        [engine(), "stop", "-t", "60", name], capture_output=True, text=True, env=environment(), timeout=120
    )
    assert stopped.returncode == 0, stopped.stderr
    code = subprocess.run(
        [engine(), "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True, env=environment()
    )
    assert code.stdout.strip() == "0", subprocess.run(
        [engine(), "logs", name], capture_output=True, text=True, env=environment()
    ).stdout
