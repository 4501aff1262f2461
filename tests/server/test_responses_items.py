"""The Responses API's translation, without a model: input items as Corral's messages, tools, tool_choice
and text.format as /v1/chat/completions' values, a reply's pieces as output items and stream events,
and the bounded store behind previous_response_id."""

from __future__ import annotations

import pytest

from corral.errors import BadRequest
from corral.runtime.generation import Piece
from corral.runtime.worker import Event
from corral.server.http import InvalidParam
from corral.server.openai.response_store import ResponseStore, UnknownResponse
from corral.server.openai.responses import (
    OutputItems,
    chat_tool_choice,
    chat_tools,
    conversation_messages,
    input_items,
    output_format,
)
from corral.server.openai.types import error_of
from corral.types import Message

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_a_string_is_one_user_message_after_the_instructions() -> None:
    assert conversation_messages(input_items("hello"), "Be brief.") == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="hello"),
    ]


def test_message_items_parts_images_and_roles() -> None:
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is"}, {"type": "input_text", "text": "this?"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PIXEL}", "detail": "auto"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Un pixel.", "annotations": []}]},
    ]  # fmt: skip
    assert conversation_messages(items) == [
        Message(role="system", content="Answer in French."),
        Message(role="user", content="What is\nthis?", images=[PIXEL]),
        Message(role="assistant", content="Un pixel."),
    ]


def test_function_calls_and_their_outputs() -> None:
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "two calls"}]},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city": "Rome"}',
         "id": "fc_2", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_b", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_a", "output": [{"type": "input_text", "text": "sun"}]},
    ]  # fmt: skip
    messages = conversation_messages(items)
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]  # parallel calls are one turn
    assert messages[1].tool_calls == [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
    ]
    assert (messages[2].content, messages[2].tool_name) == ("rain", "get_weather")
    assert (messages[3].content, messages[3].tool_name) == ("sun", "get_weather")


@pytest.mark.parametrize(
    ("items", "message", "param"),
    [
        ([], "input is empty: send a string or at least one message item", "input"),
        (
            [{"role": "tool", "content": "x"}],
            "input[0]: unknown role 'tool' (use user, system, developer or assistant)",
            "input[0]",
        ),
        (
            [{"type": "item_reference", "id": "msg_1"}],
            "input[0]: unsupported item type 'item_reference' (use message, function_call or function_call_output)",
            "input[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
            "input[0].content[0]: unsupported content part type 'input_file' (use input_text or input_image)",
            "input[0].content",
        ),
        (
            [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}],
            "input[0].content[0]: images must be base64 data URLs (data:image/png;base64,...)",
            "input[0].content[0]",
        ),
        (
            [{"role": "user", "content": "hi"}, {"type": "function_call", "call_id": "c", "name": "f"}],
            "input[1]: 'arguments' must be a string",
            "input[1].arguments",
        ),
        (
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{not json"}],
            "input[0]: tool call arguments are not valid JSON",
            "input[0].tool_calls",
        ),
        ([{"role": "user", "content": 7}], "input[0]: content must be a string or a list of parts", "input[0].content"),
        ([{"role": ["user"], "content": "x"}],
         "input[0]: unknown role '['user']' (use user, system, developer or assistant)", "input[0]"),
        ([{"role": "user", "content": [{"type": {"text": 1}}]}],
         "input[0].content[0]: unsupported content part type '{'text': 1}' (use input_text or input_image)",
         "input[0].content"),
    ],
)
def test_malformed_items_are_400s_that_name_the_item(items: list[dict[str, object]], message: str, param: str) -> None:
    with pytest.raises(InvalidParam) as caught:
        conversation_messages(items, "instructions do not count as input")
    assert (str(caught.value), caught.value.param) == (message, param)
    assert error_of(caught.value)[0] == 400


def test_items_of_a_previous_response_come_first() -> None:
    earlier = [{"type": "message", "role": "user", "content": "My name is Ada."},
               {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello Ada.", "annotations": []}]}]  # fmt: skip
    messages = conversation_messages([*earlier, {"role": "user", "content": "My name?"}], earlier=2)
    assert [m.content for m in messages] == ["My name is Ada.", "Hello Ada.", "My name?"]
    with pytest.raises(InvalidParam, match=r"^input\[0\]\.content\[0\]: a text part needs a 'text' string$"):
        conversation_messages([*earlier, {"role": "user", "content": [{"type": "input_text"}]}], earlier=2)


def test_tools_tool_choice_and_text_format_become_chats() -> None:
    flat = {"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
    assert chat_tools([flat]) == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": flat["parameters"]}}]  # fmt: skip
    assert chat_tools([]) is None and chat_tools(None) is None
    with pytest.raises(InvalidParam, match="tools\\[0\\]: unsupported tool type 'web_search'"):
        chat_tools([{"type": "web_search"}])
    assert chat_tool_choice({"type": "function", "name": "get_weather"}) == {
        "type": "function", "function": {"name": "get_weather"}}  # fmt: skip
    assert [chat_tool_choice(c) for c in ("auto", "none", "required", None)] == ["auto", "none", "required", None]
    with pytest.raises(InvalidParam, match="invalid tool_choice"):
        chat_tool_choice({"type": "allowed_tools"})
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert output_format({"format": {"type": "json_schema", "name": "n", "schema": schema, "strict": True}}) == schema
    assert output_format({"format": {"type": "json_object"}}) == "json"
    assert output_format({"format": {"type": "text"}}) is None and output_format(None) is None
    for bad in ({"format": {"type": "json_schema", "name": "n"}}, {"format": {"type": "yaml"}}, {"format": "json"}):
        with pytest.raises(BadRequest):
            output_format(bad)


def _piece(thinking: str = "", content: str = "", calls: list[dict[str, object]] | None = None,
           done_reason: str | None = None) -> Piece:  # fmt: skip
    return Piece(thinking, content, calls or [], Event(done=done_reason is not None, done_reason=done_reason))


def test_output_items_and_the_events_that_build_them() -> None:
    output = OutputItems()
    events = []
    call = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    for piece in (
        _piece("Weighing"),
        _piece(" it."),
        _piece(content="Par"),
        _piece(content="is."),
        _piece(calls=[call]),
    ):
        events += output.feed(piece)
    events += output.finish(Event(done=True, done_reason="stop"))
    reasoning, message, function_call = output.items
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Weighing it."}]
    assert message["id"].startswith("msg_") and message["status"] == "completed" and message["role"] == "assistant"
    assert message["content"] == [{"type": "output_text", "text": "Paris.", "annotations": []}]
    assert function_call["call_id"].startswith("call_") and function_call["id"].startswith("fc_")
    assert (function_call["name"], function_call["arguments"], function_call["status"]) == (
        "get_weather", '{"city": "Paris"}', "completed")  # fmt: skip
    assert [kind for kind, _ in events] == [
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]  # fmt: skip
    done = [payload["item"] for kind, payload in events if kind == "response.output_item.done"]
    assert done == output.items  # what the stream says each item became is the final output
    added = [payload for kind, payload in events if kind == "response.output_item.added"]
    assert [a["output_index"] for a in added] == [0, 1, 2] and added[1]["item"]["content"] == []
    assert output.reasoning_tokens == 2


def test_a_reply_cut_at_max_output_tokens_leaves_its_message_incomplete() -> None:
    output = OutputItems()
    output.feed(_piece(content="Once upon"))
    events = output.finish(Event(done=True, done_reason="length"))
    assert output.items[0]["status"] == "incomplete" and events[-1][1]["item"]["status"] == "incomplete"
    assert OutputItems().finish(Event(done=True, done_reason="stop")) == []  # nothing said, nothing to close


def test_the_store_is_bounded_and_forgets_the_oldest() -> None:
    store = ResponseStore(2)
    for rid in ("resp_a", "resp_b", "resp_c"):
        store.put({"id": rid}, [{"role": "user", "content": rid}])
    assert len(store) == 2
    with pytest.raises(UnknownResponse) as caught:
        store.get("resp_a", "previous_response_id")
    status, body = error_of(caught.value)
    assert status == 404 and body == {"error": {
        "message": "Previous response with id 'resp_a' not found.", "type": "invalid_request_error",
        "param": "previous_response_id", "code": "previous_response_not_found"}}  # fmt: skip
    held = store.get("resp_b")
    held.conversation.append({"role": "user", "content": "changed by the caller"})
    assert store.get("resp_b").conversation == [{"role": "user", "content": "resp_b"}]  # a copy was handed out
    store.delete("resp_b")
    with pytest.raises(UnknownResponse, match="^Response with id 'resp_b' not found.$"):
        store.delete("resp_b")
    nothing = ResponseStore(0)
    nothing.put({"id": "resp_x"}, [])
    assert len(nothing) == 0
