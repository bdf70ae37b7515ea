"""Token buckets, request limits and the aiohttp options that enforce them."""

import pytest

from relay_server.errors import ConfigError
from relay_server.guard import MAX_REQUEST_LINE, handler_options
from relay_server.limits import ConnectionTable, IngressCounters, IngressGuard, IngressLimits, RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_bucket_allows_burst_then_waits():
    """A full bucket passes `burst` requests at once, then asks for 1/rate seconds per request."""
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)

    passed = [limiter.acquire("a") for _ in range(3)]
    wait = limiter.acquire("a")

    assert passed == [0.0, 0.0, 0.0]
    assert wait == pytest.approx(0.5)


def test_bucket_refills_over_time():
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("a")

    clock.now += 1.0

    assert [limiter.acquire("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.acquire("a") > 0


def test_bucket_never_exceeds_burst():
    """A long quiet time refills the bucket to `burst`, no further."""
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    limiter.acquire("a")

    clock.now += 3600

    assert [limiter.acquire("a") for _ in range(3)][2] > 0


def test_buckets_are_per_key():
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)

    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0
    assert limiter.acquire("a") > 0


def test_zero_rate_is_off():
    limiter = RateLimiter(rate=0, burst=1)

    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_bucket_count_bounded():
    """Distinct keys beyond max_buckets evict the least recently used, so memory stays bounded."""
    limiter = RateLimiter(rate=1.0, burst=1, max_buckets=100)

    for n in range(1000):
        limiter.acquire(f"10.0.{n // 256}.{n % 256}")

    assert len(limiter) == 100


def test_guard_counts_rejections_per_channel():
    clock = FakeClock()
    guard = IngressGuard(IngressLimits(channel_rate=1, channel_burst=1), clock=clock)

    assert guard.admit_channel("ch_a") is None
    rejection = guard.admit_channel("ch_a")

    assert rejection.status == 429
    assert rejection.headers["Retry-After"] == "1"
    assert guard.counters.of_channel("ch_a") == {"rate_limited_channel": 1}
    assert guard.counters.totals["rate_limited_channel"] == 1


@pytest.mark.parametrize(
    "headers, status",
    [
        ([(b"X-A", b"1")] * 3, None),
        ([(b"X-A", b"1")] * 4, 431),
        ([(b"X-A", b"v" * 17)], 431),
        ([(b"X-A", b"v" * 16)], None),
    ],
)
def test_header_limits(headers, status):
    """More fields than max_headers, or more bytes than max_header_bytes, get 431."""
    guard = IngressGuard(IngressLimits(max_headers=3, max_header_bytes=19))

    rejection = guard.check_headers(tuple(headers))

    assert (rejection.status if rejection else None) == status


def test_connection_table_caps_per_address():
    counters = IngressCounters()
    table = ConnectionTable(2, counters)

    assert table.open("a")
    assert table.open("a")
    assert not table.open("a")
    assert table.open("b")
    table.close("a")
    assert table.open("a")
    assert counters.totals["connections_rejected"] == 1
    assert table.total == 3


@pytest.mark.parametrize(
    "changes, option",
    [({"max_headers": 0}, "max-headers"), ({"channel_rate": -1}, "channel-rate"), ({"header_timeout": 0}, "header-timeout")],
)
def test_limits_validated(changes, option):
    with pytest.raises(ConfigError) as info:
        IngressLimits(**changes)

    assert info.value.option == option


def test_handler_options_keep_line_and_field_apart():
    """The header-field bound never equals the request-line bound, so a long URL (414) and a long header (431) stay distinguishable."""
    for header_bytes in (1, 8190, 8191, 64 * 1024):
        options = handler_options(IngressLimits(max_header_bytes=header_bytes))
        assert options["max_line_size"] == MAX_REQUEST_LINE
        assert options["max_field_size"] != MAX_REQUEST_LINE
        assert options["max_field_size"] >= header_bytes

    assert handler_options(IngressLimits(header_timeout=3.0))["keepalive_timeout"] == 3.0
