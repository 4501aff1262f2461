"""Create a model: from a Modelfile or an Ollama ``/api/create`` request, into the store.

Two phases. ``prepare`` checks everything that can be checked without writing (the name, the
Modelfile, parameters, the quantisation type, the files named, the base model, the GGUF itself) and
so reports every bad input before the store is touched. ``build`` then quantises (to a temporary
file) or converts to ONNX (``format: "onnx"``, to a temporary folder packed as one tar layer),
writes the layers as blobs and the manifest last, holding the store lock throughout, so a
failure leaves the store as it was: blobs written for a failed create are removed again.

``create_model`` runs both; ``create_from_modelfile`` is the same for Modelfile text whose FROM and
ADAPTER lines may name local files (relative to the Modelfile's directory).

Progress goes to a callback as Ollama's create statuses: "parsing modelfile", "using existing
layer sha256:...", "creating new layer sha256:...", "quantizing F16 model to Q4_K_M",
"writing manifest", "success".
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import BadRequest, CorralError, InvalidModelFile, ModelNotFound
from corral.models.modelfile import Modelfile, parse, resolve_from
from corral.models.names import ModelName
from corral.models.recipes import Recipe, gguf_config_blob, resolve
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
    Layer,
    Manifest,
    Store,
    check_digest,
)
from corral.types import CreateRequest, Message, Options

Progress = Callable[[dict[str, Any]], None]

# Quantisation types a user may ask for -> the llama_cpp.LLAMA_FTYPE_* constant that makes them.
# The i-quants are left out: they need an importance matrix, which `create` has no way to take.
QUANT_TYPES: dict[str, str] = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
QUANTIZABLE_SOURCES = ("F32", "F16", "BF16")

# The order layers take in a manifest (Ollama's): weights first, then what configures them.
_LAYER_ORDER = [
    MEDIA_MODEL, MEDIA_ONNX, MEDIA_PROJECTOR, MEDIA_ADAPTER, MEDIA_TEMPLATE, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_MESSAGES,
    MEDIA_LICENSE,
]
_GGUF_MAGIC = b"GGUF"
FORMATS = ("gguf", "onnx")


@dataclass
class _Source:
    """A file that becomes a layer: already a blob (``digest`` set) or a local file."""

    label: str  # what the user called it: a file name, a FROM value
    path: Path
    digest: str | None = None
    onnx: bool = False  # an ONNX model: a genai folder, or the tar of one (an uploaded blob)


@dataclass
class Plan:
    """A checked create: everything ``build`` needs, nothing written yet."""

    name: ModelName
    base: Recipe | None = None  # FROM a model: its layers are the starting point
    weights: _Source | None = None  # new weights (FROM a file or blob); None keeps the base's
    file_type: str = ""  # quantisation of the weights in use
    quantize: str | None = None  # canonical name, e.g. "q4_K_M"
    to_onnx: str | None = None  # convert the GGUF weights to ONNX at this precision ("int8")
    adapters: list[_Source] | None = None  # None keeps the base's
    template: str | None = None
    system: str | None = None
    licenses: list[str] | None = None
    params: dict[str, Any] | None = None  # the params layer's JSON, base's merged under the new
    messages: list[dict[str, Any]] | None = None


def _emit(progress: Progress | None, status: str, **extra: Any) -> None:
    if progress is not None:
        progress({"status": status, **{k: v for k, v in extra.items() if v is not None}})


# ---- phase 1: check -------------------------------------------------------------------------------


def request_from_modelfile(mf: Modelfile | str, model: str, *, quantize: str | None = None) -> CreateRequest:
    """A CreateRequest carrying a Modelfile's settings; FROM/ADAPTER values are kept as written."""
    if isinstance(mf, str):
        mf = parse(mf)
    params = mf.parameters().model_dump(exclude_none=True)
    return CreateRequest(
        model=model,
        **{"from": mf.from_},
        adapters={a: a for a in mf.adapters} or None,
        template=mf.template,
        system=mf.system,
        license=mf.licenses or None,
        parameters=params or None,
        messages=[Message(role=r, content=c) for r, c in mf.messages] or None,
        quantize=quantize,
    )


def prepare(
    store: Store,
    req: CreateRequest,
    *,
    base_dir: Path | None = None,
    progress: Progress | None = None,
) -> Plan:
    """Check a create request without writing anything (but a bundled base model's first import, and the
    unpacked copy of an uploaded ONNX tar, which is derived from its blob and removed with it).

    ``base_dir``: FROM and ADAPTER values may name local files, relative to it (a Modelfile's
    directory). The server passes None: over HTTP, files arrive as uploaded blobs (``files``).
    """
    _emit(progress, "parsing modelfile")
    name = ModelName.parse(req.model)
    from_value, adapters_in = req.from_, req.adapters
    template, system, license_ = req.template, req.system, req.license
    parameters, messages = req.parameters, req.messages
    if req.modelfile and not (req.from_ or req.files):
        # The older API: the whole Modelfile in one string; fields given beside it win.
        legacy = request_from_modelfile(req.modelfile, req.model)
        from_value = legacy.from_
        adapters_in = adapters_in or legacy.adapters
        template = template if template is not None else legacy.template
        system = system if system is not None else legacy.system
        license_ = license_ if license_ is not None else legacy.license
        parameters = {**(legacy.parameters or {}), **(parameters or {})} or None
        messages = messages if messages is not None else legacy.messages

    plan = Plan(name=name, template=template or None, system=system or None)
    new_params = _check_parameters(parameters)
    plan.messages = [m.model_dump(include={"role", "content"}) for m in messages] if messages else None
    if license_:
        plan.licenses = [license_] if isinstance(license_, str) else [str(x) for x in license_]
    fmt = (req.format or "").lower() or None
    if fmt is not None and fmt not in FORMATS:
        raise BadRequest(f"unknown format '{req.format}': use one of {', '.join(FORMATS)}")
    if req.quantize and fmt != "onnx":
        plan.quantize = _quant_name(req.quantize)

    # Where the weights come from: uploaded files, a blob digest, a local file, or a model.
    if req.files and from_value:
        raise BadRequest("give either 'from' (a model to build on) or 'files' (uploaded weights), not both")
    if req.files:
        plan.weights = _weights_from_files(store, req.files)
    elif from_value:
        source = _source(store, from_value, base_dir, what="FROM")
        if source is not None:
            plan.weights = source
        else:
            plan.base = _resolve_base(store, from_value)
    else:
        raise BadRequest("neither 'from' nor 'files' was given: say which model or GGUF file to build on")

    if adapters_in:
        plan.adapters = []
        for label, ref in adapters_in.items():
            source = _source(store, ref, base_dir, what="ADAPTER", label=label)
            if source is None:
                raise BadRequest(f"ADAPTER {ref}: not a file or an uploaded blob (an adapter is a LoRA GGUF file)")
            _check_adapter(source)
            plan.adapters.append(source)

    if plan.weights is not None:
        plan.file_type = _validate_weights(store, plan.weights)
    else:
        assert plan.base is not None
        plan.file_type = _base_file_type(store, plan.base)
    _plan_format(plan, fmt, req.quantize)
    if plan.quantize and plan.file_type.upper() not in QUANTIZABLE_SOURCES:
        raise BadRequest(
            f"quantize needs an F16 or F32 model, and this one is already {plan.file_type}: "
            "build on the unquantised GGUF instead"
        )

    base_params: dict[str, Any] = {}
    if plan.base is not None and (layer := plan.base.manifest.layer(MEDIA_PARAMS)) is not None:
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(store.read_blob_text(layer.digest))
            base_params = loaded if isinstance(loaded, dict) else {}
    if new_params is not None:
        plan.params = {**base_params, **new_params}
    return plan


def _plan_format(plan: Plan, fmt: str | None, quantize: str | None) -> None:
    """What the weights become: kept as they are, or converted from GGUF to ONNX (``quantize`` is then
    the ONNX precision). The ONNX engine applies no LoRA adapters, so an ONNX model may have none."""
    onnx_now = plan.weights.onnx if plan.weights is not None else bool(plan.base and plan.base.is_onnx)
    if fmt == "gguf" and onnx_now:
        raise BadRequest("this model's weights are ONNX, which cannot be converted back to GGUF")
    if fmt == "onnx" and not onnx_now:
        from corral.engines.onnx.convert import check_convertible

        gguf = plan.weights.path if plan.weights is not None else plan.base.model_path  # type: ignore[union-attr]
        plan.to_onnx = check_convertible(gguf, quantize)
    elif onnx_now and quantize:
        raise BadRequest(f"the weights are already ONNX ({plan.file_type}): quantize when converting from GGUF instead")
    adapters = plan.adapters if plan.adapters is not None else list(plan.base.adapters if plan.base else ())
    if (onnx_now or plan.to_onnx) and adapters:
        raise BadRequest("ONNX models cannot have LoRA adapters: drop the ADAPTER lines, or keep the model as GGUF")


def _check_parameters(parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate request parameters (typed, or strings as a Modelfile writes them); stop becomes a list."""
    if not parameters:
        return None
    data = dict(parameters)
    if isinstance(data.get("stop"), str):
        data["stop"] = [data["stop"]]
    return Options.parse(data, strict=True).model_dump(exclude_none=True)


def _quant_name(text: str) -> str:
    wanted = text.strip().lower()
    for name in QUANT_TYPES:
        if name.lower() == wanted:
            return name
    raise BadRequest(f"unsupported quantization type '{text}': use one of {', '.join(QUANT_TYPES)}")


def _digest_ref(value: str) -> str | None:
    """A blob reference: ``sha256:<hex>`` or the older ``@sha256:<hex>``."""
    text = value.strip().removeprefix("@")
    if text.startswith(("sha256:", "sha256-")):
        return check_digest(text)
    return None


def _blob_source(store: Store, digest: str, label: str) -> _Source:
    digest = check_digest(digest)
    if not store.has_blob(digest):
        raise BadRequest(f"{label}: blob {digest} not found: upload it first with POST /api/blobs/{digest}")
    return _Source(label=label, path=store.blob_path(digest), digest=digest)


def _source(store: Store, value: str, base_dir: Path | None, *, what: str, label: str | None = None) -> _Source | None:
    """The file a FROM/ADAPTER value names, or None when it names a model."""
    if (digest := _digest_ref(value)) is not None:
        return _blob_source(store, digest, label or value)
    if base_dir is None:
        if resolve_from(value, Path(os.sep, "nonexistent-corral-dir")) is not None:
            raise BadRequest(
                f"{what} {value}: the server does not read files by path; upload the file with "
                "POST /api/blobs/<digest> and name it in 'files' (`corral create` does this for you)"
            )
        return None
    path = resolve_from(value, base_dir)
    if path is None:
        return None
    if not path.exists():
        raise BadRequest(f"{what} {value}: no such file ({path})")
    if path.is_dir():
        if what != "FROM":
            raise BadRequest(f"{what} {value}: {path} is a directory; an adapter is a LoRA GGUF file")
        from corral.models.onnx_layer import check_folder

        check_folder(path, f"{what} {value}")
        return _Source(label=label or value, path=path, onnx=True)
    return _Source(label=label or value, path=path)


def _weights_from_files(store: Store, files: dict[str, str]) -> _Source:
    if len(files) != 1:
        raise BadRequest(f"'files' must hold exactly one GGUF file, not {len(files)} ({', '.join(files)})")
    ((filename, digest),) = files.items()
    if filename.lower().endswith((".safetensors", ".bin", ".pt", ".pth")):
        raise BadRequest(
            f"{filename}: Corral imports GGUF files and ONNX model folders; "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    source = _blob_source(store, digest, filename)
    from corral.models.onnx_layer import is_onnx_tar

    return _Source(source.label, source.path, source.digest, onnx=is_onnx_tar(source.path))


def _resolve_base(store: Store, value: str) -> Recipe:
    try:
        name = ModelName.parse(value)
    except BadRequest:
        raise BadRequest(f"FROM {value}: not a model name, a GGUF file or a blob digest") from None
    try:
        return resolve(store, name)
    except ModelNotFound as exc:
        message = str(exc)
        if "pip install" not in message:
            message = f"{message}: pull it first (`corral pull {value}`) or FROM a GGUF file"
        raise ModelNotFound(message) from None


def _validate_weights(store: Store, source: _Source) -> str:
    """Check the weights; their quantisation ("Q4_1", or an ONNX model's precision)."""
    if source.onnx:
        from corral.models.onnx_layer import precision_of, unpacked

        return precision_of(unpacked(store, source.digest) if source.digest else source.path)
    from corral.formats.gguf import validate_gguf

    try:
        return validate_gguf(source.path).file_type
    except InvalidModelFile as exc:
        raise InvalidModelFile(_relabel(str(exc), source)) from None


def _relabel(message: str, source: _Source) -> str:
    """validate_gguf names the file by path; a blob's path means nothing to the user."""
    prefix = f"{source.path}: "
    return f"{source.label}: {message[len(prefix) :]}" if message.startswith(prefix) else message


def _check_adapter(source: _Source) -> None:
    """A LoRA adapter is a GGUF too, but has no vocabulary: check its magic number only."""
    try:
        with open(source.path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise BadRequest(f"ADAPTER {source.label}: cannot read it ({exc.strerror or exc})") from None
    if magic != _GGUF_MAGIC:
        raise InvalidModelFile(f"ADAPTER {source.label}: not a GGUF file (bad magic {magic!r})")


def _base_file_type(store: Store, base: Recipe) -> str:
    if base.is_onnx:
        from corral.models.onnx_layer import precision_of

        return precision_of(base.model_path)
    try:
        config = json.loads(store.blob_path(base.manifest.config.digest).read_bytes())
        if config.get("file_type"):
            return str(config["file_type"])
    except (OSError, ValueError, AttributeError):
        pass
    from corral.formats.gguf import validate_gguf

    return validate_gguf(base.model_path).file_type


# ---- phase 2: write -------------------------------------------------------------------------------


def build(store: Store, plan: Plan, *, progress: Progress | None = None) -> Manifest:
    """Quantise or convert if asked, write the layers and then the manifest; on failure undo the writes."""
    with contextlib.ExitStack() as cleanup:
        weights = plan.weights
        if plan.quantize:
            src = weights.path if weights is not None else plan.base.model_path  # type: ignore[union-attr]
            target = plan.quantize.upper()
            _emit(progress, f"quantizing {plan.file_type.upper()} model to {target}")
            tmp_quantized = quantize_file(store, src, plan.quantize)
            cleanup.callback(_unlink, tmp_quantized)
            weights = _Source(label=f"{target} weights", path=tmp_quantized)
            _emit(progress, f"quantized {plan.file_type.upper()} model to {target}")
        converted = _convert_to_onnx(store, plan, weights, cleanup, progress) if plan.to_onnx else None
        weights = converted or weights
        config_bytes = None
        if weights is not None and weights.onnx:
            from corral.models.onnx_layer import onnx_config_blob, unpacked

            folder = weights.path if weights.path.is_dir() else unpacked(store, weights.digest)  # type: ignore[arg-type]
            config_bytes = onnx_config_blob(folder)
            weights = _onnx_layer_source(store, weights, cleanup)
        elif weights is not None:
            config_bytes = gguf_config_blob(weights.path)
        manifest = _write(store, plan, weights, config_bytes, progress)
        if converted is not None:  # the folder just converted is what unpacking its layer would give
            from corral.models.onnx_layer import adopt

            adopt(store, manifest.layer(MEDIA_ONNX).digest, converted.path)  # type: ignore[union-attr]
        return manifest
    raise AssertionError("unreachable")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _convert_to_onnx(
    store: Store, plan: Plan, weights: _Source | None, cleanup: contextlib.ExitStack, progress: Progress | None
) -> _Source:
    """Build the onnxruntime-genai folder for the GGUF weights in a temporary folder beside the store."""
    from corral.engines.onnx.convert import convert

    assert plan.to_onnx is not None
    src = weights.path if weights is not None else plan.base.model_path  # type: ignore[union-attr]
    store.root.mkdir(parents=True, exist_ok=True)
    work = Path(cleanup.enter_context(store.temp_dir(store.root, "onnx-convert")))
    what = f"{plan.file_type.upper()} model to ONNX {plan.to_onnx.upper()}"
    _emit(progress, f"converting {what}")
    done = convert(src, work, plan.to_onnx)
    _emit(progress, f"converted {what} in {done.seconds:.1f} s")
    return _Source(label=f"ONNX {plan.to_onnx.upper()} weights", path=done.path, onnx=True)


def _onnx_layer_source(store: Store, weights: _Source, cleanup: contextlib.ExitStack) -> _Source:
    """An ONNX model as its layer's file: an uploaded tar as it is, a folder packed into a tar."""
    if not weights.path.is_dir():
        return weights
    from corral.models.onnx_layer import pack_to_temp

    tar = pack_to_temp(weights.path, store.blobs, store=store)
    cleanup.callback(_unlink, tar)
    return _Source(label=weights.label, path=tar, onnx=True)


def _write(
    store: Store, plan: Plan, weights: _Source | None, config_bytes: bytes | None, progress: Progress | None
) -> Manifest:
    created: list[str] = []
    action = f"create {plan.name.display}"

    def note(digest: str, new: bool) -> None:
        if new:
            created.append(digest)
        _emit(progress, f"{'creating new' if new else 'using existing'} layer {digest}")

    def file_layer(source: _Source, media: str) -> Layer:
        if source.digest is not None and store.has_blob(source.digest):
            note(source.digest, False)
            return Layer(mediaType=media, digest=source.digest, size=source.path.stat().st_size)
        digest = _sha256_file(source.path)
        if store.has_blob(digest):
            note(digest, False)
            return Layer(mediaType=media, digest=digest, size=store.blob_path(digest).stat().st_size)
        layer = store.write_blob_file(source.path, media, action=action)
        note(layer.digest, True)
        return layer

    def bytes_layer(data: bytes, media: str) -> Layer:
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        existed = store.has_blob(digest)
        layer = store.write_blob_bytes(data, media, action=action)
        note(layer.digest, not existed)
        return layer

    with store.lock():
        try:
            base_layers = list(plan.base.manifest.layers) if plan.base is not None else []
            replaced = {
                MEDIA_MODEL: weights is not None,
                MEDIA_ONNX: weights is not None,
                MEDIA_ADAPTER: plan.adapters is not None,
                MEDIA_TEMPLATE: plan.template is not None,
                MEDIA_SYSTEM: plan.system is not None,
                MEDIA_LICENSE: plan.licenses is not None,
                MEDIA_PARAMS: plan.params is not None,
                MEDIA_MESSAGES: plan.messages is not None,
            }
            layers: list[Layer] = []
            for layer in base_layers:
                if replaced.get(layer.mediaType, False):
                    continue
                if not store.has_blob(layer.digest):
                    raise CorralError(f"the base model's layer {layer.digest} is missing from the store")
                note(layer.digest, False)
                layers.append(layer)
            if weights is not None:
                layers.append(file_layer(weights, MEDIA_ONNX if weights.onnx else MEDIA_MODEL))
            for adapter in plan.adapters or []:
                layers.append(file_layer(adapter, MEDIA_ADAPTER))
            if plan.template is not None:
                layers.append(bytes_layer(plan.template.encode(), MEDIA_TEMPLATE))
            if plan.system is not None:
                layers.append(bytes_layer(plan.system.encode(), MEDIA_SYSTEM))
            if plan.params is not None:
                layers.append(bytes_layer(params_json(plan.params), MEDIA_PARAMS))
            if plan.messages is not None:
                layers.append(bytes_layer(json.dumps(plan.messages, separators=(",", ":")).encode(), MEDIA_MESSAGES))
            for text in plan.licenses or []:
                layers.append(bytes_layer(text.encode(), MEDIA_LICENSE))
            layers = _ordered(layers)

            if config_bytes is not None:
                config = bytes_layer(config_bytes, CONFIG_MEDIA_TYPE)
            else:
                assert plan.base is not None
                config = plan.base.manifest.config
            manifest = Manifest(config=config, layers=layers)

            _emit(progress, "writing manifest")
            old = None
            with contextlib.suppress(ModelNotFound):
                old = store.get(plan.name).manifest
            store.write_manifest(plan.name, manifest, action=action)
        except BaseException:
            store.prune(set(created))
            raise
        if old is not None:  # layers only the replaced model used go, as in Ollama
            store.prune(old.digests() - manifest.digests())
    _emit(progress, "success")
    return manifest


def params_json(params: dict[str, Any]) -> bytes:
    """The params layer: Ollama writes it with sorted keys (Go's encoder)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":")).encode()


def _ordered(layers: list[Layer]) -> list[Layer]:
    rank = {media: i for i, media in enumerate(_LAYER_ORDER)}
    return sorted(layers, key=lambda layer: rank.get(layer.mediaType, 1))  # stable: unknown kinds after weights


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def quantize_file(store: Store, src: Path, quant: str) -> Path:
    """Quantise ``src`` with llama.cpp into a temporary file beside the blobs; the caller removes it."""
    import llama_cpp

    from corral.engines.host import physical_cores
    from corral.engines.llamacpp.backend import init_backend

    init_backend(llama_cpp)  # routes llama.cpp's chatter through Corral's log filter
    fd, tmp = store.temp_file(store.blobs, "quantize")
    os.close(fd)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
        params.nthread = physical_cores()
        rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise CorralError(f"quantizing to {quant.upper()} failed (llama.cpp returned {rc})")
        from corral.formats.gguf import validate_gguf

        validate_gguf(Path(tmp))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


# ---- entry points ---------------------------------------------------------------------------------


def create_model(
    store: Store, req: CreateRequest, *, base_dir: Path | None = None, progress: Progress | None = None
) -> Manifest:
    """Check, then build: an Ollama create request (``base_dir``: where FROM paths are relative to)."""
    plan = prepare(store, req, base_dir=base_dir, progress=progress)
    return build(store, plan, progress=progress)


def create_from_modelfile(
    store: Store,
    model: str,
    text: str,
    *,
    modelfile_dir: Path | str = ".",
    quantize: str | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Create ``model`` from Modelfile text; FROM/ADAPTER paths are relative to ``modelfile_dir``."""
    ModelName.parse(model)
    req = request_from_modelfile(parse(text), model, quantize=quantize)
    return create_model(store, req, base_dir=Path(modelfile_dir).expanduser(), progress=progress)
