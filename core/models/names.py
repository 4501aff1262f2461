"""Model names: ``[host/][namespace/]model[:tag]``, as Ollama spells them, that can never escape the store."""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Each part starts with a letter or digit; no part can be "." or "..", hold a slash, or be absolute.
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}(:[0-9]{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}$")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        raw = text.strip()
        if not raw:
            raise InvalidName("model name is empty")
        if "://" in raw:  # ollama accepts a scheme in front of the host; it plays no part in the name
            raw = raw.split("://", 1)[1]
        if raw.startswith("/") or "\\" in raw or ".." in raw:
            raise InvalidName(f"invalid model name '{text}': use [host/][namespace/]model[:tag]")
        base, tag = raw, DEFAULT_TAG
        last = raw.rsplit("/", 1)[-1]
        if ":" in last:
            base, tag = raw.rsplit(":", 1)
        parts = base.split("/")
        if len(parts) == 1:
            host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            host, (namespace, model) = DEFAULT_HOST, parts
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            raise InvalidName(f"invalid model name '{text}': too many '/' (use [host/][namespace/]model[:tag])")
        ok = _HOST.match(host) and _PART.match(namespace) and _PART.match(model) and _TAG.match(tag)
        if not ok:
            raise InvalidName(
                f"invalid model name '{text}': parts may hold letters, digits, '_', '-' and '.', "
                "and must start with a letter or digit"
            )
        return cls(host, namespace, model, tag)

    def key(self) -> tuple[str, str, str, str]:
        """Names match case-insensitively, as in Ollama."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def path_parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def display(self) -> str:
        """The short form Ollama prints: defaults left out, tag always shown."""
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def __str__(self) -> str:
        return self.display

