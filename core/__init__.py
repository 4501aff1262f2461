"""Corral: run open language models locally, over Ollama's and OpenAI's APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.client import AsyncClient, Client, ResponseError
    from corral.hookspecs import hookimpl
    from corral.version import __version__

__all__ = ["AsyncClient", "Client", "ResponseError", "__version__", "hookimpl"]
_CLIENT_NAMES = {"AsyncClient", "Client", "ResponseError"}


def __getattr__(name: str) -> Any:
    # Each of these costs a cold start something (httpx, pluggy, the distribution's metadata): import it
    # only when asked, so `corral --help` and the subpackages stay quick.
    if name in _CLIENT_NAMES:
        from corral import client

        return getattr(client, name)
    if name == "hookimpl":
        from corral.hookspecs import hookimpl

        return hookimpl
    if name == "__version__":
        from corral.version import __version__

        return __version__
    raise AttributeError(f"module 'corral' has no attribute {name!r}")
