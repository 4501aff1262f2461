"""Model-management commands: create, show, pull, push — each a thin layer over ``corral.client.Client``.

``corral create`` reads the Modelfile here, on the client's side, as ``ollama create`` does: a FROM
(or ADAPTER) that names a file is checked, hashed and uploaded with HEAD/POST /api/blobs (skipped
when the server already has it), then sent by digest in ``files``/``adapters``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from corral.cli.base import cli, client_for, friendly_errors
from corral.errors import BadRequest, CorralError, ModelfileError

if TYPE_CHECKING:  # pluggy and the contract are imported only by the commands that need them
    from corral.hookspecs import Backend, Device, Estimate, LoadSpec
    from corral.plugins import Plugins

_CHUNK = 1 << 20


# ---- create ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option(
    "-f", "--file", "modelfile", type=click.Path(path_type=Path), help="The Modelfile (default: ./Modelfile)."
)
@click.option(
    "-q", "--quantize", help="Quantize F16/F32 weights, e.g. q4_K_M, q8_0, q4_0 (with --format onnx: int4, int8, fp32)."
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["gguf", "onnx"], case_sensitive=False),
    help="onnx: convert the GGUF weights into an ONNX model (needs corral[onnx-convert] where the server runs).",
)
@friendly_errors
def create(model: str, modelfile: Path | None, quantize: str | None, format_: str | None) -> None:
    """Create a model from a Modelfile."""
    from corral.models.modelfile import parse
    from corral.models.names import ModelName

    ModelName.parse(model)  # a bad name fails before anything is uploaded
    path = modelfile or Path("Modelfile")
    if not path.expanduser().is_file():
        if modelfile is None:
            raise CorralError("no Modelfile here: name one with -f, e.g. `corral create mymodel -f ./Modelfile`")
        raise CorralError(f"{modelfile}: no such file")
    path = path.expanduser()
    try:
        mf = parse(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CorralError(
            f"{path}: not a text file (is it the GGUF itself? put `FROM {path}` in a Modelfile)"
        ) from None
    except ModelfileError as exc:
        raise ModelfileError(f"{path}: {exc}") from None

    client = client_for()
    request = _create_request(client, mf, path.resolve().parent)
    _show_progress(client.create(model=model, quantize=quantize, format=format_, stream=True, **request))


def _create_request(client: Any, mf: Any, base_dir: Path) -> dict[str, Any]:
    """The /api/create fields for a parsed Modelfile, uploading the files it names."""
    from corral.models.modelfile import resolve_from

    request: dict[str, Any] = {}
    source = resolve_from(mf.from_, base_dir)
    if source is None:
        request["from_"] = mf.from_
    else:
        request["files"] = _upload_weights(client, source, mf.from_)
    adapters = {}
    for value in mf.adapters:
        adapter = resolve_from(value, base_dir)
        if adapter is None:
            raise BadRequest(f"ADAPTER {value}: not a file (an adapter is a LoRA GGUF file)")
        _check_file(adapter, value, "ADAPTER")
        adapters[adapter.name] = _upload(client, adapter)
    if adapters:
        request["adapters"] = adapters
    params = mf.parameters().model_dump(exclude_none=True)
    if params:
        request["parameters"] = params
    for key, value in (("template", mf.template), ("system", mf.system)):
        if value is not None:
            request[key] = value
    if mf.licenses:
        request["license"] = mf.licenses
    if mf.messages:
        request["messages"] = [{"role": role, "content": content} for role, content in mf.messages]
    return request


def _upload_weights(client: Any, source: Path, value: str) -> dict[str, str]:
    """FROM a file: a GGUF, checked, then uploaded. FROM a folder: an ONNX model, uploaded as one tar."""
    if source.is_dir():
        import tempfile

        from corral.models.onnx_layer import check_folder, pack_to_temp

        check_folder(source, f"FROM {value}")
        with tempfile.TemporaryDirectory(prefix="corral-upload-") as tmp:
            tar = pack_to_temp(source, Path(tmp))
            return {f"{source.name}.onnx.tar": _upload(client, tar)}
    _check_file(source, value, "FROM")
    from corral.formats.gguf import validate_gguf

    validate_gguf(source)  # a broken file fails here, before it is uploaded
    return {source.name: _upload(client, source)}


def _check_file(path: Path, value: str, what: str) -> None:
    if not path.exists():
        raise BadRequest(f"{what} {value}: no such file ({path})")
    if path.is_dir():
        raise BadRequest(f"{what} {value}: {path} is a directory; this must be a GGUF file")


def _upload(client: Any, path: Path) -> str:
    """Put ``path`` in the server's blob store (unless it is there already); return its digest."""
    import hashlib

    import httpx

    from corral.client import ResponseError

    size = path.stat().st_size
    click.echo("gathering model components", err=True)
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
    digest = f"sha256:{sha.hexdigest()}"
    url = f"{client.host}/api/blobs/{digest}"
    try:
        if httpx.head(url, timeout=30).status_code == 200:
            click.echo(f"using existing file {digest}", err=True)
            return digest
        with _bars() as bars, open(path, "rb") as fh:
            task = bars.add_task(f"copying file {digest[7:19]}", total=size)

            def body() -> Iterator[bytes]:
                while chunk := fh.read(_CHUNK):
                    bars.advance(task, len(chunk))
                    yield chunk

            # Content-Length lets the server refuse a blob its disk cannot hold before any byte is written.
            response = httpx.post(url, content=body(), headers={"Content-Length": str(size)}, timeout=None)
    except httpx.TransportError as exc:
        raise ConnectionError(f"could not upload {path.name} to {client.host}: {exc}") from None
    if not response.is_success:
        raise ResponseError(response.text, response.status_code)
    return digest


# ---- show -----------------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--modelfile", is_flag=True, help="Print the model's Modelfile.")
@click.option("--parameters", is_flag=True, help="Print the model's parameters.")
@click.option("--template", is_flag=True, help="Print the model's prompt template.")
@click.option("--system", is_flag=True, help="Print the model's system message.")
@click.option("--license", "license_", is_flag=True, help="Print the model's license.")
@click.option("-v", "--verbose", is_flag=True, help="Show all the model's metadata.")
@click.option(
    "--fit", is_flag=True, help="Estimate the memory it needs here, device by device, and where its layers would go."
)
@click.option("--backend", help="With --fit: the backend to plan for (default: the best available).")
@click.option("--num-ctx", type=int, help="With --fit: context length of one sequence.")
@friendly_errors
def show(
    model: str,
    modelfile: bool,
    parameters: bool,
    template: bool,
    system: bool,
    license_: bool,
    verbose: bool,
    fit: bool,
    backend: str | None,
    num_ctx: int | None,
) -> None:
    """Show information about a model."""
    wanted = [
        flag
        for flag, on in (
            ("modelfile", modelfile),
            ("parameters", parameters),
            ("template", template),
            ("system", system),
            ("license", license_),
        )
        if on
    ]
    if len(wanted) > 1:
        raise CorralError("only one of --license, --modelfile, --parameters, --system or --template can be given")
    if fit:
        click.echo(fit_report(model, backend, num_ctx))
        return
    resp = client_for().show(model, verbose=verbose or None)
    if wanted:
        click.echo(getattr(resp, wanted[0]) or "")
        return
    click.echo(info_block(resp, verbose=verbose), nl=False)


def fit_report(model: str, backend: str | None, num_ctx: int | None, *, plugins: Plugins | None = None) -> str:
    """Where the model would go on this machine and why, as the backend estimates it against the free
    memory its devices report now (Ollama only says that a model did not fit). ``plugins``: the
    backends to choose from (default: the installed ones)."""
    from corral.config import Settings
    from corral.hookspecs import LoadSpec
    from corral.models.recipes import resolve
    from corral.models.store import Store
    from corral.plugins import Plugins

    settings = Settings()
    recipe = resolve(Store(settings.models_dir), model)
    entry = (plugins or Plugins()).select(backend or settings.backend)
    devices = entry.probe().devices
    spec = LoadSpec(
        model_path=recipe.model_path,
        num_ctx=num_ctx or recipe.options.num_ctx or settings.num_ctx,
        num_parallel=settings.num_parallel,
        num_gpu=recipe.options.num_gpu,
        adapters=recipe.adapters,
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type,
        devices=devices,
    )
    return f"Backend:   {entry.name}\n{explain_fit(entry.backend, spec, devices)}"


def explain_fit(backend: Backend, spec: LoadSpec, devices: Sequence[Device]) -> str:
    """The backend's own account (``Backend.explain``), else the sizes of its ``estimate``."""
    from corral.errors import InsufficientMemory
    from corral.formats.units import human_bytes

    explain = getattr(backend, "explain", None)
    if explain is not None:
        return str(explain(spec, devices))
    estimate = getattr(backend, "estimate", None)
    try:
        result: Estimate | None = estimate(spec, devices) if estimate is not None else None
    except InsufficientMemory as exc:
        return f"Does not fit: {exc}"
    if result is None:
        return "Estimate:  none (this backend loads models without a memory check)"
    return (
        f"Estimate:  {human_bytes(result.size_bytes)} in all, {human_bytes(result.size_on_device)} on accelerators"
        f" -> {result.processor_label}"
    )


def info_block(resp: Any, *, verbose: bool = False) -> str:
    """``ollama show``'s summary: Model, Capabilities, Parameters, System, License (Metadata with -v)."""
    info = resp.model_info or {}
    arch = info.get("general.architecture") or resp.details.family
    rows = [("architecture", arch)]
    if (count := info.get("general.parameter_count")) is not None:
        rows.append(("parameters", human_number(int(count))))
    elif resp.details.parameter_size:
        rows.append(("parameters", resp.details.parameter_size))
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        if (value := info.get(f"{arch}.{key}")) is not None:
            rows.append((label, str(value)))
    rows.append(("quantization", resp.details.quantization_level))
    sections = [("Model", _table(rows))]
    if resp.capabilities:
        sections.append(("Capabilities", list(resp.capabilities)))
    if resp.parameters:
        params = [line.split(None, 1) for line in resp.parameters.splitlines() if line.strip()]
        sections.append(("Parameters", _table([(p[0], p[1] if len(p) > 1 else "") for p in params])))
    if resp.system:
        sections.append(("System", _trimmed(resp.system, verbose)))
    if resp.license:
        sections.append(("License", _trimmed(resp.license, verbose)))
    if verbose and info:
        sections.append(("Metadata", _table([(k, _short(v)) for k, v in info.items()])))
    out = []
    for title, lines in sections:
        out.append(f"  {title}")
        out.extend(f"    {line}".rstrip() for line in lines)
        out.append("")
    return "\n".join(out) + "\n"


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber: 134515008 -> 134.52M, 7000000000 -> 7B."""
    for unit, scale, places in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 0)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) or places == 0 else f"{value:.{places}f}{unit}"
    return str(n)


def _table(rows: Iterable[tuple[str, str]]) -> list[str]:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{k:<{width}}    {v}" for k, v in rows]


def _trimmed(text: str, verbose: bool) -> list[str]:
    lines = text.strip("\n").splitlines() or [""]
    return lines if verbose or len(lines) <= 2 else [*lines[:2], "..."]


def _short(value: Any) -> str:
    if isinstance(value, list):
        head = ", ".join(str(v) for v in value[:3])
        return f"[{head}{', ...' if len(value) > 3 else ''}] ({len(value)} items)" if value else "[]"
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


# ---- pull / push ----------------------------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use plain http to reach the registry.")
@friendly_errors
def pull(model: str, insecure: bool) -> None:
    """Pull a model from a registry."""
    pull_model(client_for(), model, insecure=insecure)


@cli.command()
@click.argument("model")
@click.option("--insecure", is_flag=True, help="Use plain http to reach the registry.")
@friendly_errors
def push(model: str, insecure: bool) -> None:
    """Push a model to a registry."""
    _show_progress(client_for().push(model, insecure=insecure, stream=True))


def pull_model(client: Any, model: str, *, insecure: bool = False) -> None:
    """Pull ``model`` with a progress bar per layer; ``corral run`` calls it for a missing model."""
    _show_progress(client.pull(model, insecure=insecure, stream=True))


def _bars() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.percentage:>3.0f}%"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def _show_progress(parts: Iterable[Any]) -> None:
    """Ollama's progress display: a bar per layer (size, speed, ETA), other statuses as lines."""
    bars: Any = None
    tasks: dict[str, Any] = {}
    last = None
    try:
        for part in parts:
            status, digest, total = part.status, part.digest, part.total
            if digest and total:
                if bars is None:
                    bars, tasks = _bars(), {}
                    bars.start()
                if digest not in tasks:
                    tasks[digest] = bars.add_task(status, total=total)
                bars.update(tasks[digest], completed=part.completed or 0, description=status)
                continue
            if bars is not None:  # a new phase: the finished bars stay on screen above it
                bars.stop()
                bars = None
            if status and status != last:
                click.echo(status, err=True)  # as Ollama: progress goes to stderr
                last = status
    finally:
        if bars is not None:
            bars.stop()
