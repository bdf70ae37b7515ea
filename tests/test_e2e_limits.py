"""Request limits on a real relay process on loopback: 431, 414, 429 with Retry-After, slow clients, websocket size.

Tests that need a second source address bind 127.0.0.2, which Linux
routes over loopback like 127.0.0.1; the relay still listens on 127.0.0.1.
"""

import asyncio
import json
import re
import socket
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.http import RawResponse, build_request, read_response, send_request
from tests.support.timing import MS

OTHER_ADDRESS = "127.0.0.2"
SLOW_CLIENTS = 5
HEADER_TIMEOUT_S = 1.0


def other_address_usable() -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((OTHER_ADDRESS, 0))
        except OSError:
            return False
    return True


async def send_from(address: str, url: str, method: str = "POST", headers=None, body: bytes = b"{}") -> RawResponse:
    """Send one request from the source `address` over a new connection."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(address, 0))
    try:
        writer.write(build_request(method, path, f"{host}:{port}", headers or [], body, False))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), 5_000 * MS)
    finally:
        writer.close()


def fill_headers(count: int, value: str = "x") -> list[tuple[str, str]]:
    return [(f"X-Fill-{n}", value) for n in range(count)]


async def test_header_limits_431(runner, tmp_path):
    """Too many header fields, or too many header bytes, get 431 JSON, near and far beyond the limit."""
    relay = await runner.start_relay(tmp_path / "data", "--max-headers", "20", "--max-header-bytes", "2KiB")
    channel = await runner.create_channel(relay.url)

    # Host and Content-Length count too: 18 filled fields make 20.
    at_limit = await send_request(channel.url, "POST", fill_headers(18), b"{}")
    one_over = await send_request(channel.url, "POST", fill_headers(19), b"{}")
    far_over = await send_request(channel.url, "POST", fill_headers(500), b"{}")
    big_field = await send_request(channel.url, "POST", [("X-Big", "v" * 3000)], b"{}")
    huge_field = await send_request(channel.url, "POST", [("X-Huge", "v" * 100_000)], b"{}")
    many_bytes = await send_request(channel.url, "POST", fill_headers(10, "v" * 300), b"{}")

    assert at_limit.status == 202, at_limit.describe()
    for response in (one_over, far_over, big_field, huge_field, many_bytes):
        assert response.status == 431, response.describe()
        assert response.content_type.startswith("application/json")
        assert response.json()["error"] == "headers_too_large"
    assert "21 header fields; the limit is 20" in one_over.json()["message"]


async def test_long_request_line_414(runner, shared_relay):
    """A request line over 8190 bytes gets 414 JSON instead of aiohttp's plain-text 400."""
    channel = await runner.create_channel(shared_relay.url)

    response = await send_request(channel.url, "POST", [], b"{}", tail="/" + "a" * 9000)

    assert response.status == 414, response.describe()
    assert response.json()["error"] == "uri_too_long"


async def test_garbage_request_400_json(shared_relay):
    """A request that is not HTTP gets a JSON 400, never a 5xx or HTML."""
    host, port = shared_relay.url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(read_response(reader, "POST"), 5_000 * MS)
    finally:
        writer.close()

    assert response.status == 400, response.describe()
    assert response.json()["error"] == "bad_request"


async def test_channel_rate_429(runner, tmp_path):
    """A channel over its bucket gets 429 with Retry-After; other channels are unaffected; tokens come back."""
    relay = await runner.start_relay(tmp_path / "data", "--channel-rate", "2", "--channel-burst", "3")
    busy = await runner.create_channel(relay.url)
    quiet = await runner.create_channel(relay.url)

    accepted = [await send_request(busy.url, "POST", [], b"{}") for _ in range(3)]
    refused = await send_request(busy.url, "POST", [], b"{}")
    other = await send_request(quiet.url, "POST", [], b"{}")
    await asyncio.sleep(float(refused.header("Retry-After")) + 100 * MS)
    later = await send_request(busy.url, "POST", [], b"{}")
    info = await send_request(f"{relay.url}/api/channels/{busy.id}", "GET", [("Authorization", f"Bearer {busy.token}")])

    assert [response.status for response in accepted] == [202, 202, 202]
    assert refused.status == 429, refused.describe()
    assert refused.header("Retry-After") == "1"
    assert refused.json()["error"] == "rate_limited"
    assert other.status == 202
    assert later.status == 202, later.describe()
    assert info.json()["counts"] == {"rate_limited_channel": 1}


@pytest.mark.skipif(not other_address_usable(), reason=f"{OTHER_ADDRESS} cannot be bound on this machine")
async def test_address_rate_429(runner, tmp_path):
    """One address over its bucket gets 429 with Retry-After while another address is still served."""
    relay = await runner.start_relay(tmp_path / "data", "--address-rate", "0.5", "--address-burst", "4")
    channel = await runner.create_channel(relay.url)

    statuses = [(await send_request(channel.url, "POST", [], b"{}")).status for _ in range(4)]
    refused = await send_request(channel.url, "POST", [], b"{}")
    elsewhere = await send_from(OTHER_ADDRESS, channel.url)

    # The channel creation took the first token.
    assert statuses == [202, 202, 202, 429]
    assert refused.status == 429
    assert int(refused.header("Retry-After")) in (1, 2)
    assert "from your address" in refused.json()["message"]
    assert elsewhere.status == 202, elsewhere.describe()


async def open_slow_client(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /h/ch_slow HTTP/1.1\r\nHost: relay\r\n")
    await writer.drain()
    return reader, writer


async def trickle_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float) -> float | None:
    """Send one header byte every 200 ms until the relay closes the connection; return when it did, or None."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            writer.write(b"X")
            await writer.drain()
            if await asyncio.wait_for(reader.read(1024), 200 * MS) == b"":
                return time.monotonic() - started
        except asyncio.TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    writer.close()
    return None


@pytest.mark.skipif(not other_address_usable(), reason=f"{OTHER_ADDRESS} cannot be bound on this machine")
async def test_slowloris_bounded(runner, tmp_path):
    """Slow header senders are capped per address and cut off after the header timeout, while others are served."""
    relay = await runner.start_relay(
        tmp_path / "data", "--header-timeout", f"{HEADER_TIMEOUT_S:g}s", "--max-connections-per-address", str(SLOW_CLIENTS)
    )
    channel = await runner.create_channel(relay.url)
    host, port = "127.0.0.1", relay.port
    deadline = time.monotonic() + 10_000 * MS

    slow = [await open_slow_client(host, port) for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(100 * MS)
    beyond_cap = await send_request(channel.url, "POST", [], b"{}")
    served_elsewhere = await send_from(OTHER_ADDRESS, channel.url)
    closed_after = await asyncio.gather(*(trickle_until_closed(reader, writer, deadline) for reader, writer in slow))
    after_cut = await send_request(channel.url, "POST", [], b"{}")

    assert beyond_cap.status == 429, beyond_cap.describe()
    assert beyond_cap.header("Retry-After") == "5"
    assert beyond_cap.json()["error"] == "too_many_connections"
    assert served_elsewhere.status == 202, served_elsewhere.describe()
    assert all(seconds is not None for seconds in closed_after), closed_after
    assert max(closed_after) < HEADER_TIMEOUT_S + 2.0, closed_after
    assert after_cut.status == 202, after_cut.describe()
    assert relay.process.returncode is None


async def test_websocket_message_over_limit_closed(runner, tmp_path):
    """A listener message over the relay's websocket limit closes that connection with 1009; the relay carries on."""
    relay = await runner.start_relay(tmp_path / "data", "--max-body", "1KiB")
    channel = await runner.create_channel(relay.url)
    url = relay.url.replace("http://", "ws://") + f"/api/channels/{channel.id}/listen"

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {channel.token}"}, proxy=None) as ws:
        await ws.recv()
        await ws.send("x" * (2 * 1024 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 5_000 * MS)

    health = await send_request(f"{relay.url}/healthz", "GET")
    assert info.value.rcvd.code == 1009
    assert health.status == 200


async def test_metrics_need_admin_token(runner, tmp_path):
    """/api/metrics answers only with the admin token; a wrong and a missing token get the same 401."""
    relay = await runner.start_relay(tmp_path / "data", "--admin-token", "admin-test-token")
    url = f"{relay.url}/api/metrics"

    missing = await send_request(url, "GET")
    wrong = await send_request(url, "GET", [("Authorization", "Bearer not-the-admin-token")])
    right = await send_request(url, "GET", [("Authorization", "Bearer admin-test-token")])

    assert missing.status == wrong.status == 401
    assert (missing.body, _stable_headers(missing)) == (wrong.body, _stable_headers(wrong))
    assert right.status == 200
    assert set(right.json()) == {"counts", "connections", "listener_sessions", "rate_buckets"}
    assert right.json()["connections"] >= 1
    assert "admin-test-token" not in json.dumps(right.json())


def _stable_headers(response: RawResponse) -> list[tuple[str, str]]:
    return sorted((name.lower(), value) for name, value in response.headers if name.lower() != "date")


async def test_unknown_expectation_417(runner, shared_relay):
    """An Expect value other than 100-continue gets 417 JSON, even when it is not UTF-8; 100-continue still works."""
    channel = await runner.create_channel(shared_relay.url)

    odd = await send_request(channel.url, "POST", [("Expect", b"\x80")], b"")
    unknown = await send_request(channel.url, "POST", [("Expect", "gzip")], b"")
    proceed = await send_request(channel.url, "POST", [("Expect", "100-continue")], b"{}")

    assert odd.status == 417, odd.describe()
    assert odd.json()["error"] == "expectation_failed"
    assert unknown.status == 417, unknown.describe()
    assert proceed.status == 100, proceed.describe()


async def test_rejection_comes_before_continue(runner, tmp_path):
    """A sender that expects 100-continue gets a rejection the relay can give without the body at once, with no 100 first."""
    relay = await runner.start_relay(tmp_path / "data", "--max-body", "1024")
    channel = await runner.create_channel(relay.url)
    expect = [("Expect", "100-continue"), ("Content-Type", "application/json")]

    unknown = await send_request(f"{relay.url}/h/ch_missing", "POST", expect, b"{}")
    too_large = await send_request(channel.url, "POST", expect, b"x" * 2048)
    accepted = await send_request(channel.url, "POST", expect, b"{}")

    assert unknown.status == 404, unknown.describe()
    assert too_large.status == 413, too_large.describe()
    assert accepted.status == 100, accepted.describe()


async def test_sender_gone_mid_body_logged(runner, tmp_path):
    """A sender that closes the connection partway through its body costs one log line, no traceback, and stores nothing."""
    relay = await runner.start_relay(tmp_path / "data")
    channel = await runner.create_channel(relay.url)
    path = channel.url.split(str(relay.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()

    await relay.process.wait_for_stderr(re.compile(r"ingest abandoned channel=\S+ remote=127\.0\.0\.1"), 10_000 * MS)
    history = await runner.run(["events", "list", "--relay", relay.url, "--channel", channel.id, "--token", channel.token, "--json"])

    assert "Traceback" not in relay.process.stderr_tail(200)
    assert json.loads(history[1]) == []


async def test_slow_body_gets_408(runner, tmp_path):
    """A sender that stops partway through its body gets 408 after the body timeout, and nothing is stored."""
    relay = await runner.start_relay(tmp_path / "data", "--body-timeout", "1s")
    channel = await runner.create_channel(relay.url)
    path = channel.url.split(str(relay.port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n".encode() + b"x" * 10)
    await writer.drain()

    answer = await asyncio.wait_for(read_response(reader, "POST"), 10_000 * MS)
    writer.close()
    history = await runner.run(["events", "list", "--relay", relay.url, "--channel", channel.id, "--token", channel.token, "--json"])

    assert answer.status == 408, answer.describe()
    assert answer.json()["error"] == "body_timeout"
    assert history[0] == 0, history[2]
    assert json.loads(history[1]) == []
