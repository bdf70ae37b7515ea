"""Random identifiers and secrets for channels, tokens and events.

Channel ids and tokens carry at least 128 bits from :mod:`secrets`. The
relay stores only a SHA-256 hash of each token: tokens are random, not
passwords, so a slow key-derivation function would add nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

CHANNEL_PREFIX = "ch_"
TOKEN_PREFIX = "hrt_"
EVENT_PREFIX = "evt_"

# Compared against when a channel does not exist, so that the time a wrong
# token takes does not tell whether the channel exists.
_ABSENT_HASH = hashlib.sha256(b"no such channel").digest()


def new_channel_id() -> str:
    """Return a channel id with 128 random bits, safe in a URL path segment."""
    raw = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return CHANNEL_PREFIX + raw


def new_token() -> str:
    """Return a channel token with 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_event_id(now: float | None = None) -> str:
    """Return an event id that sorts by arrival time (milliseconds) and is unique."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{EVENT_PREFIX}{millis:012x}{secrets.token_hex(10)}"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def token_matches(token: str | None, stored_hash: bytes | None) -> bool:
    """Compare ``token`` with a stored hash in constant time.

    A missing channel is compared against a fixed hash so both failures cost
    the same work.
    """
    candidate = hash_token(token or "")
    return hmac.compare_digest(candidate, stored_hash or _ABSENT_HASH) and stored_hash is not None


def looks_like_channel_id(value: str) -> bool:
    return value.startswith(CHANNEL_PREFIX) and 3 < len(value) <= 64 and value[3:].isalnum()
