"""OpenAI's wire types: the request bodies Corral reads on /v1/*, and OpenAI's error object."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.errors import CorralError, ModelNotFound, PromptTooLong


def error_object(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "invalid_request_error", 503: "server_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_of(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body for an exception (a non-Corral one is a 500 fault)."""
    if isinstance(exc, CorralError):
        status = exc.status_code
        param = getattr(exc, "param", None)
        code = getattr(exc, "code", None)
        if isinstance(exc, ModelNotFound):
            param, code = "model", "model_not_found"
        elif isinstance(exc, PromptTooLong):
            code = "context_length_exceeded"  # what OpenAI's clients (and the apps on them) test for
        return status, error_object(status, str(exc), param, code)
    return 500, error_object(500, f"internal error: {type(exc).__name__}: {exc}")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields Corral has no use for


class StreamOptions(_Body):
    include_usage: bool | None = False


class ResponseFormat(_Body):
    type: str
    json_schema: dict[str, Any] | None = None


class ChatMessageIn(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class SamplingRequest(_Body):
    """What every generating route reads into Corral's options (``translate.request_options``)."""

    model: str
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Corral's (and Ollama's) own fields
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    backend: str | None = None
    shift: bool | None = None  # Ollama's context shift, on unless false


class GeneratingRequest(SamplingRequest):
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = None


class ChatCompletionRequest(GeneratingRequest):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # "none" hides the tools; "required" or a function forces a call
    # Ollama's mapping to ``think``: "high", "medium", "low" think; "none" does not; absent leaves it to the model
    reasoning_effort: str | None = None
    reasoning: dict[str, Any] | None = None  # {"effort": ...}, the Responses API's spelling
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(GeneratingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool | None = False
    best_of: int | None = None
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's: this many alternatives per token


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = Field(None, ge=1)
    encoding_format: str | None = "float"
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    backend: str | None = None


class ResponsesRequest(SamplingRequest):
    """``POST /v1/responses``: OpenAI's Responses API (items in, items out)."""

    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None  # the flat shape: {"type": "function", "name", "parameters", ...}
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None  # {"format": {"type": "text" | "json_object" | "json_schema", ...}}
    reasoning: dict[str, Any] | None = None  # {"effort": ...}: think, on models that can
    max_output_tokens: int | None = Field(None, ge=1)
    stream: bool | None = False
    store: bool | None = True
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    # Ollama's: the prompt the model would be given, not an answer
    debug_render_only: bool | None = Field(None, alias="_debug_render_only")
