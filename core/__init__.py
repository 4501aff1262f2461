"""Corral: run open language models locally, over Ollama's and OpenAI's APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.hookspecs import hookimpl
from corral.version import __version__

if TYPE_CHECKING:
    from corral.client import AsyncClient, Client, ResponseError

__all__ = ["AsyncClient", "Client", "ResponseError", "__version__", "hookimpl"]
_CLIENT_NAMES = {"AsyncClient", "Client", "ResponseError"}


def __getattr__(name: str) -> Any:
    # The client pulls in httpx: import it only when asked, so plugins and `corral --help` stay quick.
    if name in _CLIENT_NAMES:
        from corral import client

        return getattr(client, name)
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
