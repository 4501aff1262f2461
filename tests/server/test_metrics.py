"""/metrics with a fake backend on a real HTTP server: it parses, the gauges read the live load, the
token counters equal what the responses said, and vLLM's names appear when asked for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.config import Settings
from corral.server.app import create_app
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import app_in_thread


def scrape(url: str, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics by name, then by its sorted labels."""
    r = httpx.get(f"{url}/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        home=tmp_path,
        models=tmp_path / "models",
        isolate_runners=False,
        num_parallel=4,
        num_ctx=4096,
        metrics_vllm_names=True,
    )
    write_fake_model(settings.models_dir, "fake:latest")
    backend = FakeBackend(script=b"0123456789" * 300, step_delay=0.002)
    scheduler = fake_scheduler(settings, backend)
    with app_in_thread(create_app(settings, scheduler)) as url:
        yield url


def test_gauges_read_four_running_streams(served: str) -> None:
    first_chunk = threading.Barrier(5)
    stop = threading.Event()

    def stream() -> None:
        body = {"model": "fake", "prompt": "tell me a long story", "options": {"num_predict": 3000}}
        with httpx.stream("POST", f"{served}/api/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            first_chunk.wait(30)
            stop.wait(30)  # leaving closes the stream, which cancels the job

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    first_chunk.wait(30)
    during = scrape(served)
    stop.set()
    for t in threads:
        t.join(30)
    for prefix in ("corral", "vllm"):
        assert value(during, f"{prefix}:num_requests_running", model_name="fake:latest") == 4
        assert value(during, f"{prefix}:num_requests_waiting", model_name="fake:latest") == 0
        assert 0 < value(during, f"{prefix}:kv_cache_usage_perc", model_name="fake:latest") <= 1
    assert value(during, "vllm:gpu_cache_usage_perc", model_name="fake:latest") == value(
        during, "corral:kv_cache_usage_perc", model_name="fake:latest"
    )
    assert value(during, "corral:model_loaded", model_name="fake:latest", backend="fake", processor="100% CPU") == 1
    assert value(during, "corral:model_load_duration_seconds_count", model_name="fake:latest") == 1
    after = scrape(served)
    assert value(after, "corral:num_requests_running", model_name="fake:latest") == 0
    assert value(after, "corral:request_success_total", model_name="fake:latest", finished_reason="cancelled") == 4


def delta(before: dict, after: dict, name: str) -> float:  # type: ignore[type-arg]
    return value(after, name, model_name="fake:latest") - value(before, name, model_name="fake:latest")


def test_token_counters_equal_the_responses_counts(served: str) -> None:
    # Ollama's routes: prompt_eval_count is the whole prompt, cached tokens included, as the counter is.
    before = scrape(served)
    prompts, generated = 0, 0
    for i in range(3):
        r = httpx.post(
            f"{served}/api/generate",
            json={"model": "fake", "prompt": "x" * (i + 3), "stream": False, "options": {"num_predict": 7 + i}},
        )
        prompts += r.json()["prompt_eval_count"]
        generated += r.json()["eval_count"]
        with httpx.stream(
            "POST",
            f"{served}/api/chat",
            json={"model": "fake", "messages": [{"role": "user", "content": "y" * i}], "options": {"num_predict": 5}},
        ) as s:
            last = [json.loads(line) for line in s.iter_lines() if line][-1]
        prompts += last["prompt_eval_count"]
        generated += last["eval_count"]
    after = scrape(served)
    assert generated == (7 + 8 + 9) + 3 * 5
    for prefix in ("corral", "vllm"):
        assert delta(before, after, f"{prefix}:prompt_tokens_total") == prompts
        assert delta(before, after, f"{prefix}:generation_tokens_total") == generated
    # OpenAI's route: usage.prompt_tokens is the whole prompt, as the counter is.
    before, prompts, generated = after, 0, 0
    for i in range(3):
        body = {"model": "fake", "messages": [{"role": "user", "content": "z" * (i + 1)}], "max_tokens": 4 + i}
        usage = httpx.post(f"{served}/v1/chat/completions", json=body).json()["usage"]
        prompts += usage["prompt_tokens"]
        generated += usage["completion_tokens"]
    after = scrape(served)
    assert generated == 4 + 5 + 6
    for prefix in ("corral", "vllm"):
        assert delta(before, after, f"{prefix}:prompt_tokens_total") == prompts
        assert delta(before, after, f"{prefix}:generation_tokens_total") == generated
    assert delta(before, after, "corral:time_to_first_token_seconds_count") == 3
    assert delta(before, after, "vllm:e2e_request_latency_seconds_count") == 3
    assert delta(before, after, "corral:request_queue_time_seconds_count") == 3
    assert delta(before, after, "corral:inter_token_latency_seconds_count") == generated - 3
    assert value(after, "corral:http_requests_total", method="POST", route="/api/chat", status="200") == 3
    assert value(after, "corral:http_requests_total", method="POST", route="/v1/chat/completions", status="200") == 3


def test_prefix_cache_hits_count_the_reused_prompt(served: str) -> None:
    before = scrape(served)
    body = {
        "model": "fake",
        "prompt": "the same long system prompt, then a question",
        "raw": True,
        "stream": False,
        "options": {"num_predict": 2},
    }
    answers = [httpx.post(f"{served}/api/generate", json=body).json() for _ in range(2)]
    after = scrape(served)
    name = {"model_name": "fake:latest"}
    hits = value(after, "corral:prefix_cache_hits_total", **name) - value(
        before, "corral:prefix_cache_hits_total", **name
    )
    queries = value(after, "corral:prefix_cache_queries_total", **name) - value(
        before, "corral:prefix_cache_queries_total", **name
    )
    prompt_length = len(str(body["prompt"]))  # raw, and the fake tokenizer is byte-level
    assert queries == 2 * prompt_length
    assert [a["prompt_eval_count"] for a in answers] == [prompt_length, prompt_length]
    assert hits == sum(a["prompt_eval_cached_count"] for a in answers) and hits > 0


def test_vllm_names_are_off_by_default_and_metrics_can_be_turned_off(tmp_path: Path) -> None:
    import asyncio

    async def get(settings: Settings) -> httpx.Response:
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.get("/metrics")

    default = asyncio.run(get(Settings(home=tmp_path)))
    assert default.status_code == 200 and "corral:num_requests_running" in default.text and "vllm:" not in default.text
    assert asyncio.run(get(Settings(home=tmp_path, metrics=False))).status_code == 404
