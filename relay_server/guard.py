"""Connection-level defences: connections per address, header-read timeout, parse errors.

aiohttp (checked on 3.14.5) gives each connection a ``RequestHandler``.
The relay uses a subclass of it and a site that creates it, because that
is where these limits can act:

* **connections per address**: a connection beyond the cap gets a 429
  response with ``Retry-After`` before any byte of it is parsed, and is
  closed. This bounds what one address can hold open with slow requests.
* **header-read timeout**: aiohttp closes a connection whose request head
  is not complete ``keepalive_timeout`` seconds after the connection opened
  or the previous response ended, without an answer. The relay sets that
  timeout to its header timeout, which also closes idle keep-alive
  connections after that long.
* **expectations**: aiohttp's own check of an ``Expect`` header fails with
  a 500 when the value is not valid UTF-8, so ``Expect`` values other than
  ``100-continue`` get a JSON 417 before aiohttp looks at them.
* **parse errors**: aiohttp answers a request it cannot parse with a
  plain-text 400 and logs a traceback. The subclass answers JSON instead:
  431 for a header field over ``max_field_size`` or more than
  ``max_headers`` fields, 414 for a request line over ``max_line_size``,
  400 otherwise, and logs one line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from relay_server.limits import ConnectionTable, IngressLimits, json_rejection

logger = logging.getLogger("hookrelay.server.guard")

# aiohttp's default request-line limit; a URL over it gets 414.
MAX_REQUEST_LINE = 8190
# A rejected connection stays open this long after its response, so the
# client reads the response before the close can reset the connection.
REJECTED_LINGER = 2.0
_REJECTED_RETRY_AFTER = 5


def handler_options(limits: IngressLimits) -> dict[str, Any]:
    """Return the RequestHandler keyword arguments that enforce ``limits``.

    aiohttp's own limits are set a little above the relay's, so that the
    relay's check (with its 431 JSON response) normally acts first; aiohttp's
    bound caps memory for requests far over the limit. A single field may
    use the whole header budget, but never as much as the request-line
    limit, so that a too-long field and a too-long line stay apart.
    """
    return {
        "keepalive_timeout": limits.header_timeout,
        "max_line_size": MAX_REQUEST_LINE,
        "max_field_size": max(limits.max_header_bytes, MAX_REQUEST_LINE + 1),
        "max_headers": limits.max_headers + 1,
    }


class GuardedRequestHandler(RequestHandler):
    """aiohttp's request handler with the relay's connection cap and JSON error responses."""

    def __init__(self, manager: web.Server, *, connections: ConnectionTable, **options: Any) -> None:
        super().__init__(manager, **options)
        self._connection_table = connections
        self._peer: str | None = None
        self._rejected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else ""
        if not self._connection_table.open(peer):
            self._reject_connection(transport, peer)
            return
        self._peer = peer
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._rejected:
            return
        if self._peer is not None:
            self._connection_table.close(self._peer)
            self._peer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._rejected:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._rejected else super().eof_received()

    def _reject_connection(self, transport: asyncio.BaseTransport, peer: str) -> None:
        self._rejected = True
        logger.debug("connection rejected remote=%s open=%d cap=%d", peer, self._connection_table.count(peer), self._connection_table.cap)
        # uvloop's transports are not asyncio.Transport instances but have
        # the same write, write_eof and close methods.
        assert hasattr(transport, "write")
        message = f"more than {self._connection_table.cap} open connections from your address; retry in {_REJECTED_RETRY_AFTER} s"
        transport.write(_raw_answer(429, "Too Many Requests", "too_many_connections", message, _REJECTED_RETRY_AFTER))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REJECTED_LINGER, transport.close)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Respond with JSON to a request aiohttp could not parse, or whose handler failed."""
        if status >= 500:
            logger.error("request failed remote=%s path=%s status=%d", request.remote, request.path, status, exc_info=exc)
        if request.writer.output_size > 0:
            # A websocket handler, or a response already under way: the
            # error can no longer get a response, only the log line above.
            raise ConnectionError("a response was already sent; the error cannot get its own response")
        if isinstance(exc, BadHttpMessage):
            response = self._bad_request(exc)
        elif status < 500:
            response = json_rejection(status, "bad_request", "the request is not valid HTTP/1.1")
        else:
            response = json_rejection(status, "internal_error", "the relay failed to handle the request")
        response.force_close()
        return response

    def _bad_request(self, exc: BadHttpMessage) -> web.Response:
        counters = self._connection_table.counters
        if isinstance(exc, LineTooLong) and exc.args[1] == self.max_line_size:
            counters.count("uri_too_long")
            return json_rejection(414, "uri_too_long", f"the request line exceeds {self.max_line_size} bytes")
        if isinstance(exc, LineTooLong) or "Too many headers" in exc.message:
            counters.count("headers_too_large")
            return json_rejection(431, "headers_too_large", "a header field is too large, or there are too many header fields")
        counters.count("bad_request")
        logger.debug("bad request: %s", exc.message)
        return json_rejection(400, "bad_request", "the request is not valid HTTP/1.1")


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are handled by :class:`GuardedRequestHandler`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        connections: ConnectionTable,
        handler_options: dict[str, Any],
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._connection_table = connections
        self._handler_options = handler_options

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None, "set up the runner before starting the site"
        if not getattr(server.request_handler, "checks_expectations", False):
            server.request_handler = expectations_checked(server.request_handler)

        def new_handler() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, connections=self._connection_table, **self._handler_options)

        self._server = await loop.create_server(new_handler, self._host, self._port, backlog=self._backlog, reuse_address=True)


def expectations_checked(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]) -> Any:
    """Wrap the server's request handler so that an unknown ``Expect`` value gets 417 JSON."""

    async def check_expectation(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is not None and expect.strip().lower() != "100-continue":
            return json_rejection(417, "expectation_failed", "the relay supports only Expect: 100-continue")
        return await handler(request)

    check_expectation.checks_expectations = True  # type: ignore[attr-defined]
    return check_expectation


def _raw_answer(status: int, reason: str, code: str, message: str, retry_after: int) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
