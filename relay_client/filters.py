"""Decide which events the listener forwards: ``--events`` and ``--filter``.

``--events push,issues.opened`` keeps events whose provider event type
matches one of the patterns. A pattern matches the type itself, every type
below it (``issues`` matches ``issues.opened``), or a shell-style glob
(``invoice.*``). Events without a detected type never match.

``--filter SOURCE:NAME=VALUE`` tests one field of the request:

* ``header:X-GitHub-Event=push``: any value of the header (name in any case);
* ``query:source=ci``: any value of the query parameter, percent-decoded;
* ``json:pull_request.base.ref=main``: a dotted path into a JSON body
  (list items by index); strings compare as they are, other values as
  JSON text (``true``, ``42``, ``null``).

``VALUE`` may be a glob (``refs/heads/release-*``). ``NAME!=VALUE`` keeps
events where no value matches, absent fields included, and a bare
``SOURCE:NAME`` keeps events where the field is present. Every given
filter and ``--events`` must pass (logical AND). An event that fails is
acknowledged as ``skipped`` with the reason, and is not forwarded.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from relay_client.errors import UsageError
from relay_server.protocol import Event

SOURCES = ("header", "query", "json")
_ABSENT = object()


def type_matches(pattern: str, event_type: str | None) -> bool:
    """Match an event type against ``push``, ``issues`` (with its ``issues.*``) or a glob."""
    if event_type is None:
        return False
    return event_type == pattern or event_type.startswith(pattern + ".") or fnmatch.fnmatchcase(event_type, pattern)


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """One ``--filter``: a source, a field name, an operator and a value glob."""

    source: str
    name: str
    operator: str  # "=", "!=" or "present"
    value: str = ""

    def __str__(self) -> str:
        if self.operator == "present":
            return f"{self.source}:{self.name}"
        return f"{self.source}:{self.name}{self.operator}{self.value}"

    def passes(self, values: list[str]) -> bool:
        if self.operator == "present":
            return bool(values)
        matched = any(fnmatch.fnmatchcase(value, self.value) for value in values)
        return matched if self.operator == "=" else not matched


def parse_filter(text: str) -> FieldFilter:
    """Parse ``header:NAME=VALUE``, ``query:NAME!=VALUE``, ``json:PATH`` and the like."""
    source, colon, rest = text.partition(":")
    if not colon or source not in SOURCES:
        raise UsageError("--filter", text, "start with header:, query: or json:, e.g. header:X-GitHub-Event=push")
    name, equals, value = rest.partition("=")
    if not equals:
        operator = "present"
    elif name.endswith("!"):
        name, operator = name[:-1], "!="
    else:
        operator = "="
    if not name.strip():
        raise UsageError("--filter", text, "name the field after the source, e.g. json:action=opened")
    return FieldFilter(source, name.strip(), operator, value)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """``--events`` patterns and ``--filter`` tests; an empty filter keeps every event."""

    event_types: tuple[str, ...] = ()
    fields: tuple[FieldFilter, ...] = ()

    @classmethod
    def parse(cls, events: list[str] | None, filters: list[str] | None) -> EventFilter:
        patterns = tuple(item.strip() for value in events or () for item in value.split(",") if item.strip())
        return cls(patterns, tuple(parse_filter(text) for text in filters or ()))

    def __bool__(self) -> bool:
        return bool(self.event_types or self.fields)

    def rejection(self, event: Event) -> str | None:
        """Return why ``event`` is filtered out, or None when it passes."""
        if self.event_types and not any(type_matches(pattern, event.event_type) for pattern in self.event_types):
            return f"event type {event.event_type or '(none)'} is not in --events {','.join(self.event_types)}"
        document: Any = _ABSENT
        for test in self.fields:
            if test.source == "json" and document is _ABSENT:
                document = _json_body(event.body)
            if not test.passes(_values(test, event, document)):
                return f"filter {test} did not match"
        return None


def _values(test: FieldFilter, event: Event, document: Any) -> list[str]:
    if test.source == "header":
        header_name = test.name.lower().encode("latin-1", "replace")
        return [value.decode("utf-8", "replace") for name, value in event.headers if name.lower() == header_name]
    if test.source == "query":
        query = event.target.partition(b"?")[2].decode("latin-1")
        pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace")
        return [value for name, value in pairs if name == test.name]
    value = _json_path(document, test.name)
    if value is _ABSENT:
        return []
    return [value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))]


def _json_path(document: Any, path: str) -> Any:
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _ABSENT
    return value


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _ABSENT
