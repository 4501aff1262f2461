"""The chat page on a server that wants API keys (CORRAL_API_KEYS), in Debian's chromium.

The page itself is open (it holds nothing secret); the API behind it answers 401 until the page
sends `Authorization: Bearer <key>`, which it asks for once and keeps in the browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from browser import DESKTOP, chromium
from serverproc import running_server

KEY = "webui-test-key-7f3a"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("webui-keys"), CORRAL_API_KEYS=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def key_dialog(page: Page) -> Locator:
    return page.get_by_role("dialog", name="API key needed")


def enter_key(page: Page, key: str) -> None:
    key_dialog(page).get_by_label("API key").fill(key)
    key_dialog(page).get_by_role("button", name="Use key").click()


def test_the_page_is_open_but_its_api_is_not(server: str) -> None:
    assert httpx.get(f"{server}/ui").status_code == 200
    assert httpx.get(f"{server}/ui/app.js").status_code == 200
    assert httpx.get(f"{server}/api/tags").status_code == 401
    assert httpx.get(f"{server}/api/tags", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_page_asks_for_a_key_on_401_and_keeps_it(browser: Browser, server: str) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(f"{server}/")
    expect(key_dialog(page)).to_be_visible()
    expect(key_dialog(page)).to_contain_text("asks for an API key")
    enter_key(page, "not-the-key")
    expect(key_dialog(page)).to_contain_text("That key was refused")
    enter_key(page, KEY)
    expect(key_dialog(page)).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    # The key goes with every call afterwards: a pull through the page succeeds.
    page.get_by_role("textbox", name="Pull a model").fill("smollm2:135m")
    page.get_by_role("button", name="Pull").click()
    expect(page.get_by_role("status")).to_have_text("Pulled smollm2:135m", timeout=300_000)
    expect(page.get_by_role("combobox", name="Model")).to_have_value("smollm2:135m")
    # Kept across a reload: no question asked.
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(key_dialog(page)).to_be_hidden()
    expect(page.get_by_role("combobox", name="Model").locator("option", has_text="smollm2:135m")).to_have_count(1)
    # Forgotten, it is asked for again; refusing leaves a one-line note, not a broken page.
    page.get_by_role("button", name="Forget API key").click()
    page.reload()
    expect(key_dialog(page)).to_be_visible()
    key_dialog(page).get_by_role("button", name="Cancel").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#model-info")).to_have_text(re.compile("needs an API key"))
    context.close()
