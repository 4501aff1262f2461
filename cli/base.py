"""What every ``corral`` command shares: the click group, one-line errors, and a client for the server."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from corral.errors import CorralError

if TYPE_CHECKING:  # pydantic is most of a cold start: `corral --help` must not import it
    from corral.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("CORRAL_DEBUG", "") not in ("", "0", "false")


def _is_server_refusal(exc: Exception) -> bool:
    """A client ResponseError. Only a loaded client can raise one, so it is looked up, not imported:
    importing the client to name it cost `corral serve` about a third of its start (httpx, its types)."""
    client = sys.modules.get("corral.client.base")
    return client is not None and isinstance(exc, client.ResponseError)


def friendly_errors(fn: F) -> F:
    """Every error becomes one line ``Error: ...`` and exit 1; a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader left (`corral run ... | head`): quiet, as a SIGPIPE'd tool is
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:
            if debug_enabled():
                traceback.print_exc()
            if isinstance(exc, (CorralError, ConnectionError)) or _is_server_refusal(exc):
                click.echo(f"Error: {exc}", err=True)
            else:  # a bug: still one line, with a way to see more
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
    from corral.cli.autostart import ensure_server
    from corral.config import Settings

    settings = settings or Settings()
    url = ensure_server(settings)
    from corral.client import Client  # imported while an auto-started server starts

    return Client(host=url)
