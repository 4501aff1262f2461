"""One request's life (runtime/generation.py) against the fake backend: the reply split as asked,
and the model released exactly once however the request ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.config import Settings
from corral.errors import BadRequest, ModelNotFound
from corral.models.recipes import resolve
from corral.models.store import Store
from corral.runtime import generation
from corral.runtime.generation import ChatPrompt, EmptyPrompt, GeneratePrompt, InsertPrompt, RawPrompt, Target
from corral.runtime.scheduler import Scheduler
from corral.types import Message
from fakes import FakeBackend, fake_scheduler, write_fake_model

# A reasoning model's Go template: it opens the trace itself when asked to think.
THINKER = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}"""
CODER = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"


def make(tmp_path: Path, backend: FakeBackend) -> Scheduler:
    settings = Settings(home=tmp_path, models=tmp_path / "models", isolate_runners=False)
    write_fake_model(settings.models_dir, "plain:latest")
    write_fake_model(settings.models_dir, "thinker:latest", payload=b"thinker weights", template=THINKER)
    write_fake_model(settings.models_dir, "coder:latest", payload=b"coder weights", template=CODER)
    return fake_scheduler(settings, backend)


def held(scheduler: Scheduler) -> int:
    """Requests holding a model now, over every loaded model."""
    return sum(loaded.inflight for loaded in scheduler.ps())


def run(tmp_path: Path, backend: FakeBackend, scenario):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        scheduler = make(tmp_path, backend)
        try:
            return await scenario(scheduler)
        finally:
            await scheduler.close()

    return asyncio.run(main())


def test_a_chat_splits_the_trace_from_the_answer_and_releases_the_model(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"It is in France.</think>\n\nParis.")

    async def scenario(scheduler: Scheduler) -> tuple[str, str, bool, int, int]:
        prompt = ChatPrompt([Message(role="user", content="Where is Paris?")], think=True)
        gen = await generation.generate(scheduler, Target("thinker"), prompt)
        assert held(scheduler) == 1
        pieces = await gen.collect()
        thought, content = "".join(p.thinking for p in pieces), "".join(p.content for p in pieces)
        return thought, content, pieces[-1].done, pieces[-1].event.stats.eval_count, held(scheduler)  # type: ignore[union-attr]

    thought, content, done, eval_count, holding = run(tmp_path, backend, scenario)
    assert (thought, content) == ("It is in France.", "Paris.")
    assert done and eval_count == len(backend.script)  # one token per byte of the script
    assert holding == 0


def test_generate_renders_the_model_template_with_the_request_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | list[int]] = []
    render = generation.render

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        text, reply = render(*args, **kwargs)
        seen.append(text)
        return text, reply

    monkeypatch.setattr(generation, "render", spy)

    async def scenario(scheduler: Scheduler) -> str:
        gen = await generation.generate(scheduler, Target("thinker"), GeneratePrompt("hi", system="Be brief."))
        return "".join(p.content for p in await gen.collect())

    assert run(tmp_path, FakeBackend(script=b"ok"), scenario) == "ok"
    assert seen == ["<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]


@pytest.mark.parametrize(
    ("model", "prompt", "error", "message"),
    [
        ("plain", InsertPrompt("def f(", "return 1"), BadRequest, '"plain:latest" does not support insert'),
        ("plain", RawPrompt("", required=True), EmptyPrompt, "prompt is empty"),
        (
            "plain",
            ChatPrompt([Message(role="user", content="hi")], think=True),
            BadRequest,
            "does not support thinking",
        ),
    ],
)
def test_a_request_refused_after_the_load_releases_the_model(
    tmp_path: Path, model: str, prompt: generation.Prompt, error: type[Exception], message: str
) -> None:
    async def scenario(scheduler: Scheduler) -> tuple[Exception, int, int]:
        with pytest.raises(error, match=message) as caught:
            await generation.generate(scheduler, Target(model), prompt)
        return caught.value, len(scheduler.ps()), held(scheduler)

    exc, loaded, holding = run(tmp_path, FakeBackend(), scenario)
    assert loaded == 1 and holding == 0  # it was loaded, and is held by nobody
    assert getattr(exc, "param", None) == ("prompt" if isinstance(exc, EmptyPrompt) else None)


def test_an_unknown_model_is_not_found_and_nothing_is_held(tmp_path: Path) -> None:
    async def scenario(scheduler: Scheduler) -> int:
        with pytest.raises(ModelNotFound):
            await generation.generate(scheduler, Target("nowhere"), RawPrompt("hi"))
        return len(scheduler.ps())

    assert run(tmp_path, FakeBackend(), scenario) == 0


def test_fill_in_the_middle_goes_through_the_template(tmp_path: Path) -> None:
    async def scenario(scheduler: Scheduler) -> str:
        gen = await generation.generate(scheduler, Target("coder"), InsertPrompt("def f(", "return 1"))
        return "".join(p.content for p in await gen.collect())

    assert run(tmp_path, FakeBackend(script=b"x):\n    "), scenario) == "x):\n    "


def test_closing_an_unfinished_generation_cancels_its_job_and_releases_once(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"z" * 100_000, step_delay=0.001)

    async def scenario(scheduler: Scheduler) -> tuple[str, int, int, int]:
        gen = await generation.generate(scheduler, Target("plain"), RawPrompt("go"))
        pieces = gen.pieces()
        first = [await anext(pieces) for _ in range(3)]
        await pieces.aclose()
        await gen.close()
        await gen.close()  # a second close (a stream and a disconnect both closing) releases nothing more
        return "".join(p.content for p in first), held(scheduler), scheduler._queued, scheduler.ps()[0].inflight

    text, holding, queued, inflight = run(tmp_path, backend, scenario)
    assert text == "zzz" and holding == 0 and queued == 0 and inflight == 0


def test_a_cancelled_non_streamed_collect_still_releases(tmp_path: Path) -> None:
    backend = FakeBackend(script=b"z" * 100_000, step_delay=0.001)

    async def scenario(scheduler: Scheduler) -> tuple[int, int]:
        gen = await generation.generate(scheduler, Target("plain"), RawPrompt("go"))
        task = asyncio.ensure_future(gen.collect())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return held(scheduler), scheduler._queued

    assert run(tmp_path, backend, scenario) == (0, 0)


def test_load_and_embed_hold_the_model_only_while_they_run(tmp_path: Path) -> None:
    async def scenario(scheduler: Scheduler) -> tuple[generation.LoadResult, generation.Embedded, int]:
        loaded = await generation.load(scheduler, Target("plain", keep_alive=0))
        embedded = await generation.embed(scheduler, Target("plain"), ["abc", "de"])
        return loaded, embedded, held(scheduler)

    loaded, embedded, holding = run(tmp_path, FakeBackend(), scenario)
    assert loaded == generation.LoadResult("plain:latest", unloading=True)
    assert embedded.model == "plain:latest" and embedded.vectors == [[3.0, 1.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]]
    assert holding == 0
    assert generation.normalise([3.0, 4.0, 12.0], dimensions=2) == [0.6, 0.8]


def test_the_system_part_a_context_shift_keeps_is_found_in_the_rendered_prompt(tmp_path: Path) -> None:
    make(tmp_path, FakeBackend())
    recipe = resolve(Store(tmp_path / "models"), "thinker")
    chat = ChatPrompt([Message(role="system", content="be brief"), Message(role="user", content="be brief, hi")])
    text = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nbe brief, hi<|im_end|>\n<|im_start|>assistant\n"
    assert generation.system_chars(recipe, chat, text) == text.index("be brief") + len("be brief")
    assert generation.system_chars(recipe, GeneratePrompt("hi", system="rules"), "[rules] hi") == len("[rules")
    assert generation.system_chars(recipe, GeneratePrompt("hi"), "hi") == 0  # no system prompt
    assert generation.system_chars(recipe, GeneratePrompt("hi", system="rules"), "hi") == 0  # not shown verbatim
    assert generation.system_chars(recipe, RawPrompt("rules"), "rules") == 0
