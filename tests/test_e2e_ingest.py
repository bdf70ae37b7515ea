"""The relay's public ingest URL: channel creation, 202 with an event id, 404, 413, and JSON responses only."""

import asyncio
import json
import re
import secrets

from tests.support.checks import accepted_event_id, post_webhook
from tests.support.http import build_request, read_response, send_request
from tests.support.own_cases import BROWSER_USER_AGENT
from tests.support.timing import MS

DELIVERY_TIMEOUT = 15_000 * MS
MAX_BODY = 1024
DEFAULT_MAX_BODY = 25 * 1024 * 1024


async def test_channel_create_json(runner, shared_relay):
    """`channel create --json` prints one JSON object with the channel, its public URL and a token."""
    exit_code, stdout, stderr = await runner.run(["channel", "create", "--relay", shared_relay.url, "--json"])

    assert exit_code == 0, stderr
    assert len(stdout.strip().splitlines()) == 1, stdout
    created = json.loads(stdout)
    assert created["url"] == f"{shared_relay.url}/h/{created['channel']}"
    assert isinstance(created["token"], str)
    assert created["token"]


async def test_channel_create_unique(runner, shared_relay):
    """Two channels get different ids and different tokens."""
    first = await runner.create_channel(shared_relay.url)
    second = await runner.create_channel(shared_relay.url)

    assert first.id != second.id
    assert first.token != second.token


async def test_ingest_responds_202_json(runner, shared_relay):
    """An accepted webhook gets 202 with a JSON body `{"id": "evt_..."}`."""
    channel = await runner.create_channel(shared_relay.url)

    response = await send_request(channel.url, "POST", [("Content-Type", "application/json")], b"{}")

    assert response.status == 202
    assert response.content_type.startswith("application/json")
    assert re.fullmatch(r"evt_[A-Za-z0-9_-]+", response.json()["id"])


async def test_ingest_event_ids_unique(runner, shared_relay):
    """Every accepted webhook gets its own event id."""
    channel = await runner.create_channel(shared_relay.url)

    event_ids = [await post_webhook(channel.url) for _ in range(5)]

    assert len(set(event_ids)) == 5


async def test_unknown_channel_404_json(shared_relay):
    """A webhook to an unknown channel gets 404 as JSON, even from a sender that requests HTML."""
    url = f"{shared_relay.url}/h/{secrets.token_urlsafe(16)}"
    headers = [("User-Agent", BROWSER_USER_AGENT), ("Accept", "text/html"), ("Content-Type", "application/json")]

    response = await send_request(url, "POST", headers, b"{}", tail="/github")

    assert response.status == 404
    assert response.content_type.startswith("application/json"), response.describe()
    assert response.json() == {
        "error": "channel_not_found",
        "message": "no channel at this URL; create one with 'hookrelay channel create'",
    }


async def test_body_over_max_body_413(runner, target, tmp_path):
    """A body one byte over --max-body gets 413 as JSON and is never forwarded, but a body at the limit is."""
    relay = await runner.start_relay(tmp_path / "data", "--max-body", str(MAX_BODY))
    channel = await runner.create_channel(relay.url)
    runner.start_listener(relay.url, channel, target.authority)
    headers = [("Content-Type", "application/octet-stream")]

    over = await send_request(channel.url, "POST", headers, b"o" * (MAX_BODY + 1))
    over_chunked = await send_request(channel.url, "POST", headers, b"c" * (MAX_BODY + 1), chunked=True)
    at_limit = await send_request(channel.url, "POST", headers, b"a" * MAX_BODY)

    assert over.status == 413, over.describe()
    assert over.content_type.startswith("application/json"), over.describe()
    assert over.json() == {
        "error": "body_too_large",
        "message": f"the body exceeds the relay's limit of {MAX_BODY} bytes",
    }
    assert over_chunked.status == 413, over_chunked.describe()
    event_id = accepted_event_id(at_limit)
    # Delivery keeps order, so an oversized event stored by mistake would arrive first.
    await target.wait_for_event(event_id, DELIVERY_TIMEOUT)
    assert [request.body for request in target.requests] == [b"a" * MAX_BODY]
    metrics = await send_request(f"{relay.url}/api/metrics", "GET")
    assert metrics.json()["counts"]["body_too_large"] == 2


async def test_default_max_body_25_mib(runner, shared_relay):
    """Without --max-body the relay accepts a 25 MiB body and responds with 413 to one byte more."""
    channel = await runner.create_channel(shared_relay.url)
    headers = [("Content-Type", "application/octet-stream")]

    at_limit = await send_request(channel.url, "POST", headers, bytes(DEFAULT_MAX_BODY))
    over = await send_request(channel.url, "POST", headers, bytes(DEFAULT_MAX_BODY + 1))

    assert at_limit.status == 202, at_limit.describe()
    assert over.status == 413, over.describe()
    assert over.content_type.startswith("application/json"), over.describe()


async def test_absolute_form_target_is_accepted(runner, shared_relay, target):
    """A request line in absolute form (http://host/h/...) is stored with the same tail as the origin form."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)
    authority = f"127.0.0.1:{shared_relay.port}"
    request = build_request("POST", f"http://{authority}/h/{channel.id}/hooks%2Fa?x=1&y", authority, [], b'{"absolute":1}', False)

    reader, writer = await asyncio.open_connection("127.0.0.1", shared_relay.port)
    try:
        writer.write(request)
        response = await read_response(reader, "POST")
    finally:
        writer.close()
    delivered = await target.wait_for_event(accepted_event_id(response), DELIVERY_TIMEOUT)

    assert response.status == 202, response.describe()
    assert delivered.raw_target == "/hooks%2Fa?x=1&y"
    assert delivered.body == b'{"absolute":1}'


async def test_ingest_prefix_without_channel_404_json(shared_relay):
    """POST /h/ and /h name no channel and get the ingest's JSON 404, not a page."""
    for path in ("/h/", "/h"):
        response = await send_request(shared_relay.url + path, "POST", [("Content-Type", "application/json")], b"{}")

        assert response.status == 404, path
        assert response.content_type.startswith("application/json"), response.describe()
        assert response.json() == {"error": "channel_not_found", "message": "the URL names no channel; post to /h/<channel id>"}
