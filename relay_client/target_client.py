"""Send requests to the local target over kept-alive HTTP/1.1 connections, the head as given.

The forwarder promises that the target receives the sender's request: every
header name in its spelling, every value byte, repeats and order. A general
HTTP client changes some of that: aiohttp encodes values as UTF-8, merges
names that differ only in case and adds a ``Content-Length: 0`` of its own.
Building its request and response objects also cost a listener about a
third of its CPU per event. This client writes the head exactly as the forwarder
built it, in one write with the body, and parses the response with httptools
(llhttp).

Contract:

* one :class:`TargetClient` per target origin; it keeps at most ``max_idle``
  idle connections and closes a connection idle for longer than
  :data:`IDLE_SECONDS`;
* a request that fails on a reused connection, before any byte of a
  response and within :data:`STALE_CLOSE_SECONDS` of being written, is
  sent again once on a new connection. The target closed the idle
  connection while the request was on its way;
* informational responses (1xx) are skipped, and the response to a HEAD
  request has no body whatever its ``Content-Length`` header;
* the response body is kept up to ``max_body`` bytes. A connection whose
  response was cut there, or that the target asked to close, is not reused;
* a response that arrives before the body is written (a 413, say) ends the
  request, and the rest of the body is not sent;
* fields after a chunked body (trailers) are not added to the headers. A
  status outside 100-599, a 101 (switching protocols) and a head over 64 KiB
  are invalid responses;
* a request times out at most :data:`DEADLINE_CHECK_SECONDS` after its
  timeout. One timer per client checks the deadlines of the requests in
  progress, because a timer per request (``asyncio.timeout``) cost the
  listener about 5 us per event.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import cast

import httptools

from relay_client.config import Target

logger = logging.getLogger("hookrelay.client.target")

# Close kept-alive connections idle for longer than this instead of reusing
# them. uvicorn and Node.js servers close idle connections after 5 seconds by default.
IDLE_SECONDS = 4.0
# A target that closes an idle connection does so as the next request
# arrives, within a round trip. A later close most likely followed work on the
# request, so the request is not sent again at once, and the forwarder's
# retry reports it as an attempt.
STALE_CLOSE_SECONDS = 0.05
# How often a client with requests in progress checks their deadlines.
DEADLINE_CHECK_SECONDS = 0.05
# Over TLS the unsent part of a request is not visible in the transport's
# buffer, so a connection whose request carried more than this is not reused.
_TLS_REUSE_BODY_BYTES = 64 * 1024
# httptools sets no limit of its own on the size of a response head.
_MAX_HEAD_BYTES = 64 * 1024
_FORBIDDEN_IN_TARGET = frozenset(b"\r\n\x00 ")
# An HTTP token, which methods and header names must be. Checked with regular
# expressions, a head with eleven headers took 4.0 us instead of 5.2 us.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class RawRequestError(Exception):
    """The request could not be sent as given, or the target's response was not valid HTTP/1.1."""


class _NoResponse(RawRequestError):
    """The connection ended before the first byte of a response."""


def encode_head(method: str, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """Return the request line and headers as bytes, adding only a missing ``Content-Length`` for a body.

    Raises :class:`RawRequestError` for a method, target, header name or value
    that cannot be written without changing the message (a space or line
    break in the target, a line break in a value, a name that is not a token).
    """
    if _TOKEN.fullmatch(method.encode("latin-1", "replace")) is None:
        raise RawRequestError(f"the method {method!r} is not an HTTP token and cannot be sent")
    if not path or not _FORBIDDEN_IN_TARGET.isdisjoint(path):
        raise RawRequestError(f"the request target {path!r} contains a space, CR, LF or NUL and cannot be sent")
    lines = [method.encode("latin-1"), b" ", path, b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None:
            raise RawRequestError(f"the header name {name!r} is not an HTTP token and cannot be sent")
        if _FORBIDDEN_IN_VALUE.search(value) is not None:
            raise RawRequestError(f"the value of header {name.decode('latin-1')} contains CR, LF or NUL and cannot be sent")
        has_length = has_length or name.lower() == b"content-length"
        lines += (name, b": ", value, b"\r\n")
    if body and not has_length:
        lines += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One connection to the target, serving one request at a time.

    The httptools parser calls the ``on_*`` methods as the response arrives.
    :meth:`exchange` waits for the whole response, or for its head when the
    request was HEAD.
    """

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._paused = False
        self._tls = False
        self._large_over_tls = False
        self._written_at = 0.0
        self._head_bytes = 0
        self._status = 0
        self._in_head = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._max_body = 0
        self._head_only = False
        self._answered = False
        self._framed = False
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0
        # The event loop time at which the request in progress times out.
        self.deadline = 0.0

    async def exchange(self, head: bytes, body: bytes, *, max_body: int, head_only: bool) -> RawResponse:
        """Write the request and return the response. The caller closes the connection if this raises."""
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._max_body = max_body
        self._head_only = head_only
        self._answered = False
        self._large_over_tls = self._tls and len(body) > _TLS_REUSE_BODY_BYTES
        self.reusable = False
        self._written_at = time.monotonic()
        self._transport.writelines((head, body) if body else (head,))
        try:
            # A target may respond before it has read the whole body (a 413, say),
            # so the response is awaited, not the write.
            return await self._waiter
        finally:
            self._waiter = None

    def time_out(self) -> None:
        """End the request in progress with :class:`TimeoutError` and close the connection."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self._transport is None or self.closed:
            return
        if self._large_over_tls or self._transport.get_write_buffer_size():
            # A body the target may not read: closing would wait for it to drain.
            self._transport.abort()
        else:
            self._transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("ssl_object") is not None

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Unexpected bytes between requests: the connection is out of step.
            self.close()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish(reusable=False)
        except httptools.HttpParserError as exc:
            self._fail(RawRequestError(f"the target's response is not valid HTTP/1.1: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        if not self._answered:
            stale = time.monotonic() - self._written_at <= STALE_CLOSE_SECONDS
            error = _NoResponse if stale else RawRequestError
            self._fail(error("the target closed the connection without a response"))
        elif exc is None and self._status >= 200 and not self._in_head and not self._framed:
            self._finish(reusable=False)  # The body ran to the end of the connection.
        elif exc is not None:
            self._fail(RawRequestError(f"the target reset the connection in the middle of its response: {exc}"))
        else:
            self._fail(RawRequestError("the target closed the connection in the middle of its response"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # An unexpected response follows the last one.
        self._status = 0
        self._in_head = True
        self._head_bytes = 0
        self._headers = []
        self._chunks = []
        self._size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        # Fields after a chunked body (trailers) are not headers of the response.
        if not self._in_head:
            return
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > _MAX_HEAD_BYTES:
            self._in_head = False
            self._fail(RawRequestError(f"the target's response head is over {_MAX_HEAD_BYTES} bytes"))
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._status = self._parser.get_status_code()
        if not 100 <= self._status <= 599:
            self._fail(RawRequestError(f"the target's response has status {self._status}, outside 100-599"))
            return
        if self._status == 101:
            self._fail(RawRequestError("the target switched protocols (101), which a webhook delivery cannot use"))
            return
        lowered = {name.lower() for name, _ in self._headers}
        self._framed = b"content-length" in lowered or b"transfer-encoding" in lowered
        if self._head_only and self._status >= 200:
            self._finish(reusable=False)

    def on_body(self, chunk: bytes) -> None:
        room = self._max_body - self._size
        if room > 0:
            self._chunks.append(chunk[:room])
        self._size += len(chunk)
        if self._size >= self._max_body:
            self._finish(reusable=False)
            self.close()

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return  # An informational response. The final one follows.
        self._finish(reusable=self._parser.should_keep_alive())

    def _finish(self, *, reusable: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            # A request still being written when the response came cannot share the connection.
            buffered = self._transport is not None and self._transport.get_write_buffer_size() > 0
            unsent = self._paused or buffered or self._large_over_tls
            self.reusable = reusable and not self.closed and not unsent
            self._waiter.set_result(RawResponse(self._status, self._headers, b"".join(self._chunks)))

    def _fail(self, exc: RawRequestError) -> None:
        """End the request with ``exc`` and close the connection, which is out of step after any failure."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()


class TargetClient:
    """Kept-alive HTTP/1.1 connections to one target, used one request at a time each."""

    def __init__(self, target: Target, *, max_idle: int) -> None:
        self.target = target
        self._max_idle = max(1, max_idle)
        self._idle: list[_Connection] = []
        self._ssl = ssl.create_default_context() if target.scheme == "https" else None
        self._busy: set[_Connection] = set()
        self._deadline_check: asyncio.TimerHandle | None = None

    async def exchange(
        self,
        method: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        timeout: float,
        max_body: int,
    ) -> RawResponse:
        """Send the request and read the response, keeping at most ``max_body`` bytes of its body.

        Raises :class:`RawRequestError`, :class:`OSError` (including
        :class:`ssl.SSLError`) or :class:`TimeoutError` after ``timeout`` seconds.
        """
        head = encode_head(method, path, headers, body)
        head_only = method == "HEAD"
        deadline = asyncio.get_running_loop().time() + timeout
        connection = self._take_idle()
        if connection is not None:
            try:
                return await self._exchange_on(connection, head, body, max_body, head_only, deadline)
            except _NoResponse as exc:
                logger.debug("sending again on a new connection target=%s error=%s", self.target.redacted(), exc)
        async with asyncio.timeout_at(deadline):
            connection = await self._open()
        return await self._exchange_on(connection, head, body, max_body, head_only, deadline)

    async def close(self) -> None:
        """Close every idle connection; connections in use close when their request ends."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _exchange_on(
        self, connection: _Connection, head: bytes, body: bytes, max_body: int, head_only: bool, deadline: float
    ) -> RawResponse:
        connection.deadline = deadline
        self._watch(connection)
        try:
            response = await connection.exchange(head, body, max_body=max_body, head_only=head_only)
        except BaseException:
            connection.close()
            raise
        finally:
            self._busy.discard(connection)
        self._release(connection)
        return response

    def _watch(self, connection: _Connection) -> None:
        self._busy.add(connection)
        if self._deadline_check is None:
            loop = asyncio.get_running_loop()
            self._deadline_check = loop.call_later(DEADLINE_CHECK_SECONDS, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Time out the requests past their deadline, and check again later while any are in progress."""
        self._deadline_check = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [connection for connection in self._busy if connection.deadline <= now]:
            connection.time_out()
        if self._busy:
            self._deadline_check = loop.call_later(DEADLINE_CHECK_SECONDS, self._check_deadlines)

    def _take_idle(self) -> _Connection | None:
        # Connections are appended as they fall idle, so expired ones come first.
        expired = time.monotonic() - IDLE_SECONDS
        while self._idle and self._idle[0].idle_since <= expired:
            self._idle.pop(0).close()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable and not connection.closed:
                return connection
        return None

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and len(self._idle) < self._max_idle:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def _open(self) -> _Connection:
        host = self.target.host.strip("[]")
        try:
            return await self._connect(host, host)
        except OSError as exc:
            if host.lower() != "localhost":
                raise
            failure = exc

        # "localhost" means the loopback, but a hosts file may list only one
        # of its addresses while a dev server listens on the other.
        for address in ("127.0.0.1", "::1"):
            try:
                connection = await self._connect(address, host)
            except OSError:
                continue
            logger.debug("connected to localhost at %s target=%s", address, self.target.redacted())
            return connection
        raise failure

    async def _connect(self, address: str, host: str) -> _Connection:
        loop = asyncio.get_running_loop()
        server_hostname = host if self._ssl is not None else None
        _, connection = await loop.create_connection(
            _Connection, address, self.target.port, ssl=self._ssl, server_hostname=server_hostname
        )
        return connection
