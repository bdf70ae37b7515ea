"""Request limits of the relay: header count and size, request rates, counters.

Every limit responds with a clear status and a JSON body, never HTML:

* ``431`` when a request has more than ``max_headers`` header fields or
  more than ``max_header_bytes`` bytes of header names and values;
* ``429`` with ``Retry-After`` when a source address, or a channel, sends
  faster than its token bucket allows. A bucket contains at most ``burst`` tokens and
  refills at ``rate`` tokens per second; each request takes one.

The per-address bucket applies to every request (ingest, API, websocket
handshakes) and runs before any handler: in a middleware, and for channel
URLs in :func:`relay_server.app.ingest_first`. The per-channel
bucket applies to ingest after the channel is found. Connection-level
limits (connections per address, header-read timeout, parse errors) live
in :mod:`relay_server.guard`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from relay_server.errors import ConfigError

logger = logging.getLogger("hookrelay.server.limits")

# Token buckets kept per limiter; the least recently used one is dropped
# beyond this, so a flood of distinct addresses cannot grow memory.
MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class IngressLimits:
    """Limits on what senders may send; a rate of 0 turns its bucket off.

    Rates are requests per second; ``header_timeout`` and ``body_timeout``
    are seconds. The body timeout bounds the whole body, so a sender that
    dribbles a byte now and then cannot hold a connection open.
    """

    max_headers: int = 100
    max_header_bytes: int = 64 * 1024
    channel_rate: float = 100.0
    channel_burst: int = 1000
    address_rate: float = 100.0
    address_burst: int = 1000
    max_connections_per_address: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 120.0

    def __post_init__(self) -> None:
        for name in ("max_headers", "max_header_bytes", "channel_burst", "address_burst"):
            if getattr(self, name) < 1:
                raise ConfigError(name.replace("_", "-"), getattr(self, name), "use a number of at least 1")
        for name in ("channel_rate", "address_rate", "max_connections_per_address"):
            if getattr(self, name) < 0:
                raise ConfigError(name.replace("_", "-"), getattr(self, name), "use 0 (off) or a positive number")
        for name in ("header_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(name.replace("_", "-"), getattr(self, name), "use a positive duration such as 10s")


class RateLimiter:
    """Token buckets keyed by address or channel.

    ``acquire(key)`` takes a token and returns 0.0, or returns the seconds
    until the next token when the bucket is empty.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_buckets = max_buckets
        # key -> [tokens, time of the last refill]
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(self.burst), now]
            if len(self._buckets) > self._max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


class IngressCounters:
    """Counts of rejected and de-duplicated requests, per channel and in total.

    NOTE: the counts live in the relay process's memory: they start at zero
    when the relay starts, and each relay node counts its own requests.
    """

    def __init__(self) -> None:
        self.totals: Counter[str] = Counter()
        self._per_channel: dict[str, Counter[str]] = {}

    def count(self, reason: str, channel: str | None = None) -> None:
        self.totals[reason] += 1
        if channel is not None:
            self._per_channel.setdefault(channel, Counter())[reason] += 1

    def of_channel(self, channel: str) -> dict[str, int]:
        return dict(self._per_channel.get(channel, {}))


class ConnectionTable:
    """Open connections per peer address, and a cap on them (0: no cap)."""

    def __init__(self, cap: int, counters: IngressCounters) -> None:
        self.cap = cap
        self.counters = counters
        self._open: Counter[str] = Counter()

    def open(self, address: str) -> bool:
        """Record a new connection; returns False when the address is at its cap."""
        if self.cap and self._open[address] >= self.cap:
            self.counters.count("connections_rejected")
            return False
        self._open[address] += 1
        return True

    def close(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def count(self, address: str) -> int:
        return self._open.get(address, 0)

    @property
    def total(self) -> int:
        return sum(self._open.values())


class IngressGuard:
    """The relay's limiters and counters, shared by every handler."""

    def __init__(self, limits: IngressLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.by_channel = RateLimiter(limits.channel_rate, limits.channel_burst, clock=clock)
        self.by_address = RateLimiter(limits.address_rate, limits.address_burst, clock=clock)
        self.counters = IngressCounters()
        self.connections = ConnectionTable(limits.max_connections_per_address, self.counters)

    def admit_channel(self, channel: str) -> web.Response | None:
        """Take a token from the channel's bucket; return the 429 response when it is empty."""
        wait = self.by_channel.acquire(channel)
        if not wait:
            return None
        self.counters.count("rate_limited_channel", channel)
        logger.debug("request rate limited channel=%s retry_after_s=%.1f", channel, wait)
        return rate_limited(f"channel {channel} receives more than {self.limits.channel_rate:g} requests per second", wait)

    def admit_address(self, address: str) -> web.Response | None:
        wait = self.by_address.acquire(address)
        if not wait:
            return None
        self.counters.count("rate_limited_address")
        logger.debug("request rate limited remote=%s retry_after_s=%.1f", address, wait)
        return rate_limited(f"more than {self.limits.address_rate:g} requests per second from your address", wait)

    def admit(self, request: web.BaseRequest) -> web.Response | None:
        """Apply the header limits and the per-address rate, and return the rejection or None."""
        return self.check_headers(tuple(request.raw_headers)) or self.admit_address(request.remote or "")

    def check_headers(self, raw_headers: tuple[tuple[bytes, bytes], ...]) -> web.Response | None:
        """Return the 431 response when the header list is over a limit."""
        count = len(raw_headers)
        if count > self.limits.max_headers:
            self.counters.count("headers_too_large")
            return headers_too_large(f"the request has {count} header fields; the limit is {self.limits.max_headers}")
        size = sum(len(name) + len(value) for name, value in raw_headers)
        if size > self.limits.max_header_bytes:
            self.counters.count("headers_too_large")
            return headers_too_large(f"the request's headers take {size} bytes; the limit is {self.limits.max_header_bytes}")
        return None

    def middleware(self) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]]:
        """Build the aiohttp middleware that applies header limits and the per-address rate."""

        @web.middleware
        async def ingress_limits(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            rejection = self.admit(request)
            if rejection is not None:
                return rejection
            return await handler(request)

        return ingress_limits


def json_rejection(status: int, code: str, message: str, **headers: str) -> web.Response:
    """Build a rejection as JSON, in the shape every relay error has."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


def rate_limited(reason: str, wait: float) -> web.Response:
    seconds = max(1, math.ceil(wait))
    return json_rejection(429, "rate_limited", f"{reason}; retry in {seconds} s", **{"Retry-After": str(seconds)})


def headers_too_large(reason: str) -> web.Response:
    response = json_rejection(431, "headers_too_large", reason)
    # The body was not read; closing is cheaper than draining it.
    response.force_close()
    return response
