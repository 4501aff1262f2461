"""What templates make possible (tools, thinking, fill-in-the-middle) over the APIs, with the official
``ollama`` and ``openai`` clients against a real HTTP server. The model is the fake backend saying a
scripted reply, so what is tested is the server's part: the tools reach the template, a call in the
reply comes back as ``tool_calls`` (not as text) and a reasoning trace as ``thinking``, streamed or
not; a reply that is neither comes back as it was said; a suffix is rendered with the model's FIM
template, and refused where it has none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from corral.config import Settings
from corral.server.app import create_app
from fakes import FakeBackend, fake_scheduler, write_fake_model
from serverproc import app_in_thread

# A Modelfile TEMPLATE in the shape of Ollama's qwen2.5 one: tools listed in the system turn, calls in <tool_call> tags.
TEMPLATE = """{{- if .Tools }}<|im_start|>system
Tools: {{ range .Tools }}{{ .Function.Name }} {{ end }}
Reply with <tool_call>{"name": <name>, "arguments": <args>}</tool_call>.<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Content }}{{ .Content }}{{ else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>{{ end }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
# A reasoning model's template: it opens the trace itself when asked to think.
THINKER = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ else }}<think></think>{{ end }}"""
# One that leaves the opening tag to the model.
SELF_OPENING = THINKER.replace(
    "{{ if .Think }}<think>\n{{ else }}<think></think>{{ end }}", "{{ if not .Think }}<think></think>{{ end }}"
)
# Code Llama's fill-in-the-middle template, as Ollama ships it.
CODER = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
TWO_CALLS = CALL + '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n</tool_call>'
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
     "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]  # fmt: skip
ASK = [{"role": "user", "content": "Weather in Paris?"}]


class Served:
    def __init__(self, url: str, backend: FakeBackend, models: Path) -> None:
        self.url, self.backend, self.models = url, backend, models
        self.ollama = ollama.Client(host=url)
        self.openai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

    def say(self, text: str) -> None:
        self.backend.script = text.encode()
        for runner in self.backend.runners:
            runner.script = self.backend.script


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("tools")
    settings = Settings(home=tmp, models=tmp / "models", isolate_runners=False)
    write_fake_model(settings.models_dir, "fake:latest", template=TEMPLATE)
    write_fake_model(settings.models_dir, "thinker:latest", payload=b"other weights", template=THINKER)
    write_fake_model(settings.models_dir, "fake-thinks:latest", payload=b"third weights", template=SELF_OPENING)
    write_fake_model(settings.models_dir, "coder:latest", payload=b"coder weights", template=CODER)
    backend = FakeBackend()
    with app_in_thread(create_app(settings, fake_scheduler(settings, backend))) as url:
        yield Served(url, backend, settings.models_dir)


def test_ollama_chat_returns_the_call(served: Served) -> None:
    served.say(CALL)
    resp = served.ollama.chat(model="fake", messages=ASK, tools=TOOLS)
    assert resp.message.content == ""
    [call] = resp.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris", "unit": "celsius"}
    assert resp.done and resp.done_reason == "stop"


def test_ollama_chat_streams_the_calls(served: Served) -> None:
    served.say("Checking. " + TWO_CALLS)
    parts = list(served.ollama.chat(model="fake", messages=ASK, tools=TOOLS, stream=True))
    assert "".join(p.message.content for p in parts) == "Checking. "
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"zone": "Europe/Paris"}),
    ]
    assert parts[-1].done
    # text before the tag streams as it comes; nothing is sent while a call is being written
    assert parts[0].message.content.startswith("C") and not parts[0].message.tool_calls


def test_a_call_and_its_result_can_be_sent_back(served: Served, tmp_path: Path) -> None:
    served.say("It is 18 degrees.")
    history = [*ASK,
               {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "18 C", "tool_name": "get_weather"}]  # fmt: skip
    resp = served.ollama.chat(model="fake", messages=history, tools=TOOLS)
    assert resp.message.content == "It is 18 degrees." and not resp.message.tool_calls
    # what the model was shown: the tools, its own call, the result
    from corral.chat import prompting
    from corral.hookspecs import ModelInfo
    from corral.models.recipes import resolve
    from corral.models.store import Store
    from corral.types import Message

    recipe = resolve(Store(served.models), "fake")
    info = ModelInfo("fake", 4096, 4096, 257, 4, 1, None, False, "", "", None, 0, 0)
    prompt = prompting.render(recipe, info, [Message(**m) for m in history], tools=TOOLS)
    assert "Tools: get_weather get_time \n" in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>' in prompt
    assert "<|im_start|>tool\n18 C<|im_end|>" in prompt


def test_text_that_is_not_a_call_is_content(served: Served) -> None:
    for said in ("I would use <tool_call> here, but no.", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'):
        served.say(said)
        resp = served.ollama.chat(model="fake", messages=ASK, tools=TOOLS)
        assert resp.message.content == said and not resp.message.tool_calls
    served.say(CALL)  # without tools offered nothing is parsed
    assert served.ollama.chat(model="fake", messages=ASK).message.content == CALL


def test_openai_returns_the_call(served: Served) -> None:
    served.say(CALL)
    resp = served.openai.chat.completions.create(model="fake", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Paris",
        "unit": "celsius",
    }


def test_openai_streams_the_calls(served: Served) -> None:
    served.say(TWO_CALLS)
    chunks = list(served.openai.chat.completions.create(model="fake", messages=ASK, tools=TOOLS, stream=True))  # type: ignore[arg-type]
    deltas: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for tc in chunk.choices[0].delta.tool_calls or []:
            entry = deltas.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
    assert [(d["name"], json.loads(d["arguments"])) for _, d in sorted(deltas.items())] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"zone": "Europe/Paris"}),
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""


def test_openai_tool_choice_none_hides_the_tools(served: Served) -> None:
    served.say(CALL)
    resp = served.openai.chat.completions.create(model="fake", messages=ASK, tools=TOOLS, tool_choice="none")  # type: ignore[arg-type]
    assert resp.choices[0].message.content == CALL and resp.choices[0].finish_reason == "stop"


# ---- thinking -----------------------------------------------------------------------------------------


def test_chat_splits_the_trace_from_the_answer(served: Served) -> None:
    served.say("The user asks about Paris.\nIt is in France.\n</think>\n\nParis is in France.")
    resp = served.ollama.chat(model="thinker", messages=ASK, think=True)
    assert resp.message.thinking == "The user asks about Paris.\nIt is in France.\n"
    assert resp.message.content == "Paris is in France."
    parts = list(served.ollama.chat(model="thinker", messages=ASK, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == resp.message.thinking
    assert "".join(p.message.content for p in parts) == resp.message.content
    first_content = next(i for i, p in enumerate(parts) if p.message.content)
    assert all(not p.message.content for p in parts[:first_content]) and parts[0].message.thinking  # trace first


def test_a_reply_that_opens_its_own_trace(served: Served) -> None:
    served.say("<think>\nshort thought</think>Answer.")
    resp = served.ollama.generate(model="fake-thinks", prompt="hi", think=True)
    assert (resp.thinking, resp.response) == ("short thought", "Answer.")


def test_without_think_the_reply_is_left_alone(served: Served) -> None:
    said = "<think>hmm</think>Answer."
    served.say(said)
    resp = served.ollama.chat(model="thinker", messages=ASK)
    assert resp.message.content == said and not resp.message.thinking


def test_a_model_that_cannot_think_says_so(served: Served) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        served.ollama.chat(model="fake", messages=ASK, think=True)
    assert caught.value.status_code == 400 and caught.value.error == '"fake:latest" does not support thinking'


def test_openai_reasoning_effort_thinks_and_none_does_not(served: Served) -> None:
    served.say("Weighing it.</think>\n\nParis.")
    resp = served.openai.chat.completions.create(model="thinker", messages=ASK, reasoning_effort="high")  # type: ignore[arg-type]
    message = resp.choices[0].message
    assert message.content == "Paris." and message.model_extra == {"reasoning": "Weighing it."}
    stream = served.openai.chat.completions.create(
        model="thinker", messages=ASK, reasoning_effort="low", stream=True  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "".join((c.choices[0].delta.model_extra or {}).get("reasoning", "") for c in chunks) == "Weighing it."
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Paris."
    served.say("<think></think>Paris.")  # thinking off: nothing is taken out of the reply
    plain = served.openai.chat.completions.create(model="thinker", messages=ASK, reasoning_effort="none")  # type: ignore[arg-type]
    assert plain.choices[0].message.content == "<think></think>Paris." and not plain.choices[0].message.model_extra
    with pytest.raises(openai.BadRequestError, match="does not support thinking"):
        served.openai.chat.completions.create(model="fake", messages=ASK, reasoning_effort="high")  # type: ignore[arg-type]


# ---- fill in the middle -----------------------------------------------------------------------------------


def test_a_suffix_goes_through_the_fim_template(served: Served) -> None:
    served.say("x * 2")
    resp = served.ollama.generate(model="coder", prompt="def double(x):\n    return ", suffix="\n\nprint(double(2))")
    assert resp.response == "x * 2"
    runner = next(r for r in served.backend.runners if r.spec.model_path.read_bytes() == b"coder weights")
    fed = runner.history[0][0][1]  # the fake's tokens are bytes: the first step is the whole prompt
    assert fed == len(b"<PRE> def double(x):\n    return  <SUF>\n\nprint(double(2)) <MID>")
    done = served.openai.completions.create(model="coder", prompt="def double(x):\n    return ", suffix="\n")
    assert done.choices[0].text == "x * 2"


def test_a_model_without_fim_refuses_a_suffix(served: Served) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        served.ollama.generate(model="fake", prompt="def f():", suffix="pass")
    assert caught.value.status_code == 400 and caught.value.error == '"fake:latest" does not support insert'
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        served.openai.completions.create(model="fake", prompt="def f():", suffix="pass")
