"""Typed models shared by the server, the client, the Modelfile and the scheduler."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.errors import BadRequest
from corral.hookspecs import Sampling

log = logging.getLogger("corral.options")


class SubscriptableModel(BaseModel):
    """A pydantic model that also reads like a dict (``r["message"]["content"]``), as ollama-python's do."""

    model_config = ConfigDict(populate_by_name=True)

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and getattr(self, key, None) is not None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in type(self).model_fields else default


# Counts are bounded to what the engines' C types hold, so a huge number is a 400, never an overflow.
_I32 = 2**31 - 1


class Options(SubscriptableModel):
    """Model parameters: Modelfile PARAMETERs and a request's ``options``. None means unset."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Load-time (runner) options
    num_ctx: int | None = Field(None, ge=1, le=_I32, description="Context length of one sequence, in tokens.")
    num_batch: int | None = Field(None, ge=1, le=65536, description="Prompt tokens evaluated per step.")
    num_gpu: int | None = Field(
        None, ge=-_I32, le=_I32, description="Layers to offload to the GPU (-1: as many as fit)."
    )
    main_gpu: int | None = Field(
        None, ge=0, le=1024, description="Run the model on this one GPU (llama.cpp; a GPU backend only)."
    )
    num_thread: int | None = Field(None, ge=0, le=1024, description="CPU threads (default: physical cores).")
    use_mmap: bool | None = Field(
        None, description="Memory-map the model file (true) or read it into memory (false); llama.cpp."
    )
    # Sampling and generation options
    num_keep: int | None = Field(
        None,
        ge=-1,
        le=_I32,
        description="Tokens a context shift keeps at the start, besides the system prompt (default 4; -1: the prompt).",
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="Random seed (-1: random).")
    num_predict: int | None = Field(
        None, ge=-2, le=_I32, description="Most tokens to generate (-1: until the context is full)."
    )
    top_k: int | None = Field(None, ge=0, le=_I32, description="Sample from the k most likely tokens.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling threshold.")
    min_p: float | None = Field(None, ge=0, le=1, description="Minimum probability relative to the best token.")
    typical_p: float | None = Field(None, ge=0, le=1, description="Locally typical sampling.")
    repeat_last_n: int | None = Field(
        None, ge=-1, le=_I32, description="Tokens looked back at for repetition penalties."
    )
    temperature: float | None = Field(None, ge=0, description="Randomness; 0 is greedy.")
    repeat_penalty: float | None = Field(None, ge=0, description="Penalty for repeated tokens.")
    presence_penalty: float | None = Field(None, description="Penalty for tokens already present.")
    frequency_penalty: float | None = Field(None, description="Penalty proportional to token frequency.")
    stop: list[str] | None = Field(None, description="Stop sequences (repeatable in a Modelfile).")

    @classmethod
    def parse(cls, data: dict[str, Any] | None, *, strict: bool = False) -> Options:
        """Validate options, turning pydantic's report into one clear line. A request's unknown or
        retired options (``mirostat``, ``tfs_z``, ``numa``, …) are dropped with one warning naming
        them, as Ollama does; ``strict`` (Modelfiles, ``/set parameter``) refuses them instead.
        A known option of the wrong type is a BadRequest either way."""
        data = dict(data or {})
        unknown = sorted(str(key) for key in data if key not in cls.model_fields)
        if unknown and not strict:
            log.warning("ignoring unknown options: %s", ", ".join(unknown))
            data = {k: v for k, v in data.items() if k in cls.model_fields}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                raise BadRequest(f"unknown option '{where}' (known: {', '.join(cls.model_fields)})") from None
            raise BadRequest(f"invalid option '{where}': {err['msg']}") from None

    def merged(self, *overrides: Options | None) -> Options:
        """These options with each later set's non-None values on top."""
        data = self.model_dump(exclude_none=True)
        for extra in overrides:
            if extra is not None:
                data.update(extra.model_dump(exclude_none=True))
        return Options.model_validate(data)

    def sampling(self) -> Sampling:
        defaults = Sampling()
        seed = self.seed if self.seed is not None and self.seed >= 0 else None
        return Sampling(
            temperature=_pick(self.temperature, defaults.temperature),
            top_k=_pick(self.top_k, defaults.top_k),
            top_p=_pick(self.top_p, defaults.top_p),
            min_p=_pick(self.min_p, defaults.min_p),
            typical_p=_pick(self.typical_p, defaults.typical_p),
            repeat_penalty=_pick(self.repeat_penalty, defaults.repeat_penalty),
            repeat_last_n=_pick(self.repeat_last_n, defaults.repeat_last_n),
            presence_penalty=_pick(self.presence_penalty, defaults.presence_penalty),
            frequency_penalty=_pick(self.frequency_penalty, defaults.frequency_penalty),
            seed=seed,
        )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


class Message(SubscriptableModel):
    role: str
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


# ---- Ollama wire types: requests ----------------------------------------------------------------
# Field names and meanings follow Ollama's API; ``backend`` is Corral's own (which hardware to use).

KeepAlive = float | str | None


class _Request(SubscriptableModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class GenerateRequest(_Request):
    model: str
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool | None = None
    format: str | dict[str, Any] | None = None
    images: list[str] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    shift: bool | None = None  # a full context drops its older half and goes on (default); false: it ends
    truncate: bool | None = None  # true: a prompt longer than the context is cut after num_keep; else refused
    think: bool | str | None = None
    logprobs: bool | None = None  # each token's log-probability in the answer
    top_logprobs: int | None = Field(None, ge=0, le=20)  # and this many likeliest alternatives
    backend: str | None = None
    debug_render_only: bool | None = Field(None, alias="_debug_render_only")  # Ollama's: the prompt, not an answer


class ChatRequest(_Request):
    model: str
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # Corral: OpenAI's auto / none / required / a function
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    shift: bool | None = None  # a full context drops its older half and goes on (default); false: it ends
    truncate: bool | None = None  # true: a prompt longer than the context is cut after num_keep; else refused
    think: bool | str | None = None
    logprobs: bool | None = None  # each token's log-probability in the answer
    top_logprobs: int | None = Field(None, ge=0, le=20)  # and this many likeliest alternatives
    backend: str | None = None
    debug_render_only: bool | None = Field(None, alias="_debug_render_only")  # None: not sent by the client


def logprobs_wanted(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """How many alternatives to report per token, or None when no logprobs were asked for."""
    return (top_logprobs or 0) if logprobs or top_logprobs else None


class EmbedRequest(_Request):
    model: str
    input: str | list[str] = ""
    truncate: bool | None = None
    dimensions: int | None = Field(None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    backend: str | None = None


class EmbeddingsRequest(_Request):
    model: str
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None
    backend: str | None = None


class CreateRequest(_Request):
    model: str
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None  # file name -> blob digest (uploaded with /api/blobs)
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str | None = None  # with format "onnx": the ONNX precision (int4, int8, fp32)
    format: str | None = None  # Corral: "onnx" converts GGUF weights into an onnxruntime-genai model
    modelfile: str | None = None  # the older API: a whole Modelfile in one string
    stream: bool = True


class CopyRequest(_Request):
    source: str
    destination: str


class DeleteRequest(_Request):
    model: str | None = None
    name: str | None = None  # older clients send "name"


class ShowRequest(_Request):
    model: str | None = None
    name: str | None = None
    system: str | None = None
    verbose: bool | None = None


class PullRequest(_Request):
    model: str | None = None
    name: str | None = None
    insecure: bool | None = None
    stream: bool = True


class PushRequest(PullRequest):
    pass


# ---- Ollama wire types: responses ---------------------------------------------------------------


class _Response(SubscriptableModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class DebugInfo(_Response):
    """Ollama's ``_debug_info``: what ``_debug_render_only`` asked for."""

    rendered_template: str = ""
    image_count: int = 0


class _Done(_Response):
    model: str = ""
    debug_info: DebugInfo | None = Field(None, alias="_debug_info")
    logprobs: list[dict[str, Any]] | None = None  # per token: token, logprob, bytes, top_logprobs
    created_at: str | None = None
    done: bool | None = None
    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_cached_count: int | None = None  # of prompt_eval_count, the tokens read from the prefix cache
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class GenerateResponse(_Done):
    response: str = ""
    thinking: str | None = None
    context: list[int] | None = None


class ChatResponse(_Done):
    message: Message = Field(default_factory=lambda: Message(role="assistant"))


class EmbedResponse(_Response):
    model: str = ""
    embeddings: list[list[float]] = Field(default_factory=list)
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsResponse(_Response):
    embedding: list[float] = Field(default_factory=list)


class ModelDetails(_Response):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListModel(_Response):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails = Field(default_factory=ModelDetails)


class ListResponse(_Response):
    models: list[ListModel] = Field(default_factory=list)


class ProcessModel(_Response):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails = Field(default_factory=ModelDetails)
    expires_at: str | None = None
    size_vram: int = 0
    context_length: int | None = None
    processor: str | None = None  # Corral: "100% CPU", "48%/52% CPU/GPU"


class ProcessResponse(_Response):
    models: list[ProcessModel] = Field(default_factory=list)


class ShowResponse(_Response):
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str | None = None
    license: str | None = None
    details: ModelDetails = Field(default_factory=ModelDetails)
    model_info: dict[str, Any] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    messages: list[Message] | None = None
    modified_at: str | None = None


class ProgressResponse(_Response):
    status: str = ""
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class StatusResponse(_Response):
    status: str = "success"
