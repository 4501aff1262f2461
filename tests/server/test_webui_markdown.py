"""The chat page's Markdown renderer in a real Chromium: model text becomes structure, never markup.

These need no model: a real `corral serve` serves the page, and a test context that bypasses the
page's CSP imports /ui/markdown.js to render chosen texts (the renderer must be safe on its own,
not only because the CSP would stop what slips through). One test checks the CSP itself in the
browser, with nothing bypassed: its Trusted Types refuse any string as markup or script.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Error, Page, expect

from browser import DESKTOP, chromium
from serverproc import running_server

RENDER = """async (text) => {
  const { renderMarkdown } = await import('/ui/markdown.js');
  const box = document.createElement('div');
  box.className = 'md';
  box.append(...renderMarkdown(text));
  document.getElementById('messages').append(box);
  const all = [...box.querySelectorAll('*')];
  return {
    html: box.innerHTML,
    text: box.textContent,
    tags: all.map((e) => e.tagName.toLowerCase()),
    attrs: all.flatMap((e) => [...e.attributes].map((a) => a.name + '=' + a.value)),
  };
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("webui-md")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{server}/ui")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    yield page
    assert dialogs == [], f"a dialog opened: {dialogs}"
    context.close()


def render(page: Page, text: str) -> dict[str, Any]:
    return page.evaluate(RENDER, text)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "attack",
    [
        "<img src=x onerror=alert(1)>",
        "<script>alert(1)</script>",
        '<a href="javascript:alert(1)">x</a>',
        "**<svg onload=alert(1)>**",
        "- <iframe src=javascript:alert(1)>",
        "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | c |",
        "> <details open ontoggle=alert(1)>",
    ],
)
def test_html_in_the_text_stays_text(page: Page, attack: str) -> None:
    out = render(page, attack)
    assert not set(out["tags"]) & {"img", "script", "svg", "iframe", "details", "a"}
    assert not [a for a in out["attrs"] if a.startswith("on") or "javascript" in a]
    markup = attack.split("<", 1)[1].split(">", 1)[0]
    assert f"<{markup}>" in out["text"]


def test_only_http_and_mailto_links_become_links(page: Page) -> None:
    out = render(
        page,
        "[site](https://example.com/a?b=1) [bad](javascript:alert(1)) [data](data:text/html,x) "
        "mail me@x.org <mailto:me@x.org>",
    )
    hrefs = [a.removeprefix("href=") for a in out["attrs"] if a.startswith("href=")]
    assert hrefs == ["https://example.com/a?b=1", "mailto:me@x.org"]
    assert "rel=noopener noreferrer nofollow" in out["attrs"]
    assert "bad" in out["text"] and "data" in out["text"]
    tricky = render(page, '[x](https://e.com/"onmouseover="alert(1))')
    assert [a for a in tricky["attrs"] if a.startswith("on")] == []


def test_markdown_structure(page: Page) -> None:
    text = (
        "# Title\n\nSome **bold**, *italic*, ~~gone~~ and `code <b>`.\nA second line.\n\n"
        "- one\n- two\n  - nested\n\n3. three\n4. four\n\n> quoted\n\n---\n\n"
        "| left | right |\n|:-----|------:|\n| 1 | 2 |\n"
    )
    out = render(page, text)
    assert out["tags"][:1] == ["h1"]
    for tag in ("strong", "em", "del", "code", "br", "ul", "ol", "li", "blockquote", "hr", "table", "th", "td"):
        assert tag in out["tags"], tag
    assert out["tags"].count("ul") == 2  # the nested list
    assert "start=3" in out["attrs"]
    assert "class=align-right" in out["attrs"]
    assert "code <b>" in out["text"]


def test_a_code_block_keeps_its_text_and_copies_it(page: Page) -> None:
    code = 'print("<b>hi</b>")\n    if x < 3 && y > 2:\n        pass'
    out = render(page, f"Here:\n\n```python\n{code}\n```\n")
    assert out["tags"].count("pre") == 1 and "data-lang=python" in out["attrs"]
    block = page.locator(".code-block").last
    expect(block.locator("code")).to_have_text(code)
    block.get_by_role("button", name="Copy python code").click()
    expect(block.get_by_role("button", name="Copy python code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == code


def test_an_unclosed_fence_while_streaming_is_code_to_the_end(page: Page) -> None:
    out = render(page, "Start\n```js\nlet a = '<img src=x onerror=alert(1)>';\nlet b")
    assert out["tags"].count("pre") == 1
    assert "let b" in out["text"] and "img" not in out["tags"]


def test_the_browser_enforces_the_pages_policy(browser: Browser, server: str) -> None:
    """With the CSP in force (nothing bypassed), the page refuses to turn a string into markup or script."""
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{server}/ui")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        with pytest.raises(Error, match="requires 'TrustedHTML' assignment"):
            page.evaluate("() => { document.getElementById('messages').innerHTML = '<img src=x>'; }")
        with pytest.raises(Error, match="requires 'TrustedScript' assignment"):
            page.evaluate(
                "() => { const s = document.createElement('script'); s.textContent = 'window.hit = 1'; "
                "document.body.append(s); }"
            )
        assert page.locator("#messages img").count() == 0
    finally:
        context.close()
