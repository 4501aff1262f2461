"""The chat page's HTTP side, in-process: `/` for API clients and browsers, the files under /ui,
their Content-Security-Policy, caching, and the Host check in front of them."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.config import Settings
from corral.server.app import create_app

UI = resources.files("corral.server").joinpath("ui")
PAGE_FILES = sorted(f.name for f in UI.iterdir() if f.is_file())
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path)), base_url="http://127.0.0.1:11434") as c:
        yield c


def csp_of(response: object) -> dict[str, list[str]]:
    header = response.headers["content-security-policy"]  # type: ignore[attr-defined]
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def test_root_answers_api_clients_in_plain_text(client: TestClient) -> None:
    for accept in ("*/*", "application/json", ""):
        r = client.get("/", headers={"Accept": accept}, follow_redirects=False)
        assert r.status_code == 200, accept
        assert r.text == "Corral is running"
        assert r.headers["content-type"].startswith("text/plain")
    head = client.head("/", follow_redirects=False)
    assert head.status_code == 200 and head.content == b""


def test_root_sends_a_browser_to_the_page(client: TestClient) -> None:
    r = client.get("/", headers={"Accept": BROWSER_ACCEPT}, follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"] == "/ui"
    page = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200 and "<title>Corral</title>" in page.text


def test_the_page_has_a_strict_content_security_policy(client: TestClient) -> None:
    r = client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    csp = csp_of(r)
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["require-trusted-types-for"] == ["'script'"]
    # Nothing looser anywhere: no 'unsafe-*', no wildcard, no other origin or scheme but data: images.
    assert {v for vs in csp.values() for v in vs} <= {"'none'", "'self'", "'script'", "data:"}
    assert csp["img-src"] == ["'self'", "data:"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(client: TestClient) -> None:
    parser = _Tags()
    parser.feed(client.get("/ui").text)
    assert parser.script_text.strip() == ""
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"type": "module", "src": "/ui/app.js"}]
    assert not [tag for tag, _ in parser.tags if tag == "style"]
    for tag, attrs in parser.tags:
        assert not [a for a in attrs if a.startswith("on") or a == "style"], (tag, attrs)
        for link in (attrs.get("src"), attrs.get("href")):
            if link is not None:
                assert link.startswith("/ui/"), link
                assert client.get(link).status_code == 200, link


def test_the_accessible_names_are_in_the_markup(client: TestClient) -> None:
    html = client.get("/ui").text
    assert '<label for="message" class="visually-hidden">Message</label>' in html
    assert '<label for="model" class="visually-hidden">Model</label>' in html
    for name in ("Send", "Stop", "New chat"):
        assert re.search(rf"<button [^>]*>{name}</button>", html), name


@pytest.mark.parametrize("name", PAGE_FILES)
def test_every_page_file_is_served_with_its_type_gzipped(client: TestClient, name: str) -> None:
    raw = UI.joinpath(name).read_bytes()
    types = {"html": "text/html", "js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
    r = client.get(f"/ui/{name}", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == types[name.rsplit(".", 1)[1]]
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == raw  # httpx undid the gzip
    assert "content-security-policy" in r.headers
    plain = client.get(f"/ui/{name}", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == raw
    head = client.head(f"/ui/{name}", headers={"Accept-Encoding": "identity"})
    assert head.content == b"" and head.headers["content-length"] == str(len(raw))


def test_a_known_etag_is_answered_304(client: TestClient) -> None:
    first = client.get("/ui/app.js")
    assert first.headers["cache-control"] == "no-cache"
    again = client.get("/ui/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/ui/app.js", headers={"If-None-Match": '"something-else"'}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/ui/nothing.js", "/ui/webui.py", "/ui/..%2Fwebui.py", "/ui/%2e%2e%2fapp.py", "/ui/.hidden.js", "/ui/ui"]
)
def test_names_outside_the_page_are_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert b"import" not in r.content and b"def " not in r.content


def test_the_page_is_behind_the_host_check(client: TestClient) -> None:
    r = client.get("/ui", headers={"Host": "attacker.example:11434"})
    assert r.status_code == 403
    assert "not allowed" in r.json()["error"]
    assert client.get("/ui", headers={"Host": "localhost:11434"}).status_code == 200


def test_the_scripts_never_turn_a_string_into_markup_or_code() -> None:
    """The page builds its DOM from nodes and text; the CSP's Trusted Types would stop the rest, but
    nothing should even try."""
    for name in PAGE_FILES:
        if not name.endswith(".js"):
            continue
        source = UI.joinpath(name).read_text()
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "DOMParser",
            "createContextualFragment",
        ):
            assert sink not in source, f"{name} uses {sink}"


def test_the_whole_page_is_small_over_the_wire() -> None:
    """Every file the page loads, gzipped as served: a chat page need not weigh more than an image."""
    total = sum(len(gzip.compress(UI.joinpath(n).read_bytes(), compresslevel=9)) for n in PAGE_FILES)
    assert total < 40_000, total
