"""The inspector page as the relay serves it: headers, files, and the rules its markup and script keep.

The page's behaviour in a real browser is tested in test_inspector_browser.py.
"""

import re
from html.parser import HTMLParser
from importlib import resources

import pytest

from tests.support.api import api_request
from tests.support.http import send_request

STATIC = resources.files("relay_server") / "static"

# DOM sinks that parse strings as HTML or code; the script must use none of them.
FORBIDDEN_SINKS = ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute(\"on"]


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def csp_directives(value: str) -> dict[str, str]:
    return {part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2] for part in value.split(";") if part.strip()}


async def test_page_served_with_strict_csp(runner, shared_relay):
    """The page comes as HTML with a CSP that allows no inline script and nothing from other origins."""
    channel = await runner.create_channel(shared_relay.url)

    answer = await send_request(shared_relay.url, "GET", [], tail=f"/inspect/{channel.id}")

    assert answer.status == 200, answer.describe()
    assert answer.content_type == "text/html; charset=utf-8"
    directives = csp_directives(answer.header("Content-Security-Policy"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert "unsafe-inline" not in answer.header("Content-Security-Policy")
    assert answer.header("X-Content-Type-Options") == "nosniff"
    assert answer.header("Referrer-Policy") == "no-referrer"
    assert answer.header("Cache-Control") == "no-store"


async def test_page_same_for_unknown_channel(runner, shared_relay):
    """Any channel id gets the same page, so the page reveals nothing about which channels exist."""
    channel = await runner.create_channel(shared_relay.url)

    known = await send_request(shared_relay.url, "GET", [], tail=f"/inspect/{channel.id}")
    unknown = await send_request(shared_relay.url, "GET", [], tail="/inspect/ch_doesnotexist")

    assert unknown.status == 200
    assert unknown.body == known.body


@pytest.mark.parametrize(("name", "content_type"), [("inspector.js", "text/javascript"), ("inspector.css", "text/css")])
async def test_static_files(name, content_type, shared_relay):
    """The script and style sheet are served from the package with their content types."""
    answer = await send_request(shared_relay.url, "GET", [], tail=f"/inspect/static/{name}")

    assert answer.status == 200, answer.describe()
    assert answer.content_type == f"{content_type}; charset=utf-8"
    assert answer.header("X-Content-Type-Options") == "nosniff"
    assert answer.body == (STATIC / name).read_bytes()


@pytest.mark.parametrize("name", ["inspector.html", "secret.txt", "..%2F..%2Fapi.py", "%2e%2e%2fapp.py"])
async def test_static_unknown_file_404(name, shared_relay):
    """Only the listed files are served; anything else, traversal included, gets a JSON 404."""
    answer = await send_request(shared_relay.url, "GET", [], tail=f"/inspect/static/{name}")

    assert answer.status == 404, answer.describe()
    assert answer.content_type.startswith("application/json")


async def test_ingest_never_html(runner, shared_relay):
    """The ingest URL responds with JSON even to a browser that accepts HTML."""
    channel = await runner.create_channel(shared_relay.url)
    headers = [("Accept", "text/html,application/xhtml+xml"), ("User-Agent", "Mozilla/5.0")]

    answer = await send_request(channel.url, "GET", headers)

    assert answer.status == 202, answer.describe()
    assert answer.content_type.startswith("application/json")
    assert not answer.body.lstrip().startswith(b"<")


def test_page_markup_has_no_inline_code():
    """Every script of the page is an external file and no element carries an event-handler attribute."""
    parser = TagCollector()
    parser.feed((STATIC / "inspector.html").read_text(encoding="utf-8"))

    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "static/inspector.js", "defer": None}]
    for tag, attrs in parser.tags:
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"<{tag}> has event-handler attributes {handlers}"
        assert "style" not in attrs, f"<{tag}> has an inline style, which the CSP blocks"


@pytest.mark.parametrize("sink", FORBIDDEN_SINKS)
def test_script_uses_no_html_sinks(sink):
    """The script never hands a string to an API that parses HTML or code."""
    script = (STATIC / "inspector.js").read_text(encoding="utf-8")
    code = re.sub(r"^\s*//.*$", "", script, flags=re.MULTILINE)

    assert sink not in code


async def test_page_needs_no_token_but_api_does(runner, shared_relay):
    """The page itself is public; the data behind it needs the channel token."""
    channel = await runner.create_channel(shared_relay.url)

    answer = await api_request(shared_relay.url, "GET", f"/api/channels/{channel.id}/events")

    assert answer.status == 401
