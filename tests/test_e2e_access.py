"""Bad tokens learn nothing: every channel endpoint answers a wrong token, another channel's token,
a missing token and an unknown channel with byte-identical 401 answers.

The checks compare answers and count the work done, not time: an
unknown channel's token is still hashed and compared against a stand-in
hash, so the two paths do the same work.
"""

import base64
import secrets

import pytest

from relay_server import ids
from relay_server.store import SQLiteStore
from tests.support.http import RawResponse, send_request
from tests.support.inprocess import add_channel, serving

ENDPOINTS = [
    ("GET", "/api/channels/{channel}"),
    ("PATCH", "/api/channels/{channel}"),
    ("POST", "/api/channels/{channel}/rotate-token"),
    ("GET", "/api/channels/{channel}/events"),
    ("GET", "/api/channels/{channel}/events/evt_0000000000000000000000000000"),
    ("POST", "/api/channels/{channel}/events/evt_0000000000000000000000000000/replay"),
    ("DELETE", "/api/channels/{channel}/events/evt_0000000000000000000000000000"),
    ("GET", "/api/channels/{channel}/listen"),
]
WEBSOCKET_HEADERS = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
    ("Sec-WebSocket-Version", "13"),
]


def answer(response: RawResponse) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Return status, body and every header but Date, the parts an attacker could compare."""
    headers = sorted((name.lower(), value) for name, value in response.headers if name.lower() != "date")
    return response.status, response.body, headers


async def call(relay_url: str, method: str, path: str, channel_id: str, token: str | None) -> RawResponse:
    headers = list(WEBSOCKET_HEADERS) if path.endswith("/listen") else [("Content-Type", "application/json")]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    body = b'{"dedupe_window": 0}' if method == "PATCH" else b""
    return await send_request(relay_url + path.format(channel=channel_id), method, headers, body)


@pytest.mark.parametrize("method, path", ENDPOINTS)
async def test_bad_tokens_get_identical_401(method, path, runner, shared_relay):
    """Wrong, borrowed and missing tokens and an unknown channel get the same 401, byte for byte."""
    channel = await runner.create_channel(shared_relay.url)
    other = await runner.create_channel(shared_relay.url)
    unknown = "ch_" + secrets.token_hex(13)

    wrong = await call(shared_relay.url, method, path, channel.id, secrets.token_urlsafe(32))
    borrowed = await call(shared_relay.url, method, path, channel.id, other.token)
    missing = await call(shared_relay.url, method, path, channel.id, None)
    no_channel = await call(shared_relay.url, method, path, unknown, secrets.token_urlsafe(32))
    no_channel_own_token = await call(shared_relay.url, method, path, unknown, channel.token)

    assert wrong.status == 401, wrong.describe()
    assert answer(borrowed) == answer(wrong)
    assert answer(missing) == answer(wrong)
    assert answer(no_channel) == answer(wrong)
    assert answer(no_channel_own_token) == answer(wrong)
    assert wrong.json()["error"] == "unauthorized"


async def test_admin_creation_identical_401(runner, tmp_path):
    """On a guarded relay, channel creation with a wrong or missing admin token gets one and the same 401."""
    relay = await runner.start_relay(tmp_path / "data", "--admin-token", "admin-test-token")
    url = f"{relay.url}/api/channels"

    missing = await send_request(url, "POST")
    wrong = await send_request(url, "POST", [("Authorization", "Bearer admin-test-tokeN")])
    right = await send_request(url, "POST", [("Authorization", "Bearer admin-test-token")])

    assert missing.status == 401
    assert answer(missing) == answer(wrong)
    assert right.status == 201


async def test_unknown_channel_costs_same_work(tmp_path, monkeypatch):
    """An unknown channel and a known one with a wrong token each hash the token and compare one digest."""
    compared = []
    real = ids.hmac.compare_digest

    def spy(first, second):
        compared.append((len(first), len(second)))
        return real(first, second)

    store = SQLiteStore(tmp_path)
    async with serving(store, tmp_path) as (url, _):
        await add_channel(store, "ch_known")
        monkeypatch.setattr(ids.hmac, "compare_digest", spy)
        known = await send_request(f"{url}/api/channels/ch_known", "GET", [("Authorization", "Bearer wrong")])
        known_work = list(compared)
        compared.clear()
        unknown = await send_request(f"{url}/api/channels/ch_unknown", "GET", [("Authorization", "Bearer wrong")])
        unknown_work = list(compared)

    assert known.status == unknown.status == 401
    assert known_work == unknown_work == [(32, 32)]
