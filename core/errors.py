"""One error tree for Corral; each error knows its HTTP status.

    CorralError                     500  a real fault
    ├── BadRequest                  400  invalid input from the user or client
    │   ├── InvalidName             400  a model name that is malformed or escapes the store
    │   ├── ModelfileError          400  a Modelfile that cannot be parsed (carries its line)
    │   ├── PromptTooLong           400  a prompt that does not fit in the context
    │   └── InvalidModelFile        400  a GGUF that is corrupt, truncated or would crash the engine
    ├── ModelNotFound               404  no such model in the store
    ├── BackendUnavailable          400  a forced backend that is absent or cannot run here
    ├── ServerBusy                  503  the queue is full
    ├── InsufficientMemory          500  the model does not fit in the free memory it may use
    ├── StorageFull                 507  the store's disk is full (ENOSPC): nothing partial was kept
    └── RunnerCrashed               500  the engine died while serving a request

The server turns these into statuses in one place, the client turns statuses back into
``ResponseError``, and the CLI prints ``Error: <message>`` without a traceback.
"""

from __future__ import annotations


class CorralError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(CorralError):
    status_code = 400


class InvalidName(BadRequest):
    pass


class ModelfileError(BadRequest):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class InvalidModelFile(BadRequest):
    pass


class PromptTooLong(BadRequest):
    """OpenAI's clients read it as ``context_length_exceeded``."""


class ModelNotFound(CorralError):
    status_code = 404


class BackendUnavailable(CorralError):
    status_code = 400


class ServerBusy(CorralError):
    status_code = 503


class InsufficientMemory(CorralError):
    pass


class StorageFull(CorralError):
    status_code = 507  # HTTP's Insufficient Storage


class RunnerCrashed(CorralError):
    status_code = 500
