"""OpenAI's API over Corral's models: ``types`` (its wire types), ``translate`` (its requests as
Corral's and back) and ``routes`` (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models)."""

from corral.server.openai.routes import router

__all__ = ["router"]
