"""The ``corral`` command line: a client of ``corral serve`` (started on demand), plus ``serve`` itself."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from corral.config import Settings
from corral.errors import CorralError

F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("CORRAL_DEBUG", "") not in ("", "0", "false")


def friendly_errors(fn: F) -> F:
    """Every error becomes one line ``Error: ...`` and exit 1; a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from corral.client import ResponseError

        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader left (`corral run ... | head`): quiet, as a SIGPIPE'd tool is
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)
        except (CorralError, ResponseError, ConnectionError) as exc:
            if _debug():
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, with a way to see more
            if _debug():
                traceback.print_exc()
            click.echo(f"Error: {type(exc).__name__}: {exc} (run with --debug for details)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="corral", prog_name="corral")
def cli(debug: bool) -> None:
    """Corral runs open language models on your own machine."""
    if debug:
        os.environ["CORRAL_DEBUG"] = "1"


def client_for(settings: Settings | None = None) -> Any:
    """A Client for the configured host, starting a local server first if none answers."""
    from corral.client import Client

    from .autostart import ensure_server

    settings = settings or Settings()
    return Client(host=ensure_server(settings))


@cli.command()
@click.option("--host", help="Address to bind (default: CORRAL_HOST or 127.0.0.1:11434).")
@click.option("--backend", help="Force a backend (cpu, cuda, rocm, metal, …).")
@friendly_errors
def serve(host: str | None, backend: str | None) -> None:
    """Serve Ollama's and OpenAI's APIs over HTTP."""
    import uvicorn

    from corral.server.app import create_app

    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if backend:
        overrides["backend"] = backend
    settings = Settings(**overrides)
    if settings.backend:
        from corral.plugins import Plugins

        Plugins().select(settings.backend)  # fail now, not at the first request
    if not settings.noprune:
        _prune(settings)
    address = settings.base_url.split("://", 1)[1]
    bind, port = address.rsplit(":", 1)
    click.echo(f"Corral listening on {settings.base_url} (models in {settings.models_dir})", err=True)
    uvicorn.run(create_app(settings), host=bind.strip("[]"), port=int(port), log_level="debug" if _debug() else "warning")


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


# The model-management and REPL commands live in their own modules to keep this one small.
from . import commands as _commands  # noqa: E402  (registers commands on `cli`)
from . import model_commands as _model_commands  # noqa: E402
from . import verify_command as _verify_command  # noqa: E402

del _commands, _model_commands, _verify_command


def main() -> None:
    cli(prog_name="corral")


if __name__ == "__main__":
    # Run the imported module's `cli`, which the command modules registered on, not this __main__ copy.
    from corral.cli.main import main as _main

    _main()
