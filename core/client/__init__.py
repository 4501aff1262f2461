"""Corral's Python client: ollama-python's Client and AsyncClient, over httpx and the shared wire types.

Code written for ollama-python works unchanged (same method names, arguments and return types):

    from corral.client import Client
    for part in Client().chat("smollm2", [{"role": "user", "content": "Hi"}], stream=True):
        print(part["message"]["content"], end="")

Requests are corral.types models posted as ``model_dump(exclude_none=True, by_alias=True)``; answers
are parsed into the same models the server sends, one NDJSON line at a time when streaming. Errors are
converted here only: a non-2xx answer or an ``{"error": ...}`` line becomes ``ResponseError``, an
unreachable server ``ConnectionError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.client.asynchronous import AsyncClient
from corral.client.base import ResponseError
from corral.client.sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "ResponseError",
    # Bound to a default Client made on first use, as ollama.chat & co. are:
    "chat",
    "copy",
    "create",
    "create_blob",
    "delete",
    "embed",
    "embeddings",
    "generate",
    "list",
    "ps",
    "pull",
    "push",
    "show",
    "version",
]


# ---- module-level functions, as ollama.chat & co. ---------------------------------------------------

_CONVENIENCE = frozenset(__all__) - {"AsyncClient", "Client", "ResponseError"}

if TYPE_CHECKING:  # what __getattr__ hands out, so that type checkers know the signatures
    _typed = Client()
    chat, generate, embed, embeddings = _typed.chat, _typed.generate, _typed.embed, _typed.embeddings
    show, create, create_blob, copy, delete = _typed.show, _typed.create, _typed.create_blob, _typed.copy, _typed.delete
    pull, push, ps, version = _typed.pull, _typed.push, _typed.ps, _typed.version
    # ``list`` stays out: declaring it would shadow the builtin for the checker in this whole module.

_default_client: Client | None = None


def __getattr__(name: str) -> Any:
    """``corral.client.chat(...)`` and friends: methods of one default Client, made on first use so that
    importing this module stays cheap and CORRAL_HOST is read when it is needed, not at import."""
    global _default_client
    if name in _CONVENIENCE:
        if _default_client is None:
            _default_client = Client()
        return getattr(_default_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
