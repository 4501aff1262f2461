"""End to end: the official `ollama` package against a real `corral serve` with the bundled SmolLM2."""

from __future__ import annotations

import math

import httpx
import ollama
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def client(corral_server: str) -> ollama.Client:
    return ollama.Client(host=corral_server)


def test_generate_answers_sensibly(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in r.response
    assert r.done and r.done_reason in ("stop", "length")
    assert r.eval_count and r.eval_count <= 24
    assert r.prompt_eval_count and r.prompt_eval_count > 5
    assert r.total_duration and r.eval_duration and r.prompt_eval_duration
    assert r.total_duration >= r.eval_duration
    assert r.context and isinstance(r.context[0], int)


def test_generate_streams_tokens(client: ollama.Client) -> None:
    parts = list(client.generate(model=MODEL, prompt="Count from one to five.", options=GREEDY, stream=True))
    assert len(parts) > 3
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts).strip()
    assert parts[-1].eval_count == GREEDY["num_predict"] or parts[-1].done_reason == "stop"


def test_chat_streaming_and_not_agree(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat(model=MODEL, messages=messages, options=GREEDY)
    assert whole["message"]["role"] == "assistant"
    assert "Paris" in whole["message"]["content"]
    streamed = "".join(
        p.message.content or "" for p in client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True)
    )
    assert streamed == whole.message.content


def test_chat_follows_a_system_prompt(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello, who are you?"}]
    r = client.chat(model=MODEL, messages=messages, options=GREEDY)
    assert "pirate" in r.message.content.lower() or "aye" in r.message.content.lower()


def test_embed_is_normalised_and_truncates(client: ollama.Client) -> None:
    r = client.embed(model=MODEL, input=["The sky is blue.", "Grass is green."])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576
    assert math.isclose(math.fsum(x * x for x in r.embeddings[0]), 1.0, rel_tol=1e-6)
    short = client.embed(model=MODEL, input="The sky is blue.", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert math.isclose(math.fsum(x * x for x in short.embeddings[0]), 1.0, rel_tol=1e-6)
    legacy = client.embeddings(model=MODEL, prompt="The sky is blue.")
    assert len(legacy.embedding) == 576


def test_list_and_ps(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="hi", options={"num_predict": 1})
    names = [m.model for m in client.list().models]
    assert MODEL in names
    # The session's server is shared: a model another test used may still be loaded beside it.
    loaded = [m for m in client.ps().models if m.model == MODEL]
    assert len(loaded) == 1
    assert loaded[0].size > 50_000_000 and loaded[0].expires_at is not None


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model", prompt="hi")
    assert err.value.status_code == 404
    assert "model 'no-such-model' not found" in err.value.error


def test_bad_requests_are_400_and_the_server_keeps_serving(client: ollama.Client, corral_server: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=MODEL, prompt="hi", options={"num_predict": "lots"})
    assert err.value.status_code == 400 and "num_predict" in err.value.error
    bad = httpx.post(f"{corral_server}/api/chat", content=b"{not json")
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]
    wrong = httpx.post(f"{corral_server}/api/generate", json={"model": MODEL, "prompt": 5})
    assert wrong.status_code == 400 and "prompt" in wrong.json()["error"]
    negative = httpx.post(
        f"{corral_server}/api/generate", json={"model": MODEL, "prompt": "x", "options": {"num_predict": -5}}
    )
    assert negative.status_code == 400
    too_long = httpx.post(
        f"{corral_server}/api/generate",
        json={"model": MODEL, "prompt": "word " * 400, "options": {"num_ctx": 64}, "stream": False},
    )
    assert too_long.status_code == 400 and "context" in too_long.json()["error"]
    assert "Paris" in client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY).response


def test_a_client_that_disconnects_mid_stream_frees_its_slot(client: ollama.Client, corral_server: str) -> None:
    with httpx.stream(
        "POST",
        f"{corral_server}/api/generate",
        json={"model": MODEL, "prompt": "Tell a very long story.", "options": {"num_predict": 2000}},
    ) as r:
        next(r.iter_lines())
    r2 = client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in r2.response


def test_empty_prompt_loads_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL, prompt="")
    assert loaded.done and loaded.done_reason == "load"
    assert MODEL in [m.model for m in client.ps().models]
    client.generate(model=MODEL, prompt="", keep_alive=0)
    # The session's server is shared: another test's model may still be loaded; SmolLM2 must be gone.
    assert MODEL not in [m.model for m in client.ps().models]
