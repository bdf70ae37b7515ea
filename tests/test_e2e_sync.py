"""Sync channels: senders get the local server's real answer through a real relay and listener.

The local app below answers each provider's endpoint handshake the way the
provider documents it; the tests check the sender receives exactly that.
"""

import asyncio
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from tests.support.http import send_request
from tests.support.processes import Channel
from tests.support.timing import MS, wait_until

ZOOM_SECRET = b"zoom-test-secret"
CONNECT_TIMEOUT = 15_000 * MS
DELIVERY_TIMEOUT = 20_000 * MS
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response><Message>Thanks \xe2\x9c\x93</Message></Response>'
BINARY = bytes(range(256)) * 4


class HandshakeApp:
    """A local server that implements the endpoint checks of several providers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.stall = 0.0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path_qs, request.headers.get("X-Hookrelay-Event-Id")))
        if self.stall:
            await asyncio.sleep(self.stall)
        route = request.path.strip("/")
        if route == "slack":
            challenge = json.loads(body)["challenge"]
            return web.json_response({"challenge": challenge})
        if route == "meta":
            if request.query.get("hub.verify_token") != "meta-verify":
                return web.Response(status=403)
            return web.Response(text=request.query["hub.challenge"])
        if route == "zoom":
            plain = json.loads(body)["payload"]["plainToken"]
            encrypted = hmac.new(ZOOM_SECRET, plain.encode(), hashlib.sha256).hexdigest()
            return web.json_response({"plainToken": plain, "encryptedToken": encrypted})
        if route == "graph":
            return web.Response(text=request.query["validationToken"], content_type="text/plain")
        if route == "dropbox":
            headers = {"X-Content-Type-Options": "nosniff"}
            return web.Response(text=request.query["challenge"], content_type="text/plain", headers=headers)
        if route == "twilio":
            assert parse_qs(body.decode())["Body"] == ["hello"]
            return web.Response(body=TWIML, content_type="application/xml")
        if route == "binary":
            return web.Response(body=BINARY, status=201, headers={"Content-Type": "application/octet-stream", "X-Custom": "kept"})
        if route == "large":
            return web.Response(body=b"x" * int(request.query["bytes"]), content_type="application/octet-stream")
        return web.Response(status=404)


@pytest.fixture
async def app():
    handshake = HandshakeApp()
    await handshake.start()
    try:
        yield handshake
    finally:
        await handshake.stop()


async def sync_channel(runner, relay_url: str, *options: str) -> Channel:
    channel = await runner.create_channel(relay_url)
    code, _, stderr = await runner.run(["channel", "update", "--relay", relay_url, "--channel", channel.id, "--token", channel.token, "--response", "sync", *options])
    assert code == 0, stderr
    return channel


async def listening(runner, relay, channel: Channel, app: HandshakeApp):
    listener = runner.start_listener(relay.url, channel, f"127.0.0.1:{app.port}")
    await listener.wait_for_connection(relay.port, CONNECT_TIMEOUT)
    # The TCP connection comes before the websocket handshake: wait until the
    # relay counts the listener, or a sync sender would get the fallback.
    await wait_for_listeners(relay.url, channel)
    return listener


async def wait_for_listeners(relay_url: str, channel: Channel) -> None:
    listeners = 0
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while listeners < 1:
        assert time.monotonic() < deadline, f"the relay did not count a listener on {channel.id}"
        response = await send_request(f"{relay_url}/api/channels/{channel.id}", "GET", [("Authorization", f"Bearer {channel.token}")])
        listeners = response.json().get("listeners", 0) if response.status == 200 else 0
        await asyncio.sleep(20 * MS)


async def test_slack_url_verification(runner, shared_relay, app):
    """Slack's url_verification challenge is echoed back to Slack as JSON."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    body = b'{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}'
    answer = await send_request(channel.url, headers=[("Content-Type", "application/json")], body=body, tail="/slack")
    assert answer.status == 200
    assert answer.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_meta_hub_challenge_get(runner, shared_relay, app):
    """Meta's GET with hub.challenge gets the challenge as the plain body."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    query = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meta-verify"
    answer = await send_request(channel.url, method="GET", tail="/meta", query=query)
    assert answer.status == 200
    assert answer.body == b"1158201444"


async def test_zoom_url_validation(runner, shared_relay, app):
    """Zoom's endpoint.url_validation gets plainToken and its HMAC back."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    body = b'{"event":"endpoint.url_validation","payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680}'
    answer = await send_request(channel.url, headers=[("Content-Type", "application/json")], body=body, tail="/zoom")
    expected = hmac.new(ZOOM_SECRET, b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert answer.status == 200
    assert answer.json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}


async def test_microsoft_graph_validation_token(runner, shared_relay, app):
    """Graph's validationToken comes back as text/plain well within its 10 s limit."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    started = time.monotonic()
    answer = await send_request(channel.url, tail="/graph", query="validationToken=Validation%3a+Testing+client+application")
    assert answer.status == 200
    assert answer.body == b"Validation: Testing client application"
    assert answer.header("Content-Type").startswith("text/plain")
    assert time.monotonic() - started < 10


async def test_dropbox_challenge(runner, shared_relay, app):
    """Dropbox's GET challenge is echoed with its headers."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    answer = await send_request(channel.url, method="GET", tail="/dropbox", query="challenge=KCoZY2RvQlE8jGnq")
    assert answer.status == 200
    assert answer.body == b"KCoZY2RvQlE8jGnq"
    assert answer.header("X-Content-Type-Options") == "nosniff"


async def test_twiml_reply(runner, shared_relay, app):
    """Twilio reads TwiML from the answer: the XML arrives byte for byte."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    headers = [("Content-Type", "application/x-www-form-urlencoded")]
    answer = await send_request(channel.url, headers=headers, body=b"From=%2B15551234567&Body=hello", tail="/twilio")
    assert answer.status == 200
    assert answer.body == TWIML
    assert answer.header("Content-Type").startswith("application/xml")


async def test_binary_answer_with_status_and_headers(runner, shared_relay, app):
    """Status, end-to-end headers and a binary body reach the sender unchanged."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    answer = await send_request(channel.url, body=b"{}", tail="/binary")
    assert answer.status == 201
    assert answer.body == BINARY
    assert answer.header("X-Custom") == "kept"
    assert answer.header("Transfer-Encoding") is None


async def test_answer_over_relay_limit_becomes_502(runner, tmp_path, app):
    """A response larger than the relay's --max-body reaches the sender as a 502, never cut, and the session stays up."""
    relay = await runner.start_relay(tmp_path / "data", "--max-body", "1MiB")
    channel = await sync_channel(runner, relay.url)
    await listening(runner, relay, channel, app)

    too_large = await send_request(channel.url, body=b"{}", tail="/large", query=f"bytes={3 << 20}")
    fitting = await send_request(channel.url, body=b"{}", tail="/large", query=f"bytes={1 << 20}")

    assert too_large.status == 502
    assert too_large.json()["error"] == "response_too_large"
    assert (fitting.status, len(fitting.body)) == (200, 1 << 20)


async def test_head_answer_keeps_content_length(runner, shared_relay, app):
    """The response to a HEAD request keeps the length of the body it does not carry."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    answer = await send_request(channel.url, method="HEAD", tail="/binary")
    assert answer.status == 201
    assert answer.header("Content-Length") == str(len(BINARY))
    assert answer.body == b""


async def test_timeout_falls_back_and_delivers_once(runner, shared_relay, app):
    """A slow server: the sender gets the fallback in time and the event reaches the app once."""
    channel = await sync_channel(runner, shared_relay.url, "--response-timeout", "1s", "--fallback", "503")
    await listening(runner, shared_relay, channel, app)
    app.stall = 2.5
    started = time.monotonic()
    answer = await send_request(channel.url, body=b"{}", tail="/binary")
    waited = time.monotonic() - started
    assert answer.status == 503
    assert answer.json()["held"] is True
    assert waited < 2.5
    event_id = answer.json()["id"]
    await wait_until(lambda: any(r[2] == event_id for r in app.requests), DELIVERY_TIMEOUT, "the held event at the app")
    await asyncio.sleep(3.0)
    assert [r[2] for r in app.requests].count(event_id) == 1


async def test_no_listener_falls_back_then_delivers(runner, shared_relay, app):
    """Without a listener the sender gets 202 at once and the event waits for the listener."""
    channel = await sync_channel(runner, shared_relay.url)
    answer = await send_request(channel.url, method="GET", tail="/dropbox", query="challenge=abc")
    assert answer.status == 202
    assert answer.json()["reason"] == "no listener connected"
    await listening(runner, shared_relay, channel, app)
    await wait_until(lambda: any(r[2] == answer.json()["id"] for r in app.requests), DELIVERY_TIMEOUT, "the held event at the app")


async def test_answer_is_kept_in_history(runner, shared_relay, app):
    """The event's detail shows the answer the sender received."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    answer = await send_request(channel.url, method="GET", tail="/dropbox", query="challenge=xyz")
    event_id = answer.header("X-Hookrelay-Event-Id")
    assert event_id.startswith("evt_")
    code, stdout, stderr = await runner.run(["events", "show", event_id, "--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token, "--json"])
    assert code == 0, stderr
    detail = json.loads(stdout)
    assert detail["answer"]["status"] == 200
    assert detail["answer"]["source"] == "target"


async def test_async_channel_still_answers_202(runner, shared_relay, app):
    """A channel in the default mode answers 202 with the id even with a listener connected."""
    channel = await runner.create_channel(shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    answer = await send_request(channel.url, method="GET", tail="/dropbox", query="challenge=abc")
    assert answer.status == 202
    assert answer.json()["id"].startswith("evt_")


def slack_headers(retry: int | None = None) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", "application/json"),
        ("X-Slack-Request-Timestamp", "1700000099"),
        ("X-Slack-Signature", "v0=" + "ab" * 32),
    ]
    if retry is not None:
        headers += [("X-Slack-Retry-Num", str(retry)), ("X-Slack-Retry-Reason", "http_timeout")]
    return headers


async def test_slack_retry_gets_first_answer_once(runner, shared_relay, app):
    """A Slack retry of an answered request gets the same answer and is not delivered again."""
    channel = await sync_channel(runner, shared_relay.url)
    await listening(runner, shared_relay, channel, app)
    body = b'{"token":"t","challenge":"retry-check","type":"url_verification"}'
    first = await send_request(channel.url, headers=slack_headers(), body=body, tail="/slack")
    retry = await send_request(channel.url, headers=slack_headers(retry=1), body=body, tail="/slack")
    event_id = first.header("X-Hookrelay-Event-Id")
    assert first.json() == {"challenge": "retry-check"}
    assert retry.status == 200
    assert retry.json() == {"challenge": "retry-check"}
    assert retry.header("X-Hookrelay-Event-Id") == event_id
    assert retry.header("X-Hookrelay-Duplicate") == "slack retry 1 (http_timeout)"
    await asyncio.sleep(1.0)
    assert [r[2] for r in app.requests].count(event_id) == 1


async def test_slack_retry_on_async_channel_is_reported(runner, shared_relay, app):
    """On an async channel a Slack retry is answered as a duplicate naming the retry."""
    channel = await runner.create_channel(shared_relay.url)
    body = b'{"type":"event_callback","event":{"type":"message"}}'
    first = await send_request(channel.url, headers=slack_headers(), body=body, tail="/slack")
    retry = await send_request(channel.url, headers=slack_headers(retry=2), body=body, tail="/slack")
    assert first.status == 202
    assert retry.status == 200
    assert retry.json() == {"id": first.json()["id"], "duplicate": True, "retry": "slack retry 2 (http_timeout)"}
    assert retry.header("X-Hookrelay-Event-Id") == first.json()["id"]
