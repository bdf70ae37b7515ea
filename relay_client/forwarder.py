"""Deliver one event to the local target, retrying under the retry policy.

Fidelity rules (the relay is invisible to the receiver):

* the body goes out byte for byte, the method and the raw path tail and
  query unchanged (the URL is passed as already encoded);
* every end-to-end header keeps its value, order, spelling and repeats;
  hop-by-hop headers (RFC 9110 §7.6.1, plus the names listed in
  ``Connection``) and ``Host`` are replaced;
* the HTTP client adds nothing of its own: no ``User-Agent``, ``Accept``,
  ``Accept-Encoding`` or ``Content-Type`` the sender did not send, and no
  ``Cookie`` from a ``Set-Cookie`` the target answered earlier;
* ``X-Forwarded-For`` gets the sender's address appended, ``X-Forwarded-Host``
  and ``X-Forwarded-Proto`` are added when the sender did not send them, and
  ``X-Hookrelay-Event-Id`` carries the stable event id for de-duplication;
* ``X-Hookrelay-Verified`` carries the relay's signature verdict when the
  channel verifies signatures, and a copy sent by the sender is dropped.

Redirects are never followed: a 3xx is the target's answer.

The forwarder knows nothing of the CLI: it reports every attempt through the
``on_attempt`` callback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from relay_client import rawhttp
from relay_client.config import ListenerConfig
from relay_client.rawhttp import RawRequestError
from relay_client.retry import is_retryable_status, parse_retry_after
from relay_server.protocol import DeliveryResult, Event, TargetResponse

logger = logging.getLogger("hookrelay.client.forwarder")

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host"}
)
EVENT_ID_HEADER = b"X-Hookrelay-Event-Id"
# The relay's signature verdict. Copies sent by the sender are dropped, so
# only the relay's own check reaches the target under this name.
VERIFIED_HEADER = b"X-Hookrelay-Verified"
ATTEMPT_HEADER = b"X-Hookrelay-Attempt"
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# A target's response is read for its status; its body matters only up to here,
# unless a sender waits for it (sync channels), which gets up to the second.
_MAX_RESPONSE_BODY = 1024 * 1024
# Methods that aiohttp sends without a Content-Length when there is no body.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_MAX_SENDER_ANSWER = 25 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at delivering an event, as reported to the console."""

    event: Event
    attempt: int
    status: int | None
    duration_ms: float
    error: str | None
    final: bool
    outcome: str
    retry_in: float | None = None
    response: TargetResponse | None = None


def forward_headers(event: Event, target_authority: str, host_header: str | None = None) -> list[tuple[bytes, bytes]]:
    """Build the header list sent to the target from the event's stored headers."""
    connection_tokens = _connection_tokens(event.headers)
    headers: list[tuple[bytes, bytes]] = []
    sender_host = None
    present: set[bytes] = set()
    for name, value in event.headers:
        lowered = name.lower()
        if lowered == b"host":
            sender_host = value
        if lowered in HOP_BY_HOP or lowered in connection_tokens or lowered == b"x-hookrelay-verified":
            continue
        if lowered == b"content-length" and value.strip() != str(len(event.body)).encode():
            continue
        present.add(lowered)
        headers.append((name, value))

    headers.insert(0, (b"Host", (host_header or target_authority).encode("latin-1")))
    _add_forwarded(headers, present, event, sender_host)
    headers.append((EVENT_ID_HEADER, event.id.encode()))
    if event.verification:
        headers.append((VERIFIED_HEADER, event.verification.encode("latin-1", "replace")))
    return headers


def _connection_tokens(headers: tuple[tuple[bytes, bytes], ...]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return tokens


def _add_forwarded(headers: list[tuple[bytes, bytes]], present: set[bytes], event: Event, sender_host: bytes | None) -> None:
    if event.remote:
        remote = event.remote.encode("latin-1")
        for index, (name, value) in enumerate(headers):
            if name.lower() == b"x-forwarded-for":
                headers[index] = (name, value + b", " + remote)
                break
        else:
            headers.append((b"X-Forwarded-For", remote))
    if b"x-forwarded-host" not in present and sender_host:
        headers.append((b"X-Forwarded-Host", sender_host))
    if b"x-forwarded-proto" not in present:
        headers.append((b"X-Forwarded-Proto", event.scheme.encode("latin-1")))


def as_text_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]] | None:
    """Convert headers for aiohttp, or return None when aiohttp would not send them as they are.

    aiohttp encodes values as UTF-8, so a value that decodes as UTF-8 goes out
    as the same bytes. Two cases need :mod:`relay_client.rawhttp` instead: a
    value that is not valid UTF-8, and a name repeated in another spelling
    (``X-Test`` and ``x-test``), because aiohttp keeps only the last of those.
    """
    spellings: dict[bytes, bytes] = {}
    for name, _ in headers:
        if spellings.setdefault(name.lower(), name) != name:
            return None
    try:
        return [(name.decode("latin-1"), value.decode("utf-8")) for name, value in headers]
    except UnicodeDecodeError:
        return None


class Forwarder:
    """Sends events to one target over a keep-alive connection pool."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
        sleep: Callable[[float], object] = asyncio.sleep,
        sign: Callable[[Event, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        self.config = config
        self._sign = sign
        self._session = session
        self._owns_session = session is None
        self._on_attempt = on_attempt
        self._sleep = sleep

    async def __aenter__(self) -> Forwarder:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=max(8, self.config.concurrency * 2), enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    async def deliver(self, event: Event, on_attempt: Callable[[Attempt], None] | None = None) -> DeliveryResult:
        """Try ``event`` until the target responds, the policy gives up, or it is cancelled.

        ``on_attempt`` hears about every attempt, after the constructor's
        callback; for events marked ``respond`` it carries the target's response.
        The result's duration is the last attempt's, without the waits between
        retries, so it shows how long the target took to respond. Attempts
        go on from ``event.attempts``, the ones earlier deliveries made, and
        every delivery makes at least one.
        """
        attempt = max(event.attempts, 0)
        while True:
            attempt += 1
            status, error, retry_after, duration_ms, response = await self._attempt(event, attempt)
            retryable = status is None or is_retryable_status(status)
            final = not retryable or not self.config.retry.should_retry(attempt)
            outcome = "failed" if retryable else "delivered"
            delay = None if final else self.config.retry.backoff.delay(attempt, retry_after)
            report = Attempt(event, attempt, status, duration_ms, error, final, outcome, delay, response)
            self._on_attempt(report)
            if on_attempt is not None:
                on_attempt(report)
            if final:
                return DeliveryResult(event.id, outcome, status, attempt, duration_ms, error)
            logger.info(
                "delivery retry scheduled event_id=%s channel=%s target=%s attempt=%d status=%s retry_in_s=%.2f",
                event.id,
                event.channel,
                self.config.target.redacted(),
                attempt,
                status,
                delay,
            )
            await self._sleep(delay)

    async def _attempt(self, event: Event, attempt: int) -> tuple[int | None, str | None, float | None, float, TargetResponse | None]:
        """Send once; return the status (None without a response), error, Retry-After, duration and response."""
        headers = forward_headers(event, self.config.target.authority, self.config.host_header)
        headers.append((ATTEMPT_HEADER, str(attempt).encode()))
        if self._sign is not None:
            headers = self._sign(event, headers)
        started = time.monotonic()
        try:
            response = await self._send(event, headers)
        except asyncio.TimeoutError:
            return None, f"timed out after {self.config.timeout:g} s", None, _elapsed_ms(started), None
        except (aiohttp.ClientError, RawRequestError, OSError) as exc:
            return None, _describe(exc), None, _elapsed_ms(started), None
        status = response.status
        error = None if status < 400 else f"HTTP {status}"
        retry_after = next((v for k, v in response.headers if k.lower() == b"retry-after"), None)
        retry_delay = parse_retry_after(retry_after.decode("latin-1") if retry_after else None)
        return status, error, retry_delay, _elapsed_ms(started), response if event.respond else None

    async def _send(self, event: Event, headers: list[tuple[bytes, bytes]]) -> TargetResponse:
        """Send one request and return the target's response, its body cut at the reading limit."""
        assert self._session is not None, "use the forwarder as an async context manager"
        path = self.config.target.url_for(event.target.decode("utf-8", "surrogateescape"))
        text_headers = as_text_headers(headers)
        limit = _MAX_SENDER_ANSWER if event.respond else _MAX_RESPONSE_BODY
        if text_headers is None or _gains_content_length(event, headers):
            raw_path = path[len(self.config.target.origin) :].encode("utf-8", "surrogateescape")
            answer = await rawhttp.exchange(
                self.config.target, event.method, raw_path, headers, event.body, timeout=self.config.timeout, max_body=limit
            )
            return TargetResponse(event.id, answer.status, tuple(answer.headers), answer.body)

        data = event.body or None
        async with self._session.request(
            event.method, URL(path, encoded=True), headers=text_headers, data=data, allow_redirects=False, compress=None
        ) as response:
            body = await _read_up_to(response.content, limit)
            return TargetResponse(event.id, response.status, tuple(response.raw_headers), body)


def _gains_content_length(event: Event, headers: list[tuple[bytes, bytes]]) -> bool:
    """Return True when aiohttp would add a Content-Length that the sender did not send.

    aiohttp gives a request without a body "Content-Length: 0" unless its
    method is GET, HEAD, OPTIONS or TRACE. Such a request goes out through
    rawhttp, which sends the head as it is.
    """
    if event.body or event.method in _BODILESS_METHODS:
        return False
    return not any(name.lower() == b"content-length" for name, _ in headers)


async def _read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read the body until its end or ``limit`` bytes, whichever comes first."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await content.read(min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _describe(exc: Exception) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the target closed the connection without an answer"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
