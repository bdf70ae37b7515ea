"""The forwarder against a real target on loopback: exact bytes, retries, no redirects."""

import asyncio
import time

import pytest

from relay_client.config import ListenerConfig, parse_target
from relay_client.forwarder import Forwarder, forward_headers
from relay_client.retry import Backoff, RetryPolicy
from relay_server.protocol import Event


class RawTarget:
    """A loopback HTTP server that records the request head as bytes.

    ``answers`` is a list of raw status lines with headers, used in turn; the
    last one repeats.
    """

    def __init__(self, answers=(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",)):
        self.answers = list(answers)
        self.requests = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
                length = next((int(v) for k, v in headers if k.lower() == b"content-length"), 0)
                body = await reader.readexactly(length)
                self.requests.append((lines[0], headers, body))
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def event(**changes):
    fields = dict(
        id="evt_0001",
        channel="ch_a",
        seq=1,
        method="POST",
        target=b"/github/x%2Fy?url=git@h:g/r.git&%zz",
        headers=(
            (b"Host", b"relay.example.test"),
            (b"Content-Type", b"application/json"),
            (b"x-lower-Case", b"kept"),
            (b"X-Rep", b"1"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"dropped"),
            (b"X-Rep", b"2"),
            (b"Transfer-Encoding", b"chunked"),
        ),
        body=b'{"a":  1}\n',
        received_at=time.time(),
        remote="127.0.0.9",
    )
    fields.update(changes)
    return Event(**fields)


def config(port, **changes):
    fields = dict(relay="http://127.0.0.1:1", channel="ch_a", token="t", target=parse_target(f"127.0.0.1:{port}"),
                  retry=RetryPolicy(max_attempts=3, backoff=Backoff(base=0.01, cap=0.02)), timeout=5.0)
    fields.update(changes)
    return ListenerConfig(**fields)


async def test_request_bytes_are_exact():
    """Method, raw target, header order, spelling and body reach the target unchanged."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event())
        request_line, headers, body = target.requests[0]
    assert result.outcome == "delivered"
    assert request_line == b"POST /github/x%2Fy?url=git@h:g/r.git&%zz HTTP/1.1"
    assert headers[0] == (b"Host", f"127.0.0.1:{target.port}".encode())
    assert headers[1:5] == [(b"Content-Type", b"application/json"), (b"x-lower-Case", b"kept"), (b"X-Rep", b"1"), (b"X-Rep", b"2")]
    assert body == b'{"a":  1}\n'


async def test_client_adds_no_headers_of_its_own():
    """No User-Agent, Accept, Accept-Encoding or Content-Type the sender did not send."""
    bare = event(headers=((b"X-Only", b"1"),), body=b"\x00\x01")
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(bare)
        names = [name.lower() for name, _ in target.requests[0][1]]
    for absent in (b"user-agent", b"accept", b"accept-encoding", b"content-type"):
        assert absent not in names


async def test_hop_by_hop_headers_are_replaced():
    """Connection, the headers it names, Transfer-Encoding and the sender's Host are not forwarded."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(event())
        names = [name.lower() for name, _ in target.requests[0][1]]
    assert b"x-hop" not in names
    assert b"transfer-encoding" not in names
    assert names.count(b"host") == 1


async def test_forwarded_headers_and_event_id_are_added():
    """X-Forwarded-For/-Host/-Proto and the event id header are present."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(event())
        headers = dict(target.requests[0][1])
    assert headers[b"X-Forwarded-For"] == b"127.0.0.9"
    assert headers[b"X-Forwarded-Host"] == b"relay.example.test"
    assert headers[b"X-Forwarded-Proto"] == b"http"
    assert headers[b"X-Hookrelay-Event-Id"] == b"evt_0001"


def test_existing_forwarded_for_is_appended_to():
    """A sender's X-Forwarded-For chain is kept and the sender address appended."""
    headers = forward_headers(event(headers=((b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Proto", b"https"))), "t:1")
    assert (b"X-Forwarded-For", b"10.0.0.1, 127.0.0.9") in headers
    assert [v for k, v in headers if k.lower() == b"x-forwarded-proto"] == [b"https"]


async def test_get_without_body_gets_no_content_length():
    """A GET with no body is not given a Content-Length or Content-Type."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(event(method="GET", headers=((b"Accept", b"*/*"),), body=b"", target=b"/verify?hub.challenge=1"))
        request_line, headers, _ = target.requests[0]
    assert request_line == b"GET /verify?hub.challenge=1 HTTP/1.1"
    assert b"content-length" not in [name.lower() for name, _ in headers]


@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "PATCH"])
async def test_bodiless_request_gains_no_content_length(method):
    """A request of any method sent without body or Content-Length reaches the target the same way."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event(method=method, headers=((b"X-Kind", b"bodiless"),), body=b"", target=b"/items/7"))
        request_line, headers, _ = target.requests[0]
    assert result.status == 200
    assert request_line == f"{method} /items/7 HTTP/1.1".encode()
    assert [name.lower() for name, _ in headers if name.lower() in (b"content-length", b"transfer-encoding")] == []


async def test_empty_body_keeps_its_content_length():
    """A sender's own Content-Length: 0 on an empty POST arrives once, as sent."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(event(method="POST", headers=((b"Content-Length", b"0"),), body=b""))
        _, headers, _ = target.requests[0]
    assert [value for name, value in headers if name.lower() == b"content-length"] == [b"0"]


@pytest.mark.parametrize("body", [b"", b'{"chunked": true}'])
async def test_chunked_body_arrives_with_content_length(body):
    """A chunked request, empty or not, reaches the target with a Content-Length and no Transfer-Encoding."""
    chunked = ((b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked"))
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        await forwarder.deliver(event(method="POST", headers=chunked, body=body))
        _, headers, received = target.requests[0]
    lowered = [(name.lower(), value) for name, value in headers]
    assert (b"content-length", str(len(body)).encode()) in lowered
    assert b"transfer-encoding" not in [name for name, _ in lowered]
    assert received == body


async def test_base_path_is_joined_with_tail():
    """A target with a path receives <target path><tail>."""
    async with RawTarget() as target:
        cfg = config(target.port, target=parse_target(f"http://127.0.0.1:{target.port}/hooks/"))
        async with Forwarder(cfg) as forwarder:
            await forwarder.deliver(event(target=b"/gh?x=1"))
    assert target.requests[0][0] == b"POST /hooks/gh?x=1 HTTP/1.1"


async def test_5xx_is_retried_then_delivered():
    """A 503 followed by a 200 gives one delivered result after two attempts."""
    answers = [b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    async with RawTarget(answers) as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event())
    assert (result.outcome, result.status, result.attempts) == ("delivered", 200, 2)
    assert len(target.requests) == 2


async def test_4xx_is_final():
    """A 400 is the target's answer: delivered, not retried."""
    async with RawTarget([b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n"]) as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event())
    assert (result.outcome, result.status, result.attempts) == ("delivered", 400, 1)


async def test_redirect_is_not_followed():
    """A 302 to another host ends the delivery; nothing else is contacted."""
    redirect = b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:9/\r\nContent-Length: 0\r\n\r\n"
    async with RawTarget([redirect]) as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event())
    assert (result.status, len(target.requests)) == (302, 1)


async def test_refused_connection_fails_after_max_attempts():
    """With nothing listening, every attempt fails and the result says why."""
    async with RawTarget() as target:
        port = target.port
    reported = []
    async with Forwarder(config(port), on_attempt=reported.append) as forwarder:
        result = await forwarder.deliver(event())
    assert (result.outcome, result.status, result.attempts) == ("failed", None, 3)
    assert result.error.startswith("connection failed")
    assert [a.final for a in reported] == [False, False, True]


async def test_retry_after_is_honoured():
    """A 429 with Retry-After: 0 retries without the computed backoff."""
    answers = [b"HTTP/1.1 429 Slow\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 204 No\r\n\r\n"]
    delays = []

    async def record_sleep(delay):
        delays.append(delay)

    slow = RetryPolicy(max_attempts=3, backoff=Backoff(base=50, cap=50))
    async with RawTarget(answers) as target:
        cfg = config(target.port, retry=slow)
        async with Forwarder(cfg, sleep=record_sleep) as forwarder:
            result = await forwarder.deliver(event())
    assert result.status == 204
    assert delays == [0.0]


async def test_header_bytes_that_are_not_utf8_are_kept():
    """Obs-text header values (Latin-1, 0x80-0xFF) reach the target byte for byte."""
    odd = event(headers=((b"X-Name", b"caf\xe9 \x80\xff"), (b"x-Spelling", b"a"), (b"X-Rep", b"1"), (b"X-Rep", b"2")), body=b"\x00ab")
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(odd)
        request_line, headers, body = target.requests[0]
    assert result.status == 200
    assert request_line == b"POST /github/x%2Fy?url=git@h:g/r.git&%zz HTTP/1.1"
    assert headers[1:5] == [(b"X-Name", b"caf\xe9 \x80\xff"), (b"x-Spelling", b"a"), (b"X-Rep", b"1"), (b"X-Rep", b"2")]
    assert (b"Content-Length", b"3") in headers
    assert body == b"\x00ab"


async def test_repeats_in_other_spellings_are_kept():
    """A header name repeated as X-Test, x-test and X-TEST arrives with every value, in order and spelling."""
    spelled = ((b"X-Test", b"one"), (b"Content-Type", b"application/json"), (b"x-test", b"two"), (b"X-TEST", b"three"))
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event(headers=spelled))
        _, headers, _ = target.requests[0]
    assert result.status == 200
    assert headers[1:5] == list(spelled)


async def test_raw_path_retries_on_5xx():
    """Events sent through the bytes-level writer follow the same retry policy."""
    answers = [b"HTTP/1.1 502 Bad\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    odd = event(headers=((b"X-Name", b"\xe9"),))
    async with RawTarget(answers) as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(odd)
    assert (result.outcome, result.status, result.attempts) == ("delivered", 200, 2)


async def test_result_duration_excludes_retry_waits():
    """After retries, the result's duration is the last attempt's, not the time since the first."""
    answers = [b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    reported = []
    async with RawTarget(answers) as target, Forwarder(config(target.port), on_attempt=reported.append) as forwarder:
        result = await forwarder.deliver(event())
    assert result.attempts == 2
    assert result.duration_ms == reported[-1].duration_ms


async def test_target_cookies_are_not_sent_back():
    """A Set-Cookie from the target never turns into a Cookie header on later deliveries."""
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 0\r\n\r\n"
    async with RawTarget([answer]) as target, Forwarder(config(target.port, target=parse_target(f"localhost:{target.port}"))) as forwarder:
        first = await forwarder.deliver(event(id="evt_cookie_1"))
        second = await forwarder.deliver(event(id="evt_cookie_2"))
    assert (first.status, second.status) == (200, 200)
    assert [name for name, _ in target.requests[1][1] if name.lower() == b"cookie"] == []


async def test_redelivery_continues_attempt_count():
    """Attempts of an earlier delivery count against --max-attempts, and numbering goes on after them."""
    busy = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
    async with RawTarget([busy]) as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event(delivery_count=2, attempts=2))
    assert (result.outcome, result.status, result.attempts) == ("failed", 503, 3)
    assert len(target.requests) == 1
    assert (b"X-Hookrelay-Attempt", b"3") in target.requests[0][1]


async def test_spent_budget_still_gets_one_attempt():
    """A listener with a smaller --max-attempts than the attempts already made still tries once."""
    async with RawTarget() as target, Forwarder(config(target.port)) as forwarder:
        result = await forwarder.deliver(event(delivery_count=3, attempts=7))
    assert (result.outcome, result.status, result.attempts) == ("delivered", 200, 8)
    assert len(target.requests) == 1


def test_backoff_survives_huge_attempt_numbers():
    """The delay stays at the cap instead of overflowing a float."""
    backoff = Backoff(base=0.5, cap=30.0)
    assert backoff.delay(5000, rng=lambda: 1.0) == 30.0
