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

from relay_client.config import ListenerConfig
from relay_client.target_client import RawRequestError, RawResponse, TargetClient
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
# A target's response is read for its status; its body matters only up to here,
# unless a sender waits for it (sync channels), which gets up to the second.
_MAX_RESPONSE_BODY = 1024 * 1024
MAX_SENDER_ANSWER = 25 * 1024 * 1024


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
    chunked = False
    present: set[bytes] = set()
    for name, value in event.headers:
        lowered = name.lower()
        if lowered == b"host":
            sender_host = value
        chunked = chunked or lowered == b"transfer-encoding"
        if lowered in HOP_BY_HOP or lowered in connection_tokens or lowered == b"x-hookrelay-verified":
            continue
        if lowered == b"content-length" and value.strip() != str(len(event.body)).encode():
            continue
        present.add(lowered)
        headers.append((name, value))
    if chunked and b"content-length" not in present:
        # The relay has the whole body, so it goes out with its length, empty or not.
        headers.append((b"Content-Length", str(len(event.body)).encode()))

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


class Forwarder:
    """Sends events to one target over a keep-alive connection pool."""

    def __init__(
        self,
        config: ListenerConfig,
        *,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
        sleep: Callable[[float], object] = asyncio.sleep,
        sign: Callable[[Event, list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]] | None = None,
    ) -> None:
        self.config = config
        self._sign = sign
        self._client: TargetClient | None = None
        self._on_attempt = on_attempt
        self._sleep = sleep

    async def __aenter__(self) -> Forwarder:
        self._client = TargetClient(self.config.target, max_idle=max(8, self.config.concurrency * 2))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()

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
            answer = await self._send(event, headers)
        except asyncio.TimeoutError:
            return None, f"timed out after {self.config.timeout:g} s", None, _elapsed_ms(started), None
        except (RawRequestError, OSError) as exc:
            return None, _describe(exc), None, _elapsed_ms(started), None
        duration_ms = _elapsed_ms(started)
        status = answer.status
        error = None if status < 400 else f"HTTP {status}"
        # Only a status that is retried needs its Retry-After, and only a waiting sender the response.
        retry_delay = _retry_after(answer) if is_retryable_status(status) else None
        response = TargetResponse(event.id, status, tuple(answer.headers), answer.body) if event.respond else None
        return status, error, retry_delay, duration_ms, response

    async def _send(self, event: Event, headers: list[tuple[bytes, bytes]]) -> RawResponse:
        """Send one request and return the target's response, its body cut at the reading limit."""
        assert self._client is not None, "use the forwarder as an async context manager"
        path = self.config.target.path_for(event.target.decode("utf-8", "surrogateescape"))
        # One byte past the limit shows the listener that a response for a sender did not fit.
        limit = MAX_SENDER_ANSWER + 1 if event.respond else _MAX_RESPONSE_BODY
        return await self._client.exchange(
            event.method,
            path.encode("utf-8", "surrogateescape"),
            headers,
            event.body,
            timeout=self.config.timeout,
            max_body=limit,
        )


def _retry_after(answer: RawResponse) -> float | None:
    """Return the wait in seconds from the response's ``Retry-After`` header, or None."""
    value = next((value for name, value in answer.headers if name.lower() == b"retry-after"), None)
    return parse_retry_after(value.decode("latin-1") if value else None)


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _describe(exc: Exception) -> str:
    if isinstance(exc, RawRequestError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
