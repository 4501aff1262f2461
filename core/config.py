"""Settings, declared once: each field is a CORRAL_* env var, a key in config.toml, and a docs row.

Precedence: environment > ``$CORRAL_CONFIG`` (default ``~/.corral/config.toml``) > defaults.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

DEFAULT_PORT = 11434


def _default_home() -> Path:
    return Path("~/.corral").expanduser()


def config_file() -> Path:
    return Path(os.environ.get("CORRAL_CONFIG") or _default_home() / "config.toml").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Corral's own files: logs, history, server state.")
    models: Path | None = Field(
        None, description="The model store (default: <home>/models). May point at ~/.ollama/models."
    )
    host: str = Field(f"127.0.0.1:{DEFAULT_PORT}", description="Address the server binds and the client calls.")
    backend: str | None = Field(
        None, description="Force a backend (cpu, cuda, rocm, metal, …) instead of the best available."
    )
    keep_alive: str = Field(
        "5m", description="How long an idle model stays loaded (0 unloads at once, negative keeps it)."
    )
    num_parallel: int = Field(4, ge=1, le=64, description="Sequences each loaded model serves at once (slots).")
    num_ctx: int = Field(4096, ge=16, description="Default context length of one sequence, in tokens.")
    max_loaded_models: int = Field(3, ge=1, description="Most models kept loaded at once.")
    max_queue: int = Field(512, ge=1, description="Requests that may wait for a slot before the server answers 503.")
    origins: list[str] = Field(
        default_factory=list, description="Extra browser origins allowed to call the API (localhost always is)."
    )
    isolate_runners: bool = Field(
        True, description="Run each loaded model in its own process, so a crash in native code takes only that model."
    )
    prefix_cache: bool = Field(
        True,
        description="Reuse a slot's KV cache for a prompt that starts the same way "
        "(chat turns, shared system prompts).",
    )
    metal_engine: str = Field(
        "mlx", description="On Apple Silicon: mlx (for llama-architecture models) or llama.cpp (its Metal build)."
    )
    flash_attention: bool = Field(True, description="Use flash attention where the engine supports it.")
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(
        "f16",
        description="llama.cpp's KV cache type, as Ollama's OLLAMA_KV_CACHE_TYPE: f16, q8_0 (about half the memory) "
        "or q4_0 "
        "(about a quarter). The quantised ones need flash attention; without it f16 is used.",
    )
    responses_kept: int = Field(
        1000,
        ge=0,
        description="Responses the OpenAI Responses API keeps in memory for `previous_response_id` and "
        "`GET /v1/responses/{id}` (the oldest go first; 0 keeps none).",
    )
    nohistory: bool = Field(False, description="Do not keep the REPL's history file.")
    noprune: bool = Field(
        False,
        description="Do not prune the store when the server starts "
        "(files of stopped processes, unreferenced blobs, pull parts older than a day).",
    )
    debug: bool = Field(False, description="Show tracebacks and debug logs.")
    # Running as a service (docs/deploy.md).
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys; when set, every route but /, /api/version and /health/* "
        "needs `Authorization: Bearer <key>`.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys, one a line (# comments), re-read when it changes; adds to CORRAL_API_KEYS.",
    )
    api_key: SecretStr = Field(
        SecretStr(""), description="The key the CLI and the Python client send (`Authorization: Bearer`)."
    )
    insecure_no_auth: bool = Field(
        False, description="Let `corral serve` bind a non-loopback address without API keys."
    )
    metrics: bool = Field(True, description="Serve Prometheus metrics at /metrics (behind the keys when keys are set).")
    metrics_vllm_names: bool = Field(
        False,
        description="Also export the queue, KV-cache, token and latency series under vLLM's names (vllm:...), "
        "for routers and dashboards made for vLLM.",
    )
    shutdown_grace: float = Field(
        30.0,
        ge=0,
        description="Seconds SIGTERM waits for in-flight requests to finish (new ones get 503) "
        "before unloading and exiting.",
    )
    preload: str = Field(
        "",
        description="Comma-separated models to load (pulled if missing) when the server starts; "
        "/health/ready waits for them.",
    )

    @field_validator("home", "models", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def models_dir(self) -> Path:
        return self.models or self.home / "models"

    @property
    def base_url(self) -> str:
        return host_to_url(self.host)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file()))


def bound_to_loopback(settings: Settings) -> bool:
    """Whether the server listens on this machine only (the CLI may start one; Host headers are checked)."""
    host = settings.base_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_to_url(host: str) -> str:
    """``CORRAL_HOST`` as Ollama reads OLLAMA_HOST: scheme and port optional."""
    host = host.strip().rstrip("/")
    scheme = "http"
    if "://" in host:
        scheme, host = host.split("://", 1)
    if not host:
        host = "127.0.0.1"
    if host.startswith(":"):
        host = "127.0.0.1" + host
    bare = host.rsplit("]", 1)[-1]
    if ":" not in bare:
        host = f"{host}:{DEFAULT_PORT}"
    return f"{scheme}://{host}"


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) for every setting — the docs table's one source."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = "~/.corral" if name == "home" else field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        rows.append((f"CORRAL_{name.upper()}", "" if default is None else str(default), field.description or ""))
    return rows


def settings_markdown() -> str:
    """docs/configuration.md, generated: ``python -m corral.config > docs/configuration.md``."""
    lines = [
        "# Configuration",
        "",
        "Generated from `corral/config.py` by `python -m corral.config`; a test keeps it in step.",
        "Each setting is an environment variable, or the same key in lower case without the",
        "`CORRAL_` prefix in `~/.corral/config.toml` (or the file `CORRAL_CONFIG` names).",
        "Environment variables win over the file.",
        "",
        "| Variable | Default | Meaning |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{var}` | `{default}` | {text} |" for var, default, text in settings_table()]
    lines += ["| `CORRAL_STRICT_PLUGINS` | `` | `1` makes a plugin that fails to load an error (CI sets it). |"]
    lines += ["| `CORRAL_CONFIG` | `~/.corral/config.toml` | The TOML file read for settings. |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_markdown(), end="")
