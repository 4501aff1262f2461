"""Settings: env vars over the TOML file over defaults, and the docs table generated from one source."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import Settings, host_to_url, settings_markdown


def test_env_beats_toml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('num_parallel = 2\nkeep_alive = "10m"\n')
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    monkeypatch.setenv("CORRAL_KEEP_ALIVE", "1h")
    settings = Settings()
    assert (settings.num_parallel, settings.keep_alive, settings.max_queue) == (2, "1h", 512)


def test_models_default_under_home(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).models_dir == tmp_path / "models"
    assert Settings(home=tmp_path, models=tmp_path / "elsewhere").models_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("https://example.com:443/", "https://example.com:443"),
        ("[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_host_is_read_as_ollama_reads_ollama_host(host: str, url: str) -> None:
    assert host_to_url(host) == url


def test_the_docs_table_is_generated_from_the_settings() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert docs.read_text() == settings_markdown(), "regenerate: python -m corral.config > docs/configuration.md"


def test_the_kv_cache_type_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().kv_cache_type == "f16"
    monkeypatch.setenv("CORRAL_KV_CACHE_TYPE", "q8_0")
    assert Settings().kv_cache_type == "q8_0"
    monkeypatch.setenv("CORRAL_KV_CACHE_TYPE", "q3_k")
    with pytest.raises(ValueError, match="kv_cache_type"):
        Settings()
