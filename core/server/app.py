"""The HTTP server's factory: one app per ``create_app(settings, scheduler)``, its routers included.

Each API is a router in its own module and answers its own errors: Ollama's /api/* in ``ollama``
and ``model_routes``, OpenAI's /v1/* in ``openai``. Routes only translate wire formats; a request's
life on a model is ``runtime.generation``'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from corral import __version__
from corral.config import Settings
from corral.runtime.scheduler import Scheduler
from corral.server import anthropic, model_routes, ollama, openai, webui
from corral.server.http import install_openapi
from corral.server.openai.response_store import ResponseStore
from corral.server.security import install_security
from corral.server.service import install_service


def create_app(settings: Settings | None = None, scheduler: Scheduler | None = None) -> FastAPI:
    settings = settings or Settings()
    scheduler = scheduler or Scheduler(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await scheduler.close()

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.state.responses = ResponseStore(settings.responses_kept)  # for the Responses API's previous_response_id
    install_security(app, settings)
    install_service(app, settings, scheduler)  # probes, /metrics, draining: corral.server.service
    app.include_router(ollama.router)
    app.include_router(model_routes.router)
    app.include_router(openai.router)
    app.include_router(anthropic.router)
    app.include_router(webui.router)  # `/` and the chat page at /ui
    install_openapi(app)
    return app
