"""OpenAI's Responses API, /v1/responses, through the official ``openai`` package against real HTTP servers:
the bundled SmolLM2 on a real `corral serve` (answers, items, streaming, forced calls, JSON schemas,
max_output_tokens, previous_response_id, errors), and the scripted fake backend for what SmolLM2
cannot show (a reasoning trace, an engine that fails mid-stream)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from corral.config import Settings
from corral.server.app import create_app
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import app_in_thread
from test_model_features_api import CALL, TEMPLATE, THINKER
from test_openai_api import crashing_stream

MODEL = "smollm2:135m"
CAPITAL = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="corral", max_retries=0, timeout=300)


def _without_ids(response: Any) -> dict[str, Any]:
    """A response as JSON, less what differs between two answers to the same request (ids, times)."""
    body = response.model_dump(mode="json", exclude_none=True)
    for key in ("id", "created_at", "completed_at"):
        body.pop(key, None)
    body["usage"].pop("input_tokens_details")  # the second asking finds the prompt in the prefix cache
    for item in body["output"]:
        for key in ("id", "call_id", "parsed_arguments"):  # the stream helper parses a call's arguments
            item.pop(key, None)
    return body  # type: ignore[no-any-return]


def _events(url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A raw stream's (event, data) pairs; each event's name is also its data's type."""
    response = httpx.post(f"{url}/v1/responses", json={**body, "stream": True}, timeout=300)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    pairs = []
    for block in response.text.strip().split("\n\n"):
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        pairs.append((event[len("event: ") :], json.loads(data[len("data: ") :])))
        assert pairs[-1][0] == pairs[-1][1]["type"]
    assert [data["sequence_number"] for _, data in pairs] == list(range(len(pairs)))
    return pairs


# ---- SmolLM2 on a real `corral serve` ----------------------------------------------------------


@pytest.mark.slow
def test_a_text_answer_in_openais_shape(corral_server: str) -> None:
    client = _client(corral_server)
    response = client.responses.create(
        model=MODEL, input=CAPITAL, instructions="Answer in a few words.", temperature=0, max_output_tokens=40,
        metadata={"run": "test"},
    )  # fmt: skip
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert response.status == "completed" and response.incomplete_details is None and response.error is None
    assert "Paris" in response.output_text
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    usage = response.usage
    assert usage is not None and usage.input_tokens > 10 and 0 < usage.output_tokens <= 40
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens >= 0
    assert (response.instructions, response.temperature, response.top_p) == ("Answer in a few words.", 0, 1.0)
    assert (response.max_output_tokens, response.metadata, response.store) == (40, {"run": "test"}, True)
    assert (response.tools, response.tool_choice, response.parallel_tool_calls) == ([], "auto", True)
    assert response.previous_response_id is None and response.text.format.type == "text"  # type: ignore[union-attr]
    # The same question as items (a typed message with input_text parts) gets the same greedy answer.
    items = client.responses.create(
        model=MODEL, temperature=0, max_output_tokens=40,
        input=[{"role": "developer", "content": "Answer in a few words."},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": CAPITAL}]}],
    )  # fmt: skip
    assert items.output_text == response.output_text
    assert items.usage is not None and items.usage.input_tokens == usage.input_tokens


@pytest.mark.slow
def test_a_stream_follows_openais_event_sequence_and_builds_the_answer(corral_server: str) -> None:
    client = _client(corral_server)
    whole = client.responses.create(model=MODEL, input=CAPITAL, temperature=0, max_output_tokens=30)
    with client.responses.stream(model=MODEL, input=CAPITAL, temperature=0, max_output_tokens=30) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds[4:-4]) > 1
    assert final.output_text == whole.output_text and _without_ids(final) == _without_ids(whole)
    # The raw events: every one named and numbered, the deltas adding up to the final text.
    pairs = _events(corral_server, {"model": MODEL, "input": CAPITAL, "temperature": 0, "max_output_tokens": 30})
    created, completed = pairs[0][1]["response"], pairs[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert completed["id"] == created["id"] and completed["status"] == "completed"
    deltas = "".join(data["delta"] for kind, data in pairs if kind == "response.output_text.delta")
    assert deltas == whole.output_text == completed["output"][0]["content"][0]["text"]
    item_id = completed["output"][0]["id"]
    assert all(data["item_id"] == item_id for kind, data in pairs if "item_id" in data)
    # create(stream=True) yields the same typed events
    events = list(client.responses.create(model=MODEL, input=CAPITAL, temperature=0, max_output_tokens=30, stream=True))
    assert [e.type for e in events] == kinds and events[-1].response.output_text == whole.output_text  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_forced_call_then_its_output_continues_the_conversation(corral_server: str) -> None:
    client = _client(corral_server)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    response = client.responses.create(
        model=MODEL,
        input=ask,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,  # sampled, a call's arguments may run past max_output_tokens
        max_output_tokens=80,  # type: ignore[arg-type, list-item]
    )
    assert response.status == "completed" and response.tool_choice == "required"
    assert response.tools[0].name == "get_weather"  # type: ignore[union-attr]
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].status == "completed"
    assert calls[0].call_id.startswith("call_") and calls[0].id and calls[0].id.startswith("fc_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])  # type: ignore[arg-type]
    named = client.responses.create(
        model=MODEL, input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},  # type: ignore[arg-type, list-item]
        max_output_tokens=80, stream=True, temperature=0,
    )  # fmt: skip
    kinds = [event.type for event in named]
    assert kinds.count("response.function_call_arguments.delta") == 1 and "response.output_text.delta" not in kinds
    # The call and its output go back as items; the model answers from them.
    turn = [*ask, calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 degrees"}]  # fmt: skip
    follow = client.responses.create(
        model=MODEL,
        input=turn,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=40,  # type: ignore[arg-type, list-item]
    )
    assert follow.output[0].type == "message" and follow.output_text
    asked = {"model": MODEL, "input": turn, "_debug_render_only": True}
    rendered = httpx.post(f"{corral_server}/v1/responses", json=asked, timeout=60).json()
    prompt = rendered["_debug_info"]["rendered_template"]
    assert prompt.index("What is the weather in Paris?") < prompt.index("Sunny, 24 degrees")


class Capital(BaseModel):
    country: Literal["France", "Italy", "Spain"]
    capital: Literal["Paris", "Rome", "Madrid"]
    in_europe: bool


@pytest.mark.slow
def test_text_format_json_schema_answers_json_that_matches_it(corral_server: str) -> None:
    client = _client(corral_server)
    parsed = client.responses.parse(
        model=MODEL, input=CAPITAL, text_format=Capital, temperature=0, max_output_tokens=60
    )
    assert parsed.status == "completed" and isinstance(parsed.output_parsed, Capital)
    assert parsed.text.format.type == "json_schema"  # type: ignore[union-attr]
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}  # fmt: skip
    raw = client.responses.create(
        model=MODEL, input="Is Paris in France? Answer in JSON.", max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )  # fmt: skip
    jsonschema.validate(json.loads(raw.output_text), schema)
    loose = client.responses.create(
        model=MODEL, input="Describe Paris in JSON.", max_output_tokens=60, text={"format": {"type": "json_object"}}
    )
    if loose.status == "completed":  # json_object constrains to JSON, but cannot end an object for the model
        assert isinstance(json.loads(loose.output_text), dict)
    else:
        assert loose.output_text.lstrip().startswith("{")


@pytest.mark.slow
def test_max_output_tokens_leaves_the_response_incomplete(corral_server: str) -> None:
    client = _client(corral_server)
    cut = client.responses.create(model=MODEL, input="Tell me a long story about a dragon.", max_output_tokens=5)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert cut.usage is not None and cut.usage.output_tokens == 5 and cut.output_text
    pairs = _events(corral_server, {"model": MODEL, "input": "Tell me a long story.", "max_output_tokens": 5})
    assert pairs[-1][0] == "response.incomplete"
    assert pairs[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.slow
def test_previous_response_id_continues_the_conversation(corral_server: str) -> None:
    client = _client(corral_server)
    first = client.responses.create(
        model=MODEL, input="My name is Ada Lovelace.", instructions="Be brief.", max_output_tokens=20, temperature=0
    )
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=20, temperature=0
    )
    assert second.previous_response_id == first.id and second.instructions is None
    assert first.usage is not None and second.usage is not None
    alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=1)
    assert alone.usage is not None
    # the second prompt holds the first exchange: its tokens and the first answer's, on top of the question's
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens
    rendered = httpx.post(f"{corral_server}/v1/responses", timeout=60, json={
        "model": MODEL, "input": "What is my name?", "previous_response_id": first.id, "_debug_render_only": True,
    }).json()["_debug_info"]["rendered_template"]  # fmt: skip
    said = first.output_text.strip()
    assert said and rendered.index("My name is Ada Lovelace.") < rendered.index(said) < rendered.index(
        "What is my name?"
    )
    assert "Be brief." not in rendered  # instructions are not carried over, as OpenAI's are not
    third = client.responses.create(model=MODEL, input="And my surname?", previous_response_id=second.id,
                                    max_output_tokens=1)  # fmt: skip
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens
    # GET and DELETE /v1/responses/{id}
    assert _without_ids(client.responses.retrieve(first.id)) == _without_ids(first)
    assert client.responses.retrieve(first.id).id == first.id
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=first.id)
    assert gone.value.body == {"message": f"Previous response with id '{first.id}' not found.",  # type: ignore[comparison-overlap]
                               "type": "invalid_request_error", "param": "previous_response_id",
                               "code": "previous_response_not_found"}  # fmt: skip
    unstored = client.responses.create(model=MODEL, input="Hi", store=False, max_output_tokens=1)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hi", previous_response_id=unstored.id)


@pytest.mark.slow
def test_errors_are_openais_4xx(corral_server: str) -> None:
    client = _client(corral_server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="Hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_nope")
    assert unknown.value.body["message"] == "Previous response with id 'resp_nope' not found."  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input=[{"type": "video", "url": "x"}])  # type: ignore[list-item]
    assert bad.value.body == {  # type: ignore[comparison-overlap]
        "message": "input[0]: unsupported item type 'video' (use message, function_call or function_call_output)",
        "type": "invalid_request_error", "param": "input[0]", "code": None,
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="needs at least one tool"):
        client.responses.create(model=MODEL, input="Hi", tool_choice="required")
    for body in (b"{not json", b'{"model": "smollm2:135m", "input": 5}', b'{"input": "no model"}',
                 b'{"model": "smollm2:135m", "input": "x", "max_output_tokens": 0}'):  # fmt: skip
        response = httpx.post(f"{corral_server}/v1/responses", content=body, timeout=60)
        assert response.status_code == 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# ---- the scripted fake: a reasoning trace, a failing engine ----------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeBackend, Any]]:
    tmp: Path = tmp_path_factory.mktemp("responses")
    settings = Settings(home=tmp, models=tmp / "models", isolate_runners=False)
    write_fake_model(settings.models_dir, "thinker:latest", template=THINKER)
    write_fake_model(settings.models_dir, "tools:latest", payload=b"other weights", template=TEMPLATE)
    backend = FakeBackend()
    scheduler = fake_scheduler(settings, backend)
    with app_in_thread(create_app(settings, scheduler)) as url:
        yield url, backend, scheduler


def _say(backend: FakeBackend, text: str) -> None:
    backend.script = text.encode()
    for runner in backend.runners:
        runner.script = backend.script


def test_a_reasoning_trace_is_a_reasoning_item_streamed_or_not(fake: tuple[str, FakeBackend, Any]) -> None:
    url, backend, _ = fake
    _say(backend, "Weighing it.</think>\n\nParis.")
    client = _client(url)
    response = client.responses.create(model="thinker", input=CAPITAL, reasoning={"effort": "high"})
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [(s.type, s.text) for s in reasoning.summary] == [("summary_text", "Weighing it.")]
    assert message.type == "message" and response.output_text == "Paris."
    assert response.reasoning is not None and response.reasoning.effort == "high"
    assert response.usage is not None and 0 < response.usage.output_tokens_details.reasoning_tokens
    assert response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens
    with client.responses.stream(model="thinker", input=CAPITAL, reasoning={"effort": "high"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert _without_ids(final) == _without_ids(response)
    assert kinds[2:5] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta"]  # fmt: skip
    assert kinds.index("response.reasoning_summary_text.done") < kinds.index("response.content_part.added")
    # without reasoning the reply is left as it was said
    plain = client.responses.create(model="thinker", input=CAPITAL)
    assert [item.type for item in plain.output] == ["message"]


def test_effort_is_ignored_by_a_model_that_cannot_think_and_a_scripted_call_is_an_item(
    fake: tuple[str, FakeBackend, Any],
) -> None:
    url, backend, _ = fake
    _say(backend, CALL)
    client = _client(url)
    tool = {**WEATHER, "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    response = client.responses.create(model="tools", input="Weather in Paris?", tools=[tool],  # type: ignore[list-item]
                                       reasoning={"effort": "high"})  # fmt: skip
    (call,) = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    with client.responses.stream(
        model="tools", input="Weather in Paris?", tools=[tool], reasoning={"effort": "high"}  # type: ignore[list-item]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[2:6] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done"]  # fmt: skip
    assert _without_ids(final) == _without_ids(response)


def test_an_engine_failing_mid_stream_is_an_error_event_then_response_failed(
    fake: tuple[str, FakeBackend, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, scheduler = fake
    monkeypatch.setattr(scheduler, "stream", crashing_stream)
    pairs = _events(url, {"model": "thinker", "input": "Hi"})
    kinds = [kind for kind, _ in pairs]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.output_text.delta" in kinds and kinds[-2:] == ["error", "response.failed"]
    assert pairs[-2][1]["message"] == "the engine died" and pairs[-2][1]["code"] == "server_error"
    failed = pairs[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "the engine died"}
    assert httpx.post(f"{url}/v1/responses", json={"model": "thinker", "input": "Hi"}).status_code == 500
