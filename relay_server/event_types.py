"""Detect the provider's event type of a webhook, for display, filters and routes.

A channel may name where its type lives (a header, or a dotted field of a
JSON body); otherwise the provider is recognised by its headers and body:

* GitHub: ``X-GitHub-Event`` plus the body's ``action``, as ``issues.opened``;
* Shopify: the ``X-Shopify-Topic`` header, such as ``orders/create``;
* Slack: the Events API nests the type (``{"type": "event_callback",
  "event": {"type": "app_mention"}}`` gives ``app_mention``); interactive
  payloads arrive form-encoded in a ``payload`` field;
* Stripe and Standard Webhooks: the body's top-level ``type``;
* GitLab, Gitea, Bitbucket and others: their event header.

Headers come first because they cost nothing to read. A body is parsed
only when detection needs it and it is at most 256 KiB, and a body that is
not valid JSON, or is nested too deeply to parse, simply has no type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from relay_server.errors import ConfigError
from relay_server.protocol import load_json

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
_MAX_TYPE_LENGTH = 100
# Marker of a lazy payload not parsed yet, because None is a valid parse result.
_UNPARSED = object()

Headers = tuple[tuple[bytes, bytes], ...]


def lowered_headers(headers: Headers) -> dict[bytes, bytes]:
    """Map each lower-cased header name to the value of its first occurrence.

    Screening builds this once per request and passes it to detection and
    de-duplication, so header names are lower-cased once.
    """
    return {name.lower(): value for name, value in reversed(headers)}


def lazy_payload(headers: Headers, body: bytes, *, lowered: dict[bytes, bytes] | None = None) -> Callable[[], Any]:
    """Return a function that parses the body as :func:`small_payload` does, once, on its first call.

    Detection and de-duplication of one request share it, so a body is
    parsed at most once, and only when no header already names the type.
    ``lowered`` is the request's :func:`lowered_headers`.
    """
    if lowered is None:
        content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    else:
        content_type = lowered.get(b"content-type", b"")
    parsed: Any = _UNPARSED

    # This closure replaces functools.cache, because building a cache wrapper
    # on every request costs several times more than building a closure.
    def parse() -> Any:
        nonlocal parsed
        if parsed is _UNPARSED:
            parsed = small_payload(content_type, body)
        return parsed

    return parse


def detect_event_type(
    headers: Headers,
    body: bytes,
    source: dict[str, str] | None = None,
    *,
    payload: Callable[[], Any] | None = None,
    lowered: dict[bytes, bytes] | None = None,
) -> str | None:
    """Return a short event type such as ``issues.opened`` or ``invoice.paid``, or None.

    ``source`` is a channel's ``event_type`` setting: ``{"header": name}``
    or ``{"json": "dotted.path"}``. When it finds nothing, detection falls
    back to the providers above. ``payload`` comes from :func:`lazy_payload`
    and ``lowered`` from :func:`lowered_headers`.
    """
    if lowered is None:
        lowered = lowered_headers(headers)
    payload = payload or lazy_payload(headers, body, lowered=lowered)
    configured = _from_source(source, lowered, payload) if source else None
    if configured is not None:
        return configured
    for name in _TYPE_HEADERS:
        if name in lowered:
            base = _short(lowered[name].decode("latin-1").strip())
            if name == b"x-github-event" and base:
                document = payload()
                action = document.get("action") if isinstance(document, dict) else None
                if _short(action):
                    return f"{base}.{action}"
            return base
    document = payload()
    return _from_payload(document) if isinstance(document, dict) else None


def check_source(raw: Any) -> dict[str, str]:
    """Validate a channel's ``event_type`` setting; raises :class:`ConfigError`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError("event_type", raw, 'use {"header": "X-Event-Name"} or {"json": "data.kind"}')
    (kind, where), = raw.items()
    if kind not in ("header", "json") or not isinstance(where, str) or not where.strip():
        raise ConfigError("event_type", raw, 'use {"header": "X-Event-Name"} or {"json": "data.kind"}')
    if not where.isascii() or any(char in where for char in " \t\r\n:"):
        raise ConfigError(f"event_type {kind}", where, "use a header name or a dotted field path without spaces")
    return {kind: where.strip()}


def json_field(document: Any, path: str) -> Any:
    """Follow a dotted path (``data.object.id``; list items by index) and return the value, or None."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _from_source(source: dict[str, str], lowered: dict[bytes, bytes], payload: Callable[[], Any]) -> str | None:
    if "header" in source:
        value = lowered.get(source["header"].lower().encode("latin-1"))
        return _short(value.decode("latin-1").strip()) if value is not None else None
    value = json_field(payload(), source["json"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return _short(value)


def _from_payload(payload: dict[str, Any]) -> str | None:
    kind = payload.get("type")
    nested = payload.get("event")
    if kind == "event_callback" and isinstance(nested, dict) and _short(nested.get("type")):
        return nested["type"]
    for value in (kind, payload.get("event_type"), nested):
        if _short(value):
            return value
        if isinstance(value, dict) and _short(value.get("type")):
            return value["type"]
    return None


def _short(value: Any) -> str | None:
    """Return ``value`` when it is a non-empty string of at most 100 characters."""
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_TYPE_LENGTH else None


def small_payload(content_type: bytes, body: bytes) -> Any:
    """Parse a small JSON body, or the JSON ``payload`` field of a small form body."""
    if len(body) > _MAX_JSON_PARSE:
        return None
    content_type = content_type.lower()
    if b"json" in content_type:
        return _parse_json(body)
    if b"x-www-form-urlencoded" in content_type:
        try:
            fields = parse_qs(body.decode("latin-1"), encoding="utf-8", errors="replace", max_num_fields=100)
        except ValueError:
            return None
        payload = fields.get("payload")
        return _parse_json(payload[0]) if payload else None
    return None


def _parse_json(data: bytes | str) -> Any:
    try:
        return load_json(data)
    except (ValueError, RecursionError):
        # A body nested thousands of levels deep exhausts the parser's stack.
        return None
