"""The inspector page in a real browser: Playwright drives Debian's Chromium at /usr/bin/chromium.

Outside CI these tests skip when Chromium or the playwright package is
missing; with CI=true they fail instead, because .ci/run installs both.

Set HOOKRELAY_UPDATE_SCREENSHOT=1 to copy the screenshot that
`test_live_list_detail_and_replay` takes to docs/inspector.png.
"""

import asyncio
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.api import ChannelApi, decode_raw
from tests.support.checks import post_webhook
from tests.support.http import send_request
from tests.support.processes import PROXY_VARIABLES, Channel, Relay
from tests.support.timing import MS

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Loopback only, whatever proxy the machine has configured.
    "--no-proxy-server",
]
SCREENSHOT = Path(__file__).parents[1] / "docs" / "inspector.png"

# Playwright takes timeouts in milliseconds; MS is in seconds.
UI_TIMEOUT = 10_000 * MS * 1000
DELIVERY_UI_TIMEOUT = 15_000 * MS * 1000
DELIVERY_TIMEOUT = 15_000 * MS
CURL_TIMEOUT = 10_000 * MS

# Every tag the page itself uses; a payload that created an element would add another.
PAGE_TAGS = {
    "html", "head", "meta", "title", "link", "script", "body", "header", "h1", "h2", "h3", "span", "code", "form",
    "label", "input", "button", "p", "div", "section", "select", "option", "main", "table", "thead", "tbody", "tr",
    "th", "td", "dl", "dt", "dd", "pre", "textarea",
}

DOM_REPORT = """() => {
  const elements = [...document.querySelectorAll("*")];
  const attributes = elements.flatMap((node) => [...node.attributes].map((attribute) => [node.tagName, attribute.name, attribute.value]));
  return {
    tags: [...new Set(elements.map((node) => node.tagName.toLowerCase()))],
    scripts: [...document.scripts].map((script) => script.getAttribute("src")),
    handlers: attributes.filter(([, name]) => name.toLowerCase().startsWith("on")),
    scriptUrls: attributes.filter(([, , value]) => /^\\s*(javascript|data|vbscript):/i.test(value)),
    pwned: typeof window.pwned,
    title: document.title,
  };
}"""

try:
    from playwright.async_api import async_playwright, expect
except ImportError:
    async_playwright = expect = None


def require_browser() -> None:
    """Skip when the browser cannot run here; fail instead under CI=true."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    if async_playwright is None or importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package is missing (pip install -e '.[test]')")
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("browser tests cannot run: " + "; ".join(missing))
    pytest.skip("; ".join(missing))


@dataclass
class BrowserPage:
    """A page and what it reported: dialogs it opened, uncaught errors and console messages."""

    page: object
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    async def dom_report(self) -> dict:
        return await self.page.evaluate(DOM_REPORT)


@pytest_asyncio.fixture
async def browser():
    require_browser()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture
async def browser_page(browser) -> BrowserPage:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    watched = BrowserPage(page)

    async def on_dialog(dialog) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.on("console", lambda message: watched.console.append(f"{message.type}: {message.text}"))
    try:
        yield watched
    finally:
        await context.close()


def inspector_link(relay: Relay, channel: Channel) -> str:
    return f"{relay.url}/inspect/{channel.id}#token={channel.token}"


async def open_inspector(watched: BrowserPage, relay: Relay, channel: Channel) -> None:
    """Open the inspector with the token in the fragment and wait until its live loop runs."""
    await watched.page.goto(inspector_link(relay, channel))
    await expect(watched.page.locator("#connection")).to_have_text("live", timeout=UI_TIMEOUT)


def event_row(page, event_id: str):
    return page.locator(f'#event-rows tr[data-id="{event_id}"]')


# No X-GitHub-Delivery: the relay would take the copy sent by curl for a redelivery of the same event.
GITHUB_HEADERS = [("Content-Type", "application/json"), ("X-GitHub-Event", "issues"), ("X-Request-Id", "72d3162e-cc78")]
GITHUB_BODY = json.dumps({"action": "opened", "issue": {"number": 42, "title": "Inspector shows this"}}).encode()


async def post_samples(channel: Channel) -> None:
    """Post a few typical webhooks, so that the page has something to show."""
    stripe = json.dumps({"id": "evt_1Nx", "type": "invoice.paid", "data": {"object": {"amount_paid": 4200}}}).encode()
    await post_webhook(channel.url, stripe, tail="/stripe", headers=[("Content-Type", "application/json"), ("Stripe-Signature", "t=1,v1=ab")])
    form = b"payload=%7B%22type%22%3A%22block_actions%22%7D&team=T123"
    await post_webhook(channel.url, form, tail="/slack/actions", headers=[("Content-Type", "application/x-www-form-urlencoded")])
    response = await send_request(channel.url, "PUT", [("Content-Type", "application/octet-stream")], bytes(range(40)), tail="/upload")
    assert response.status == 202, response.describe()


async def test_live_list_detail_and_replay(browser_page, runner, shared_relay, target, tmp_path):
    """A new webhook appears without reload; its detail opens; Replay delivers it again; curl re-sends it."""
    page = browser_page.page
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)
    api = ChannelApi(shared_relay.url, channel)
    await open_inspector(browser_page, shared_relay, channel)
    assert "token" not in page.url, "the token stayed in the address bar"
    await page.evaluate("window.sameDocument = true")

    # Live list: the row appears and turns delivered without a reload.
    event_id = await post_webhook(channel.url, GITHUB_BODY, tail="/github", query="delivery=1", headers=GITHUB_HEADERS)
    row = event_row(page, event_id)
    await expect(row).to_be_visible(timeout=UI_TIMEOUT)
    await expect(row.locator(".badge")).to_have_text("delivered", timeout=DELIVERY_UI_TIMEOUT)
    assert await page.evaluate("window.sameDocument") is True, "the page reloaded"
    await expect(row.locator("td.path")).to_have_text("/github?delivery=1")
    await expect(row.locator("td.type")).to_have_text("issues.opened")

    # Detail: headers, pretty JSON, hex, and the outcome.
    await row.click()
    await expect(page.locator("#detail-title")).to_have_text("POST /github?delivery=1")
    await expect(page.locator("#body-view pre")).to_contain_text('"number": 42')
    await expect(page.locator("#detail-headers")).to_contain_text("X-GitHub-Event")
    await expect(page.locator("#detail-outcomes")).to_contain_text("delivered")
    await expect(page.locator("#detail-outcomes")).to_contain_text("200")
    await page.click('.tabs [data-view="hex"]')
    await expect(page.locator("#body-view pre")).to_contain_text("00000000  7b 22 61 63")
    await page.click('.tabs [data-view="pretty"]')

    # Replay: the target receives the same event again.
    await page.click("#replay")
    await expect(page.locator("#action-message")).to_have_text(f"{event_id} queued again for group default")
    await target.wait_for_requests(2, DELIVERY_TIMEOUT)
    assert target.event_ids == [event_id, event_id]
    assert target.requests[1].body == GITHUB_BODY
    await expect(event_row(page, event_id).locator(".badge")).to_have_text("delivered", timeout=DELIVERY_UI_TIMEOUT)

    # Copy as curl: the command sends the same request to the channel again.
    await page.click("#copy-curl")
    await expect(page.locator("#action-message")).not_to_have_text(f"{event_id} queued again for group default")
    command = await page.input_value("#curl-text")
    assert command.startswith("curl ")
    if shutil.which("curl"):
        resent = await run_curl(command)
        assert resent != event_id
        original, copy = await api.show(event_id), await api.show(resent)
        assert decode_raw(copy)[0] == decode_raw(original)[0]
        assert decode_raw(copy)[2] == decode_raw(original)[2]
        assert end_to_end(decode_raw(copy)[1]) == end_to_end(decode_raw(original)[1])

    # A screenshot with several kinds of events, the GitHub one open.
    await post_samples(channel)
    await expect(page.locator("#event-rows tr")).to_have_count(5 if shutil.which("curl") else 4, timeout=UI_TIMEOUT)
    await event_row(page, event_id).click()
    await expect(page.locator("#detail-title")).to_have_text("POST /github?delivery=1")
    await page.wait_for_timeout(3_000 * MS * 1000)  # let the highlight of new rows fade
    await page.screenshot(path=str(tmp_path / "inspector.png"), full_page=True)
    if os.environ.get("HOOKRELAY_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "inspector.png", SCREENSHOT)

    assert browser_page.dialogs == []
    assert browser_page.errors == []
    assert channel.token not in shared_relay.process.stderr_text(), "the token reached the relay's log"


def end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop the headers that curl writes itself (Host, Content-Length) from a stored header list."""
    return [(name.lower(), value) for name, value in headers if name.lower() not in (b"host", b"content-length")]


async def run_curl(command: str) -> str:
    """Run a copied curl command with bash and return the id of the event it created."""
    environment = {name: value for name, value in os.environ.items() if name.lower() not in PROXY_VARIABLES}
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CURL_TIMEOUT)
    assert process.returncode == 0, f"curl failed: {stderr.decode(errors='replace')}\n{command}"
    return json.loads(stdout)["id"]


HOSTILE_TAIL = "/<script>window.pwned=1</script>/<img/src/onerror=window.pwned=2>"
HOSTILE_QUERY = "next=javascript:window.pwned=3&x=<svg/onload=window.pwned=4>"
HOSTILE_HEADERS = [
    ("Content-Type", "application/json"),
    ("X-GitHub-Event", "<img/src/onerror=window.pwned=5>"),
    ("X-Evil", '<img src=x onerror="window.pwned=6;alert(6)">'),
    ("X-Link", "javascript:alert(7)"),
]
HOSTILE_JSON = json.dumps({
    "html": "<script>window.pwned=8;alert(8)</script>",
    "img": "<img src=x onerror=alert(9)>",
    "url": "javascript:alert(10)",
    "<svg onload=alert(11)>": "a key with markup",
}).encode()
HOSTILE_FORM = b"a=%3Cscript%3Ealert(12)%3C%2Fscript%3E&%3Cimg+src%3Dx+onerror%3Dalert(13)%3E=v&url=javascript:alert(14)"
HOSTILE_HTML = b"<html><body onload=alert(15)><script>window.pwned=16</script><a href='javascript:alert(17)'>x</a></body></html>"


async def check_inert(watched: BrowserPage, where: str) -> None:
    """Check that nothing from a payload ran or became an element."""
    report = await watched.dom_report()
    assert watched.dialogs == [], f"{where}: dialogs opened: {watched.dialogs}"
    assert report["pwned"] == "undefined", f"{where}: payload script ran"
    assert report["title"] == "hookrelay inspector", f"{where}: title changed"
    assert report["scripts"] == ["static/inspector.js"], f"{where}: scripts {report['scripts']}"
    assert set(report["tags"]) <= PAGE_TAGS, f"{where}: elements from a payload: {set(report['tags']) - PAGE_TAGS}"
    assert report["handlers"] == [], f"{where}: event-handler attributes {report['handlers']}"
    assert report["scriptUrls"] == [], f"{where}: script URLs in attributes {report['scriptUrls']}"
    assert watched.errors == [], f"{where}: page errors {watched.errors}"
    violations = [line for line in watched.console if "Content Security Policy" in line or "Trusted Type" in line]
    assert violations == [], f"{where}: the browser blocked something: {violations}"


async def test_hostile_payload_stays_inert(browser_page, runner, shared_relay):
    """Markup, event handlers and javascript: URLs in path, query, headers and bodies show as text and never run."""
    page = browser_page.page
    channel = await runner.create_channel(shared_relay.url)
    await open_inspector(browser_page, shared_relay, channel)
    json_id = await post_webhook(channel.url, HOSTILE_JSON, tail=HOSTILE_TAIL, query=HOSTILE_QUERY, headers=HOSTILE_HEADERS)
    form_id = await post_webhook(channel.url, HOSTILE_FORM, tail="/form", headers=[("Content-Type", "application/x-www-form-urlencoded")])
    html_id = await post_webhook(channel.url, HOSTILE_HTML, tail="/html", headers=[("Content-Type", "text/html")])
    await expect(page.locator("#event-rows tr")).to_have_count(3, timeout=UI_TIMEOUT)
    await check_inert(browser_page, "list")

    row = event_row(page, json_id)
    await expect(row.locator("td.path")).to_have_text(f"{HOSTILE_TAIL}?{HOSTILE_QUERY}")
    detail = await ChannelApi(shared_relay.url, channel).show(json_id)
    await expect(row.locator("td.type")).to_have_text(detail["event_type"] or "")

    await row.click()
    await expect(page.locator("#detail-title")).to_have_text(f"POST {HOSTILE_TAIL}?{HOSTILE_QUERY}")
    await expect(page.locator("#detail-headers")).to_contain_text('<img src=x onerror="window.pwned=6;alert(6)">')
    await expect(page.locator("#detail-headers")).to_contain_text("javascript:alert(7)")
    await expect(page.locator("#body-view pre")).to_contain_text('"html": "<script>window.pwned=8;alert(8)</script>"')
    await expect(page.locator("#curl-text")).to_have_value(re.compile(re.escape("onerror=")))
    for view in ("pretty", "raw", "hex"):
        await page.click(f'.tabs [data-view="{view}"]')
        await check_inert(browser_page, f"JSON event, {view} view")

    await event_row(page, form_id).click()
    await expect(page.locator("#body-view table")).to_contain_text("<script>alert(12)</script>")
    await expect(page.locator("#body-view table")).to_contain_text("<img src=x onerror=alert(13)>")
    await check_inert(browser_page, "form event")

    await event_row(page, html_id).click()
    await expect(page.locator("#body-view pre")).to_have_text(HOSTILE_HTML.decode())
    for view in ("raw", "hex"):
        await page.click(f'.tabs [data-view="{view}"]')
        await check_inert(browser_page, f"HTML event, {view} view")

    # Let the live loop re-render the list a few times with the hostile rows in it.
    await post_webhook(channel.url, b"{}", tail="/after")
    await expect(page.locator("#event-rows tr")).to_have_count(4, timeout=UI_TIMEOUT)
    await check_inert(browser_page, "after a re-render")


async def test_token_prompt(browser_page, runner, shared_relay):
    """Without a token the page asks for one; a wrong token is rejected and the right one opens the list."""
    page = browser_page.page
    channel = await runner.create_channel(shared_relay.url)
    event_id = await post_webhook(channel.url, b'{"hello": "token"}')

    await page.goto(f"{shared_relay.url}/inspect/{channel.id}")
    await expect(page.locator("#token-form")).to_be_visible(timeout=UI_TIMEOUT)
    await page.fill("#token-input", "hrt_wrong")
    await page.click("#token-form button")
    await expect(page.locator("#token-message")).to_have_text("the relay did not accept this channel token", timeout=UI_TIMEOUT)

    await page.fill("#token-input", channel.token)
    await page.click("#token-form button")
    await expect(event_row(page, event_id)).to_be_visible(timeout=UI_TIMEOUT)
    await expect(page.locator("#token-form")).to_be_hidden()

    # The token lives in sessionStorage, so a reload keeps the page open.
    await page.reload()
    await expect(event_row(page, event_id)).to_be_visible(timeout=UI_TIMEOUT)
