"""OpenAI's API over Corral's models: ``types`` (its wire types), ``translate`` (its requests as
Corral's and back), ``routes`` (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models)
and ``responses`` (the Responses API, /v1/responses, with its ``response_store``)."""

from fastapi import APIRouter

from corral.server.openai import responses, routes

router = APIRouter()
router.include_router(routes.router)
router.include_router(responses.router)

__all__ = ["router"]
