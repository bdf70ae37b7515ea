"""The listener's HTTP/1.1 client against scripted targets on loopback: reuse, framing, failures."""

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess

import pytest

from relay_client import target_client
from relay_client.config import parse_target
from relay_client.target_client import RawRequestError, TargetClient, encode_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class ScriptedTarget:
    """A loopback server that responds to each request with what ``answer`` returns.

    ``answer(connection, number, request)`` gets the connection's index, the
    request's index on that connection and the request's bytes, and returns
    the bytes to write, or None to close the connection without a response.
    """

    def __init__(self, answer=lambda connection, number, request: OK, *, close_after=False):
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = []
        self.closed = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info):
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        connection = self.connections
        self.connections += 1
        number = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
                )
                request = head + await reader.readexactly(length)
                self.requests.append((connection, request))
                answer = self.answer(connection, number, request)
                number += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def serving(handler, host="127.0.0.1", **options):
    """Run ``handler`` as a loopback server for the block and yield its port."""
    server = await asyncio.start_server(handler, host, 0, **options)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def client_for(port, max_idle=4):
    return TargetClient(parse_target(f"127.0.0.1:{port}"), max_idle=max_idle)


async def send(client, method="POST", body=b"{}", max_body=1 << 20, timeout=5.0):
    return await client.exchange(method, b"/hook", [(b"Host", b"t")], body, timeout=timeout, max_body=max_body)


async def test_connection_is_kept_alive_between_requests():
    async with ScriptedTarget() as target:
        client = client_for(target.port)
        first = await send(client)
        second = await send(client)
        await client.close()
    assert (first.status, first.body, second.body) == (200, b"ok", b"ok")
    assert target.connections == 1


async def test_stale_connection_request_sent_again():
    """The target closes an idle connection as the next request arrives, so it goes out again on a new one."""
    async with ScriptedTarget(lambda connection, number, request: None if (connection, number) == (0, 1) else OK) as target:
        client = client_for(target.port)
        await send(client)
        answer = await send(client)
        await client.close()
    assert answer.status == 200
    assert [connection for connection, _ in target.requests] == [0, 0, 1]


async def test_new_connection_without_response_fails():
    async with ScriptedTarget(lambda connection, number, request: None) as target:
        client = client_for(target.port)
        with pytest.raises(RawRequestError, match="without a response"):
            await send(client)
    assert len(target.requests) == 1


async def test_connection_closed_by_target_not_reused():
    async with ScriptedTarget(close_after=True) as target:
        client = client_for(target.port)
        await send(client)
        await target.closed.wait()
        await asyncio.sleep(0.05)
        answer = await send(client)
    assert (answer.status, target.connections, len(target.requests)) == (200, 2, 2)


async def test_informational_responses_skipped():
    continue_then_ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + OK
    async with ScriptedTarget(lambda *_: continue_then_ok) as target:
        client = client_for(target.port)
        answer = await send(client)
        again = await send(client)
    assert (answer.status, answer.body, again.status) == (200, b"ok", 200)
    assert target.connections == 1


async def test_head_response_has_no_body():
    head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    async with ScriptedTarget(lambda *_: head_answer) as target:
        client = client_for(target.port)
        answer = await send(client, method="HEAD", body=b"")
        await send(client, method="HEAD", body=b"")
    assert (answer.status, answer.body) == (200, b"")
    assert target.connections == 2


async def test_chunked_body_is_read_whole():
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    async with ScriptedTarget(lambda *_: chunked) as target:
        client = client_for(target.port)
        first = await send(client)
        second = await send(client)
    assert (first.status, first.body, second.body) == (201, b"abcde", b"abcde")
    assert target.connections == 1


async def test_body_without_length_read_to_close():
    async with ScriptedTarget(lambda *_: b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close_after=True) as target:
        client = client_for(target.port)
        answer = await send(client)
    assert (answer.status, answer.body) == (200, b"until the end")


async def test_body_cut_at_limit():
    long_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    async with ScriptedTarget(lambda *_: long_answer) as target:
        client = client_for(target.port)
        answer = await send(client, max_body=10)
        await send(client, max_body=10)
    assert answer.body == b"x" * 10
    assert target.connections == 2


async def test_connection_close_not_reused():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with ScriptedTarget(lambda *_: closing) as target:
        client = client_for(target.port)
        await send(client)
        await send(client)
    assert target.connections == 2


async def test_timeout_closes_the_connection():
    async with ScriptedTarget(lambda *_: b"") as target:
        client = client_for(target.port)
        with pytest.raises(TimeoutError):
            await send(client, timeout=0.2)
        await asyncio.wait_for(target.closed.wait(), 5)
        assert client._idle == []


async def test_timeout_ends_only_the_slow_request():
    """Requests in progress together each keep their own deadline: the slow one times out, not before its timeout."""
    async with ScriptedTarget(lambda connection, number, request: b"" if b"slow" in request else OK) as target:
        client = client_for(target.port)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def slow():
            with pytest.raises(TimeoutError):
                await client.exchange("POST", b"/hook", [(b"Host", b"t")], b"slow", timeout=0.3, max_body=1 << 20)
            return loop.time() - started

        slow_task = asyncio.create_task(slow())
        answers = [await send(client, timeout=5.0) for _ in range(3)]
        elapsed = await slow_task
        await client.close()
    assert [answer.body for answer in answers] == [b"ok"] * 3
    assert elapsed >= 0.3


async def test_deadline_spares_idle_connection():
    """A request that got its response in time leaves its connection reusable after its deadline has passed."""
    async with ScriptedTarget() as target:
        client = client_for(target.port)
        await send(client, timeout=0.1)
        await asyncio.sleep(0.1 + 3 * target_client.DEADLINE_CHECK_SECONDS)
        answer = await send(client, timeout=0.1)
        await client.close()
    assert answer.body == b"ok"
    assert target.connections == 1


async def test_expired_idle_connection_not_reused(monkeypatch):
    monkeypatch.setattr(target_client, "IDLE_SECONDS", 0.0)
    async with ScriptedTarget() as target:
        client = client_for(target.port)
        await send(client)
        await send(client)
    assert target.connections == 2


async def test_idle_connections_capped():
    async with ScriptedTarget() as target:
        client = client_for(target.port, max_idle=1)
        await asyncio.gather(send(client), send(client), send(client))
        assert len(client._idle) == 1
        await asyncio.gather(send(client), send(client))
        await client.close()
    assert target.connections == 4


async def test_large_body_reaches_slow_reader():
    """An 8 MiB body fills the socket buffers, and the request waits for the reader instead of failing."""
    body = bytes(range(256)) * (8 * 4096)
    received = []

    async def slow(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length")).split(b":")[1])
        while length:
            chunk = await reader.read(min(length, 65536))
            received.append(chunk)
            length -= len(chunk)
            await asyncio.sleep(0.001)
        writer.write(OK)
        await writer.drain()
        writer.close()

    async with serving(slow) as port:
        answer = await send(client_for(port), body=body, timeout=30)
    assert answer.status == 200
    assert b"".join(received) == body


async def test_trailers_are_not_response_headers():
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nRetry-After: 5\r\n\r\n"
    async with ScriptedTarget(lambda *_: chunked) as target:
        client = client_for(target.port)
        answer = await send(client)
    assert answer.body == b"ok"
    assert answer.headers == [(b"Transfer-Encoding", b"chunked")]


async def test_reset_during_unframed_body_fails():
    """A body without a length that ends in a reset, not a close, is cut short."""

    async def reset(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with serving(reset) as port:
        with pytest.raises(RawRequestError, match="reset the connection"):
            await send(client_for(port), body=b"")


async def test_early_response_to_unread_body_returns_at_once():
    """A target that responds 413 after the head and never reads the body ends the request at once."""
    release = asyncio.Event()

    async def respond_early(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
        await writer.drain()
        # The body is never read, so the client's writes stall once the socket buffers fill.
        await asyncio.wait_for(release.wait(), 30)
        writer.close()

    async with serving(respond_early, limit=1024) as port:
        client = client_for(port)
        try:
            answer = await send(client, body=b"x" * (32 << 20), timeout=5)
        finally:
            release.set()
    assert (answer.status, answer.body) == (413, b"too large")
    assert client._idle == []


async def test_close_after_work_is_not_sent_again():
    """A target that read the request, worked on it and then closed gets no silent second copy."""
    received = []

    async def die_on_second(reader, writer):
        first_connection = not received
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received.append(head + await reader.readexactly(2))
                if first_connection and len(received) == 2:
                    await asyncio.sleep(0.2)  # the handler works on the request, then the worker dies
                    break
                writer.write(OK)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async with serving(die_on_second) as port:
        client = client_for(port)
        await send(client)
        with pytest.raises(RawRequestError, match="without a response"):
            await send(client)
    assert len(received) == 2


HUGE_HEAD = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 8000 + b"\r\n" + (b"X-More: " + b"b" * 8000 + b"\r\n") * 9 + b"Content-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "close_after", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True, "in the middle of its response"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", False, "not valid HTTP/1.1"),
        # A 100 Continue followed by a closed connection is no final response.
        (b"HTTP/1.1 100 Continue\r\n\r\n", True, "in the middle of its response"),
        (b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", False, "status 600, outside 100-599"),
        (HUGE_HEAD, False, "response head is over"),
    ],
    ids=["cut-short", "not-http", "continue-then-close", "status-600", "head-over-limit"],
)
async def test_invalid_response_fails(answer, close_after, message):
    """A response cut short, not HTTP, without a final status, out of range or too large fails the request."""
    async with ScriptedTarget(lambda *_: answer, close_after=close_after) as target:
        client = client_for(target.port)
        with pytest.raises(RawRequestError, match=message):
            await send(client)


async def test_switching_protocols_fails_and_drops_connection():
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with ScriptedTarget(lambda *_: upgrade) as target:
        client = client_for(target.port)
        with pytest.raises(RawRequestError, match="switched protocols"):
            await send(client)
        assert client._idle == []


def ipv6_loopback_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this machine has no IPv6 loopback")
async def test_localhost_reaches_a_server_on_ipv6_loopback_only():
    """A target named localhost that listens on ::1 only is reached whatever the hosts file lists."""
    async with serving(answer_once, host="::1") as port:
        client = TargetClient(parse_target(f"localhost:{port}"), max_idle=1)
        answer = await send(client)
        await client.close()
    assert answer.status == 200


async def answer_once(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)
    writer.write(OK)
    await writer.drain()
    writer.close()


def test_head_is_written_as_given():
    headers = [(b"Host", b"t"), (b"X-Rep", b"1"), (b"x-rep", b"\xe9"), (b"X-Rep", b"2")]
    head = encode_head("POST", b"/a%2Fb?c=d&%zz", headers, b"body")
    assert head == b"POST /a%2Fb?c=d&%zz HTTP/1.1\r\nHost: t\r\nX-Rep: 1\r\nx-rep: \xe9\r\nX-Rep: 2\r\nContent-Length: 4\r\n\r\n"


def test_head_content_length_rules():
    assert b"Content-Length" not in encode_head("DELETE", b"/", [(b"Host", b"t")], b"")
    sender_length = encode_head("POST", b"/", [(b"content-length", b"2")], b"ab")
    assert sender_length.count(b"ength") == 1


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("POST", b"/a b", []),
        ("POST", b"/a\r\nX-Injected: 1", []),
        ("POST", b"", []),
        ("PO ST", b"/", []),
        ("POST", b"/", [(b"X-Bad", b"a\r\nX-Injected: 1")]),
        ("POST", b"/", [(b"X-Bad", b"a\x00")]),
        ("POST", b"/", [(b"X Bad", b"a")]),
        ("POST", b"/", [(b"", b"a")]),
        ("POST", b"/", [(b"X:Bad", b"a")]),
        ("POST", b"/", [(b"X-Bad\n", b"a")]),
        ("POST", b"/", [(b"X-Bad", b"a\nb")]),
    ],
)
def test_head_with_unsendable_parts_rejected(method, path, headers):
    with pytest.raises(RawRequestError, match="cannot be sent"):
        encode_head(method, path, headers, b"")


@pytest.fixture
def self_signed(tmp_path):
    """A certificate and key for localhost that no system CA has signed, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_https_target_verifies_its_certificate(self_signed):
    """An https target is reached over TLS, and a certificate no CA signed fails the request."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with serving(lambda reader, writer: writer.close(), ssl=context) as port:
        client = TargetClient(parse_target(f"https://127.0.0.1:{port}"), max_idle=1)
        with pytest.raises(ssl.SSLCertVerificationError):
            await send(client)


async def test_tls_connection_after_early_response_is_not_reused(self_signed):
    """Over TLS a large body the target did not read may still be queued, so its connection is dropped."""
    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    release = asyncio.Event()
    connections = []

    async def respond_early(reader, writer):
        connections.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        if b"Content-Length: 2\r\n" in head:
            await reader.readexactly(2)
            writer.write(OK)
            await writer.drain()
            return
        # Respond at once and never read the large body, keeping the connection open.
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(release.wait(), 30)

    async with serving(respond_early, ssl=server_context) as port:
        client = TargetClient(parse_target(f"https://localhost:{port}"), max_idle=2)
        client._ssl = ssl.create_default_context(cafile=str(cert))
        try:
            rejected = await send(client, body=b"x" * (32 << 20), timeout=5)
            answered = await send(client, timeout=5)
        finally:
            release.set()
        await client.close()
    assert (rejected.status, answered.status, answered.body) == (413, 200, b"ok")
    assert len(connections) == 2
