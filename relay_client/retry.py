"""The listener's retry policy, in one place.

Retryable: no HTTP answer at all (connection refused or reset, timeout) and
the statuses 408, 425, 429 and 5xx, except 501 and 505. Every other status,
4xx and 3xx included, is the target's decision about the event and is final.
501 (method not implemented) and 505 (HTTP version not supported) say that
the target cannot handle this kind of request at all, so a retry cannot help.

Delays grow exponentially from ``base`` and are capped at ``cap``, with
"equal jitter": half the delay is fixed and half is random, so listeners that
failed together do not retry together. A ``Retry-After`` header (seconds or
an HTTP date, RFC 9110 §10.2.3) replaces the computed delay, bounded by
``max_retry_after``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRYABLE_STATUSES = frozenset({408, 425, 429})
FINAL_SERVER_ERRORS = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or (500 <= status <= 599 and status not in FINAL_SERVER_ERRORS)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the wait in seconds that a ``Retry-After`` value asks for, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with equal jitter; ``attempt`` counts from 1."""

    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: Callable[[], float] = random.random) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        # The exponent stops at 64: a larger power of two overflows a float
        # after about a thousand attempts, and the cap applies long before.
        ceiling = min(self.cap, self.base * 2 ** min(max(0, attempt - 1), 64))
        return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a delivery gets and how long to wait between them."""

    max_attempts: int = 10
    backoff: Backoff = Backoff()

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts
