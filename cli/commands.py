"""Everyday commands: backends (in-process), serve, and run, list, ps, stop, rm, cp as clients of the server."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from corral.cli.base import cli, client_for, debug_enabled, friendly_errors
from corral.errors import CorralError

if TYPE_CHECKING:  # pydantic is most of a cold start: `corral --help` must not import it
    from corral.config import Settings


def human_size(n: int) -> str:
    """Decimal units, as ``ollama list`` prints them."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def human_ago(when: datetime | str, now: datetime | None = None) -> str:
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    return _span(seconds) + " ago" if seconds >= 1 else "Less than a second ago"


def human_until(when: str | None, now: datetime | None = None) -> str:
    if not when or when.startswith("0001-"):
        return "Forever"
    moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return "Stopping..."
    return _span(seconds) + " from now"


def _span(seconds: float) -> str:
    for unit, size in (
        ("year", 31536000),
        ("month", 2592000),
        ("week", 604800),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= size:
            n = int(seconds // size)
            return f"About a {unit}" if n == 1 and unit in ("hour", "minute") else f"{n} {unit}{'s' if n != 1 else ''}"
    n = int(seconds)
    return f"{n} second{'s' if n != 1 else ''}"


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """Columns padded like ``ollama list`` (plain text, easy to grep and cut)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("    ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def not_found_hint(client: Any, model: str, exc: Exception | str) -> CorralError:
    try:
        names = [m["model"] for m in client.list()["models"]]
    except Exception:  # the hint is a courtesy; the error itself still goes out
        names = []
    hint = f" (available: {', '.join(names)})" if names else " (no models yet: try `corral run smollm2:135m`)"
    return CorralError(f"{exc}{hint}")


@cli.command()
@friendly_errors
def backends() -> None:
    """List backends, their devices, and why any is unavailable."""
    from corral.plugins import Plugins

    plugins = Plugins()
    best = next((e.name for e in plugins.backends if e.probe().available), None)
    rows = []
    for entry in plugins.backends:
        probe = entry.probe()
        devices = ", ".join(
            f"{d.name} ({human_size(d.free_memory)} free of {human_size(d.total_memory)})" for d in probe.devices
        )
        available = ("yes (default)" if entry.name == best else "yes") if probe.available else "no"
        rows.append([entry.name, available, devices or "-", probe.reason or entry.backend.description])
    rows += [[f.plugin, "no", "-", f.reason] for f in plugins.failures]
    print_rows(["BACKEND", "AVAILABLE", "DEVICES", "DETAILS"], rows)


@cli.command()
@click.argument("model")
@click.argument("prompt", nargs=-1)
@click.option("--verbose", is_flag=True, help="Print timings and token rates after each answer.")
@click.option("--backend", help="Force a backend (cpu, cuda, rocm, metal, …).")
@click.option("--keepalive", help="How long the model stays loaded afterwards (e.g. 5m, 1h, 0).")
@click.option("--format", "format_", help="Response format: json.")
@click.option("--nowordwrap", is_flag=True, help="Do not wrap words to the terminal width.")
@click.option("--think/--nothink", default=None, help="Let a reasoning model think first (shown apart), or not.")
@click.option("--hidethinking", is_flag=True, help="Think, but print only the answer.")
@friendly_errors
def run(
    model: str,
    prompt: tuple[str, ...],
    verbose: bool,
    backend: str | None,
    keepalive: str | None,
    format_: str | None,
    nowordwrap: bool,
    think: bool | None,
    hidethinking: bool,
) -> None:
    """Run a model: answer PROMPT, or chat when none is given on a terminal."""
    client = client_for()  # first: a server it starts comes up while the rest is imported
    from corral.cli.repl import Session
    from corral.cli.repl_loop import interactive, one_shot
    from corral.client import ResponseError

    try:
        client.show(model)
    except ResponseError as exc:  # like `ollama run`, a model that is not here is pulled first
        if exc.status_code != 404:
            raise
        from corral.cli.model_commands import pull_model

        try:
            pull_model(client, model)
        except (ResponseError, CorralError, ConnectionError) as pull_error:
            raise not_found_hint(
                client, model, f"model '{model}' not found, and pulling it failed: {pull_error}"
            ) from None
    session = Session(
        client,
        model,
        backend=backend,
        keep_alive=keepalive,
        format=format_,
        verbose=verbose,
        wordwrap=not nowordwrap,
        think=True if hidethinking and think is None else think,
        hide_thinking=hidethinking,
    )
    text = " ".join(prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped}\n\n{text}".strip() if text else piped
    try:
        if text or not (sys.stdin.isatty() and sys.stdout.isatty()):  # a pipe either way: just the answer
            one_shot(session, text)
        else:
            interactive(session)
    except ResponseError as exc:
        if exc.status_code == 404:
            raise not_found_hint(client, model, exc) from None
        raise


@cli.command("list")
@friendly_errors
def list_models() -> None:
    """List the models in the store."""
    models = client_for().list()["models"]
    rows = [[m["name"], m["digest"][:12], human_size(m["size"]), human_ago(m["modified_at"])] for m in models]
    print_rows(["NAME", "ID", "SIZE", "MODIFIED"], rows)


@cli.command()
@friendly_errors
def ps() -> None:
    """List the models that are loaded now."""
    models = client_for().ps()["models"]
    rows = [
        [
            m["name"],
            m["digest"][:12],
            human_size(m["size"]),
            m.get("processor") or "100% CPU",
            str(m.get("context_length") or ""),
            human_until(m["expires_at"]),
        ]
        for m in models
    ]
    print_rows(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)


@cli.command()
@click.argument("model")
@friendly_errors
def stop(model: str) -> None:
    """Unload a running model."""
    from corral.models.names import ModelName

    client = client_for()
    running = client.ps()["models"]
    loaded = {m["name"] for m in running} | {m["model"] for m in running}
    if ModelName.parse(model).display not in loaded:
        raise CorralError(f"model '{model}' is not running")
    client.generate(model=model, prompt="", keep_alive=0)


@cli.command()
@click.argument("models", nargs=-1, required=True)
@friendly_errors
def rm(models: tuple[str, ...]) -> None:
    """Remove models from the store."""
    client = client_for()
    for model in models:
        client.delete(model)
        click.echo(f"deleted '{model}'")


@cli.command()
@click.argument("source")
@click.argument("destination")
@friendly_errors
def cp(source: str, destination: str) -> None:
    """Copy a model to a new name."""
    client_for().copy(source, destination)
    click.echo(f"copied '{source}' to '{destination}'")


@cli.command()
@click.option("--host", help="Address to bind (default: CORRAL_HOST or 127.0.0.1:11434).")
@click.option("--backend", help="Force a backend (cpu, cuda, rocm, metal, …).")
@click.option("--insecure-no-auth", is_flag=True, default=None, help="Serve a non-loopback address without API keys.")
@friendly_errors
def serve(host: str | None, backend: str | None, insecure_no_auth: bool | None) -> None:
    """Serve Ollama's and OpenAI's APIs over HTTP."""
    from corral.config import Settings

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if backend:
        overrides["backend"] = backend
    if insecure_no_auth:
        overrides["insecure_no_auth"] = True
    settings = Settings(**overrides)
    spare = None
    if settings.isolate_runners:  # the first load's runner starts now, beside the server's own imports
        from corral.runtime.isolation import SpareRunner

        spare = SpareRunner(settings.backend)
        spare.start()
    from corral.runtime.scheduler import Scheduler
    from corral.server.app import create_app
    from corral.server.service import check_exposure, run_server

    if settings.backend:
        from corral.plugins import Plugins

        Plugins().select(settings.backend)  # fail now, not at the first request
    if not settings.noprune:
        _prune(settings)
    check_exposure(settings)  # before the banner: an open non-loopback bind is refused
    click.echo(f"Corral listening on {settings.base_url} (models in {settings.models_dir})", err=True)
    app = create_app(settings, Scheduler(settings, spare=spare))
    run_server(app, settings, log_level="debug" if debug_enabled() else "warning")


def _prune(settings: Settings) -> None:
    """What stopped processes left in the store, and what nothing uses, goes before the server starts."""
    from corral.models.prune import prune_store
    from corral.models.store import Store

    try:
        report = prune_store(Store(settings.models_dir))
    except OSError as exc:  # a store we cannot tidy can still be served
        click.echo(f"could not prune the store {settings.models_dir}: {exc}", err=True)
        return
    click.echo(report.summary(settings.models_dir), err=True)
