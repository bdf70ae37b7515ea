"""Recognise a provider's redelivery of a webhook the relay already stored.

Providers retry a webhook they think was lost, and their "redeliver"
buttons resend one, with the same id each time:

* GitHub: the ``X-GitHub-Delivery`` header;
* Standard Webhooks: the ``webhook-id`` header (``svix-id`` from Svix);
* Stripe: the event's ``id`` in the JSON body, recognised by a
  ``Stripe-Signature`` header or ``"object": "event"``;
* Slack: a retry (``X-Slack-Retry-Num``) repeats the first request's
  ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature``, an HMAC over
  that timestamp and the body, so the pair names the request.

Ingest passes the key to the store, which keeps the first event stored
under it for the channel's de-duplication window and answers the repeats
with that event's id instead of storing them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay_server.errors import ConfigError
from relay_server.event_types import lazy_payload, lowered_headers

DEFAULT_WINDOW = 24 * 3600.0
MAX_WINDOW = 30 * 24 * 3600.0
_MAX_ID_LENGTH = 200
# Headers that carry a provider's delivery id, checked in this order.
_ID_HEADERS = ((b"x-github-delivery", "github"), (b"webhook-id", "webhook"), (b"svix-id", "webhook"))

Headers = tuple[tuple[bytes, bytes], ...]


def dedupe_key(
    headers: Headers,
    body: bytes,
    *,
    payload: Callable[[], Any] | None = None,
    lowered: dict[bytes, bytes] | None = None,
) -> str | None:
    """Return ``provider:id`` for a request that carries a provider's delivery id, else None.

    ``payload`` is the request's :func:`~relay_server.event_types.lazy_payload`
    and ``lowered`` its :func:`~relay_server.event_types.lowered_headers`.
    """
    if lowered is None:
        lowered = lowered_headers(headers)
    for header, provider in _ID_HEADERS:
        value = lowered.get(header)
        if value is None:
            continue
        text = value.decode("latin-1").strip()
        if 0 < len(text) <= _MAX_ID_LENGTH:
            return f"{provider}:{text}"
    return _slack_key(lowered) or _stripe_key(lowered, payload or lazy_payload(headers, body, lowered=lowered))


def retry_note(headers: Headers) -> str | None:
    """Describe a provider's retry marker (Slack's retry number and reason), if the request has one."""
    lowered = lowered_headers(headers)
    number = lowered.get(b"x-slack-retry-num")
    if number is None:
        return None
    reason = lowered.get(b"x-slack-retry-reason", b"unknown").decode("latin-1")
    return f"slack retry {number.decode('latin-1')} ({reason})"


def window_of(settings: dict[str, Any]) -> float:
    """Return a channel's de-duplication window in seconds; 0 turns it off."""
    value = settings.get("dedupe_window")
    return DEFAULT_WINDOW if value is None else float(value)


def check_window(raw: Any) -> float:
    """Validate a ``dedupe_window`` setting; raises :class:`ConfigError`."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= MAX_WINDOW:
        raise ConfigError("dedupe window", raw, f"use a number of seconds from 0 (off) to {MAX_WINDOW:.0f} (30 days)")
    return float(raw)


def _slack_key(lowered: dict[bytes, bytes]) -> str | None:
    timestamp = lowered.get(b"x-slack-request-timestamp", b"").decode("latin-1").strip()
    signature = lowered.get(b"x-slack-signature", b"").decode("latin-1").strip()
    if not timestamp or not signature or len(timestamp) + len(signature) > _MAX_ID_LENGTH:
        return None
    return f"slack:{timestamp}:{signature}"


def _stripe_key(lowered: dict[bytes, bytes], parse: Callable[[], Any]) -> str | None:
    payload = parse()
    if not isinstance(payload, dict):
        return None
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= _MAX_ID_LENGTH:
        return None
    if b"stripe-signature" in lowered or payload.get("object") == "event":
        return f"stripe:{event_id}"
    return None
