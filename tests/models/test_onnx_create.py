"""``corral create --format onnx``: a GGUF becomes an ONNX model in the store, and runs like any other.

End to end: the real ``corral`` CLI against a real ``corral serve`` (its own home), which converts the
tiny F32 GGUF with onnxruntime-genai's builder, stores the genai folder as one tar layer, and serves
it through the CPU backend's ONNX engine. At fp32 the ONNX model's greedy answer must equal the GGUF
model's. Then: the layer is deterministic (re-creating writes nothing new; ``show --modelfile`` fed
back to ``create`` gives the same digest), ``rm`` removes the blob and its unpacked folder, a
push/pull through a real registry round-trips it, and bad requests leave the store as it was.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.models.store import MEDIA_MODEL, MEDIA_ONNX
from serverproc import running_server

MISSING = [
    m for m in ("onnxruntime_genai", "torch", "onnx", "onnx_ir", "transformers") if importlib.util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the ONNX converter needs {', '.join(MISSING)} (corral[onnx-convert])"
)


@dataclass
class Server:
    url: str
    home: Path

    def corral(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CORRAL_HOME": str(self.home), "CORRAL_HOST": self.url.removeprefix("http://")}
        return subprocess.run(
            [sys.executable, "-m", "corral.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=600,
        )

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=300)

    def manifest(self, name: str) -> dict[str, Any]:
        model, tag = name.split(":")
        path = self.home / "models" / "manifests" / "registry.ollama.ai" / "library" / model / tag
        return json.loads(path.read_text())

    def layer(self, name: str, media: str) -> str | None:
        return next((layer["digest"] for layer in self.manifest(name)["layers"] if layer["mediaType"] == media), None)

    def blob(self, digest: str) -> Path:
        return self.home / "models" / "blobs" / digest.replace(":", "-")

    def unpacked(self, digest: str) -> Path:
        return self.home / "models" / "unpacked" / digest.replace(":", "-")

    def generate(self, model: str) -> str:
        body = {"model": model, "prompt": "the cat sat on the mat", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0}}  # fmt: skip
        resp = self.post("/api/generate", body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["response"])


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.name != ".lock" and ".owners" not in p.parts
    }  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("corral-onnx-create")
    with running_server(home, CORRAL_KEEP_ALIVE="0") as url:
        yield Server(url, home)


@pytest.fixture(scope="module")
def modelfile(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("modelfile")
    (folder / "Modelfile").write_text(f"FROM {tiny_gguf}\nPARAMETER temperature 0\nSYSTEM You are tiny.\n")
    return folder


@pytest.fixture(scope="module")
def created(server: Server, modelfile: Path) -> subprocess.CompletedProcess[str]:
    """tiny-onnx (converted) and tiny-gguf (the same Modelfile, kept as GGUF)."""
    gguf = server.corral("create", "tiny-gguf", cwd=modelfile)
    assert gguf.returncode == 0, gguf.stderr
    done = server.corral("create", "tiny-onnx", "--format", "onnx", cwd=modelfile)
    assert done.returncode == 0, done.stderr
    return done


def test_create_format_onnx_stores_one_onnx_layer(server: Server, created: subprocess.CompletedProcess[str]) -> None:
    out = created.stdout + created.stderr
    assert "converting F32 model to ONNX FP32" in out and "success" in out
    digest = server.layer("tiny-onnx:latest", MEDIA_ONNX)
    assert digest is not None and server.layer("tiny-onnx:latest", MEDIA_MODEL) is None
    blob = server.blob(digest)
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest
    with tarfile.open(blob) as tar:
        names = set(tar.getnames())
        assert {"genai_config.json", "model.onnx", "tokenizer.json", "vocab.gguf", "corral-onnx.json"} <= names
        assert all(m.mtime == 0 and m.uid == 0 and m.mode in (0o644, 0o755) for m in tar.getmembers())
    # the settings layers came along as with any create
    assert server.manifest("tiny-onnx:latest")["layers"][1:] == server.manifest("tiny-gguf:latest")["layers"][1:]


def test_show_and_list_report_onnx(server: Server, created: Any) -> None:
    show = server.post("/api/show", {"model": "tiny-onnx"}).json()
    assert show["details"]["format"] == "onnx" and show["details"]["quantization_level"] == "FP32"
    assert show["details"]["family"] == "llama"
    assert show["model_info"]["general.architecture"] == "llama" and show["model_info"]["general.parameter_count"] > 0
    assert show["system"] == "You are tiny." and show["capabilities"] == ["completion"]
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/api/tags").json()["models"]}
    assert listed["tiny-onnx:latest"]["details"]["format"] == "onnx"
    text = server.corral("show", "tiny-onnx")
    assert text.returncode == 0 and "FP32" in text.stdout
    fit = server.corral("show", "tiny-onnx", "--fit")
    assert fit.returncode == 0 and "ONNX model: onnxruntime runs it whole" in fit.stdout
    assert "KV cache:" in fit.stdout and "Fits:" in fit.stdout


def test_the_onnx_model_answers_as_the_gguf_does(server: Server, created: Any) -> None:
    onnx = server.generate("tiny-onnx")
    assert onnx and onnx == server.generate("tiny-gguf")  # fp32: llama.cpp's greedy tokens exactly
    chat = server.post("/api/chat", {"model": "tiny-onnx", "messages": [{"role": "user", "content": "hi"}],
                                     "stream": False, "options": {"num_predict": 4}})  # fmt: skip
    assert chat.status_code == 200 and chat.json()["done"] is True
    assert chat.json()["eval_count"] >= 1
    assert server.post("/api/generate", {"model": "tiny-onnx", "keep_alive": "1m"}).status_code == 200  # load only
    [running] = httpx.get(f"{server.url}/api/ps").json()["models"]
    assert running["name"] == "tiny-onnx:latest" and running["details"]["format"] == "onnx"
    assert running["processor"] == "100% CPU" and running["context_length"] > 0
    assert server.post("/api/generate", {"model": "tiny-onnx", "keep_alive": 0}).status_code == 200  # unload


def test_the_layer_is_deterministic(server: Server, created: Any, modelfile: Path, tmp_path: Path) -> None:
    digest = server.layer("tiny-onnx:latest", MEDIA_ONNX)
    again = server.corral("create", "tiny-onnx2", "--format", "onnx", cwd=modelfile)
    assert again.returncode == 0, again.stderr
    assert server.layer("tiny-onnx2:latest", MEDIA_ONNX) == digest
    assert f"using existing layer {digest}" in again.stdout + again.stderr
    # `show --modelfile` names the unpacked folder in FROM; `create` packs and uploads it: same layer
    mf = server.corral("show", "tiny-onnx", "--modelfile")
    assert mf.returncode == 0 and f"FROM {server.unpacked(digest)}" in mf.stdout
    (tmp_path / "Modelfile").write_text(mf.stdout)
    rebuilt = server.corral("create", "tiny-onnx3", "-f", str(tmp_path / "Modelfile"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert server.manifest("tiny-onnx3:latest") == server.manifest("tiny-onnx:latest")


def test_rm_removes_the_blob_and_its_unpacked_folder(server: Server, created: Any, modelfile: Path) -> None:
    done = server.corral("create", "tiny-onnx-q", "--format", "onnx", "--quantize", "int8", cwd=modelfile)
    assert done.returncode == 0, done.stderr
    assert "converting F32 model to ONNX INT8" in done.stdout + done.stderr
    digest = server.layer("tiny-onnx-q:latest", MEDIA_ONNX)
    assert digest is not None and digest != server.layer("tiny-onnx:latest", MEDIA_ONNX)
    assert server.generate("tiny-onnx-q")  # loading unpacks it
    assert (server.unpacked(digest) / "genai_config.json").is_file()
    assert server.corral("rm", "tiny-onnx-q").returncode == 0
    assert not server.blob(digest).exists() and not server.unpacked(digest).exists()
    shared = server.layer("tiny-onnx:latest", MEDIA_ONNX)
    assert server.blob(shared).exists()  # other models' layers stay


def test_bad_requests_leave_the_store_as_it_was(server: Server, tiny_gguf: Path, tmp_path: Path) -> None:
    assert server.corral("create", "base-gguf", "-f", str(_modelfile(tmp_path, f"FROM {tiny_gguf}"))).returncode == 0
    before = snapshot(server.home / "models")
    cases = [
        ({"model": "x", "from": "base-gguf", "format": "xml"}, "unknown format 'xml'"),
        ({"model": "x", "from": "base-gguf", "format": "onnx", "quantize": "q4_0"}, "precision 'q4_0'"),
        ({"model": "x", "from": "base-gguf", "format": "onnx", "quantize": "fp16"}, "precision 'fp16'"),
    ]
    for body, message in cases:
        resp = server.post("/api/create", body)
        assert resp.status_code == 400 and message in resp.json()["error"], resp.text
    lora = _modelfile(tmp_path, f"FROM {tiny_gguf}\nADAPTER {tiny_gguf}")
    done = server.corral("create", "x", "-f", str(lora), "--format", "onnx")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ONNX models cannot have LoRA adapters")
    assert snapshot(server.home / "models") == before


def test_onnx_weights_cannot_be_requantised(server: Server, created: Any) -> None:
    before = snapshot(server.home / "models")
    resp = server.post("/api/create", {"model": "y", "from": "tiny-onnx", "quantize": "q4_0"})
    assert resp.status_code == 400 and "already ONNX" in resp.json()["error"]
    resp = server.post("/api/create", {"model": "y", "from": "tiny-onnx", "format": "gguf"})
    assert resp.status_code == 400 and "back to GGUF" in resp.json()["error"]
    assert snapshot(server.home / "models") == before
    # FROM an ONNX model with new settings works, and shares its layer
    resp = server.post(
        "/api/create", {"model": "tiny-onnx-pirate", "from": "tiny-onnx", "system": "Arr.", "stream": False}
    )
    assert resp.status_code == 200, resp.text
    assert server.layer("tiny-onnx-pirate:latest", MEDIA_ONNX) == server.layer("tiny-onnx:latest", MEDIA_ONNX)
    assert server.generate("tiny-onnx-pirate") == server.generate("tiny-onnx")


def test_an_unsafe_tar_is_refused(server: Server, tmp_path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, body in (("genai_config.json", b"{}"), ("../escaped.txt", b"boo")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    blob = data.getvalue()
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert httpx.post(f"{server.url}/api/blobs/{digest}", content=blob).status_code == 201
    resp = server.post("/api/create", {"model": "evil", "files": {"evil.onnx.tar": digest}})
    assert resp.status_code == 400 and "cannot be unpacked" in resp.json()["error"], resp.text
    assert not (server.home / "models" / "unpacked" / "escaped.txt").exists()
    assert not list(server.home.rglob("escaped.txt"))


def test_push_and_pull_round_trip(server: Server, created: Any, registry: str) -> None:
    name = f"{registry}/me/tiny-onnx:v1"
    assert server.corral("cp", "tiny-onnx", name).returncode == 0
    pushed = server.corral("push", name, "--insecure")
    assert pushed.returncode == 0, pushed.stderr
    digest = server.layer("tiny-onnx:latest", MEDIA_ONNX)
    before = server.generate("tiny-onnx")
    assert server.corral("rm", *_models_using(server, digest)).returncode == 0
    assert not server.blob(digest).exists() and not server.unpacked(digest).exists()
    pulled = server.corral("pull", name, "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    assert server.blob(digest).exists()
    assert server.generate(name) == before


def _models_using(server: Server, digest: str | None) -> list[str]:
    root = server.home / "models" / "manifests"
    paths = [p for p in root.rglob("*") if p.is_file() and digest in p.read_text()]
    return ["{}/{}/{}:{}".format(*p.relative_to(root).parts) for p in paths]


def _modelfile(folder: Path, text: str) -> Path:
    path = folder / f"Modelfile-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    path.write_text(text + "\n")
    return path
