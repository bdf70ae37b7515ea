"""Detect the provider's event type of a webhook, for display and history.

Headers come first because they cost nothing to read. A JSON body is parsed
only when it is small, and only to read a top-level ``type`` or ``action``.
"""

from __future__ import annotations

import json

# Header that names the event, per provider, checked in this order.
_TYPE_HEADERS = (
    b"x-github-event",
    b"x-gitlab-event",
    b"x-gitea-event",
    b"x-shopify-topic",
    b"x-event-key",
    b"x-hook-event",
)
_MAX_JSON_PARSE = 256 * 1024


def detect_event_type(headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> str | None:
    """Return a short event type such as ``issues.opened`` or ``invoice.paid``, or None."""
    lowered = {name.lower(): value for name, value in reversed(headers)}
    payload = _small_json(lowered.get(b"content-type", b""), body)
    for name in _TYPE_HEADERS:
        if name in lowered:
            base = lowered[name].decode("latin-1").strip()
            action = payload.get("action") if isinstance(payload, dict) else None
            return f"{base}.{action}" if isinstance(action, str) and name == b"x-github-event" else base
    if isinstance(payload, dict):
        for key in ("type", "event_type", "event"):
            value = payload.get(key)
            if isinstance(value, str) and 0 < len(value) <= 100:
                return value
            if isinstance(value, dict) and isinstance(value.get("type"), str):
                # Slack Events API nests the type: {"event": {"type": "message"}}.
                return value["type"]
    return None


def _small_json(content_type: bytes, body: bytes) -> object:
    if len(body) > _MAX_JSON_PARSE or b"json" not in content_type.lower():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
