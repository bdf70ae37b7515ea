"""Wire protocol between a relay and its listeners: one definition for both sides.

This module does no I/O and imports nothing else of the project, so the
relay's websocket session, the listener's connection and fast tests all use
the same encoders and validators. ``docs/protocol.md`` describes the format
for people; this module is the reference.

Frames travel as websocket messages:

* relay → listener, text: ``welcome`` (session parameters) and ``error``.
* relay → listener, binary: ``event`` frames. A binary frame is the tag byte
  ``E``, a 4-byte big-endian length of a JSON header, the header, then the
  raw body. The body is never base64-encoded or re-encoded. A listener that
  connects with ``batch=1`` may also get ``batch`` frames (tag ``B``): event
  frames, each behind its 4-byte length, so that a burst costs one message.
* listener → relay, text: ``ack`` frames that carry the outcome of one or
  more deliveries (delivered, failed, skipped) with the target's status,
  and ``attempt`` frames for each failed attempt that will be retried.
* listener → relay, binary: ``response`` frames (tag ``R``) with the
  target's status, headers and body, for events the relay marked
  ``respond`` because a sender is waiting for that response.

Header names and values, the request target and the remote address are
carried as "byte strings in JSON": each byte maps to the code point of the
same value (Latin-1), so bytes that are not valid UTF-8 survive the trip.
"""

from __future__ import annotations

import json
import struct
import dataclasses
from dataclasses import dataclass, field
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is an optional speed-up
    orjson = None

__all__ = [
    "PROTOCOL_VERSION",
    "EVENT_TAG",
    "BATCH_TAG",
    "ProtocolError",
    "Event",
    "DeliveryResult",
    "Welcome",
    "encode_event",
    "decode_event",
    "encode_batch",
    "decode_batch",
    "decode_events",
    "TargetResponse",
    "encode_response",
    "decode_response",
    "AttemptReport",
    "encode_attempt",
    "encode_welcome",
    "encode_ack",
    "encode_error",
    "decode_text",
    "bytes_to_wire",
    "wire_to_bytes",
    "dump_json",
    "load_json",
]

PROTOCOL_VERSION = 1
EVENT_TAG = b"E"
BATCH_TAG = b"B"
RESPONSE_TAG = b"R"
_LENGTH = struct.Struct(">I")


def dump_json(value: Any) -> bytes:
    """Encode ``value`` as compact JSON in UTF-8, with orjson when it is installed.

    orjson rejects lone surrogates and integers beyond 64 bits, which the
    standard library encodes, so those values fall back to :mod:`json`.
    """
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def load_json(data: bytes | str) -> Any:
    """Parse JSON like :func:`json.loads`, with orjson when it is installed.

    Input that orjson rejects (lone surrogate escapes, NaN, integers beyond
    64 bits, or invalid JSON) goes to :mod:`json`, so the result and the
    ``ValueError`` text are those of the standard library.
    """
    if orjson is not None:
        try:
            return orjson.loads(data)
        except ValueError:
            pass
    return json.loads(data)

# Outcomes a listener may report for an event it received.
OUTCOMES = frozenset({"delivered", "failed", "skipped"})

# Close codes used by both sides, in the 4000-4999 range that RFC 6455
# leaves to applications.
CLOSE_UNAUTHORIZED = 4401
CLOSE_PROTOCOL_ERROR = 4400
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


class ProtocolError(ValueError):
    """Raised when a frame breaks the wire protocol; the message names the defect."""


def bytes_to_wire(data: bytes) -> str:
    """Map raw bytes to a JSON-safe string, one code point per byte."""
    return data.decode("latin-1")


def wire_to_bytes(text: str) -> bytes:
    """Invert :func:`bytes_to_wire`; rejects code points above 255."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"invalid byte string: code point above 255 at index {exc.start}") from None


@dataclass(slots=True)
class Event:
    """One stored webhook request as the relay hands it to a listener.

    ``target`` is the raw request target below the channel URL: the path
    tail and query exactly as the sender wrote them (``/a%2Fb?x=1``, or
    empty). ``headers`` keeps order, spelling and repeated names.

    Nothing changes an event once it is built: the relay's store hands the
    same object to later claims, and changed copies come from
    ``dataclasses.replace``. The class is not frozen all the same, because
    one is built per event on both sides and a frozen dataclass took three
    times as long to build (1.6 against 0.5 us here).
    """

    id: str
    channel: str
    seq: int
    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    received_at: float
    remote: str = ""
    scheme: str = "http"
    delivery_count: int = 1
    event_type: str | None = None
    # Unix time until which a sender waits for the target's response (sync
    # channels); the relay sets ``respond`` on the frame while it is ahead.
    respond_until: float | None = None
    respond: bool = False
    # The relay's signature check, as the X-Hookrelay-Verified value
    # ("github; result=valid"), or None when the channel verifies nothing.
    verification: str | None = None
    # Attempts that earlier deliveries of this event to the group already
    # made, as their reports recorded them. A listener that takes over after
    # another one stopped mid-retry numbers its attempts after these, so the
    # --max-attempts budget counts every attempt.
    attempts: int = 0
    # ``headers`` already encoded as the frame's JSON list of byte strings,
    # when a store keeps them in that form; encode_event then sends it as is.
    # It must describe the same headers; decode_event never sets it.
    headers_json: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def header(self, name: str) -> bytes | None:
        """Return the first value of header ``name`` (case-insensitive), if any."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(slots=True)
class DeliveryResult:
    """Outcome of one event, as the listener reports it when it is done with the event.

    Not frozen, like :class:`Event`: one is built per event on both sides.
    """

    event_id: str
    outcome: str
    status: int | None = None
    attempts: int = 1
    duration_ms: float = 0.0
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.event_id,
            "outcome": self.outcome,
            "status": self.status,
            "attempts": self.attempts,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
        }

    @classmethod
    def from_wire(cls, item: Any) -> DeliveryResult:
        if not isinstance(item, dict):
            raise ProtocolError("ack result must be an object")
        event_id = _require(item, "id", str)
        outcome = _require(item, "outcome", str)
        if outcome not in OUTCOMES:
            raise ProtocolError(f"ack outcome {outcome!r} is not one of {sorted(OUTCOMES)}")
        status = item.get("status")
        if status is not None and not isinstance(status, int):
            raise ProtocolError("ack status must be an integer or null")
        error = item.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError("ack error must be a string or null")
        return cls(
            event_id=event_id,
            outcome=outcome,
            status=status,
            attempts=_optional_int(item, "attempts", 1),
            duration_ms=_optional_number(item, "duration_ms"),
            error=error,
        )


@dataclass(frozen=True, slots=True)
class Welcome:
    """Session parameters the relay sends first on every listener connection."""

    channel: str
    group: str
    consumer: str
    window: int
    max_body: int
    backlog: int
    heartbeat: float
    version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def encode_event(event: Event) -> bytes:
    """Build the binary frame for ``event``: tag, header length, header, body."""
    header = {
        "id": event.id,
        "channel": event.channel,
        "seq": event.seq,
        "method": event.method,
        "target": bytes_to_wire(event.target),
        "received_at": event.received_at,
        "remote": event.remote,
        "scheme": event.scheme,
        "delivery_count": event.delivery_count,
        "event_type": event.event_type,
        "respond": event.respond,
        "verification": event.verification,
    }
    if event.attempts:
        header["attempts"] = event.attempts
    if event.headers_json is None:
        header["headers"] = [[bytes_to_wire(k), bytes_to_wire(v)] for k, v in event.headers]
        return _binary_frame(EVENT_TAG, header, event.body)

    # Splice the stored list in as the last member: the header object's
    # closing brace is the encoded text's last byte.
    head = dump_json(header)
    head = b"".join((head[:-1], b',"headers":', event.headers_json.encode(), b"}"))
    return b"".join((EVENT_TAG, _LENGTH.pack(len(head)), head, event.body))


def _binary_frame(tag: bytes, header: dict[str, Any], body: bytes) -> bytes:
    head = dump_json(header)
    return b"".join((tag, _LENGTH.pack(len(head)), head, body))


def _split_binary(frame: bytes | memoryview, tag: bytes, kind: str) -> tuple[dict[str, Any], bytes]:
    view = memoryview(frame)
    if len(view) < 5 or view[:1] != tag:
        raise ProtocolError(f"binary frame does not start with the {kind} tag")
    (length,) = _LENGTH.unpack_from(view, 1)
    if 5 + length > len(view):
        raise ProtocolError(f"{kind} header length {length} exceeds the frame")
    try:
        header = load_json(bytes(view[5 : 5 + length]))
    except ValueError as exc:
        raise ProtocolError(f"{kind} header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"{kind} header must be a JSON object")
    return header, bytes(view[5 + length :])


def decode_event(frame: bytes | memoryview) -> Event:
    """Parse a binary event frame; raises :class:`ProtocolError` on any defect."""
    header, body = _split_binary(frame, EVENT_TAG, "event")
    return Event(
        id=_require(header, "id", str),
        channel=_require(header, "channel", str),
        seq=_require(header, "seq", int),
        method=_require(header, "method", str),
        target=wire_to_bytes(_require(header, "target", str)),
        headers=_decode_headers(header.get("headers")),
        body=body,
        received_at=float(header.get("received_at") or 0.0),
        remote=str(header.get("remote") or ""),
        scheme=str(header.get("scheme") or "http"),
        delivery_count=_optional_int(header, "delivery_count", 1),
        attempts=_optional_int(header, "attempts", 0),
        event_type=header.get("event_type") if isinstance(header.get("event_type"), str) else None,
        respond=header.get("respond") is True,
        verification=header.get("verification") if isinstance(header.get("verification"), str) else None,
    )


def encode_batch(frames: list[bytes]) -> bytes:
    """Pack event frames from :func:`encode_event` into one ``batch`` frame."""
    parts = [BATCH_TAG]
    for frame in frames:
        parts += (_LENGTH.pack(len(frame)), frame)
    return b"".join(parts)


def decode_batch(frame: bytes) -> list[Event]:
    """Parse a ``batch`` frame into its events; raises :class:`ProtocolError` on any defect."""
    view = memoryview(frame)
    if view[:1] != BATCH_TAG:
        raise ProtocolError("binary frame does not start with the batch tag")
    events = []
    offset = 1
    while offset < len(view):
        if offset + 4 > len(view):
            raise ProtocolError(f"batch frame ends inside a length at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ProtocolError(f"batch member length {length} at byte {offset} exceeds the frame")
        events.append(decode_event(view[offset : offset + length]))
        offset += length
    if not events:
        raise ProtocolError("batch frame carries no event")
    return events


def decode_events(frame: bytes) -> list[Event]:
    """Parse a binary frame from the relay, an ``event`` or a ``batch``, into its events."""
    if frame[:1] == BATCH_TAG:
        return decode_batch(frame)
    return [decode_event(frame)]


@dataclass(frozen=True, slots=True)
class TargetResponse:
    """The target's response to an event, carried back for a waiting sender."""

    event_id: str
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def encode_response(response: TargetResponse) -> bytes:
    header = {
        "id": response.event_id,
        "status": response.status,
        "headers": [[bytes_to_wire(k), bytes_to_wire(v)] for k, v in response.headers],
    }
    return _binary_frame(RESPONSE_TAG, header, response.body)


def decode_response(frame: bytes) -> TargetResponse:
    header, body = _split_binary(frame, RESPONSE_TAG, "response")
    status = _require(header, "status", int)
    if not 100 <= status <= 599:
        raise ProtocolError(f"response status {status} is outside 100-599")
    return TargetResponse(_require(header, "id", str), status, _decode_headers(header.get("headers")), body)


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """One failed attempt that the listener will retry, for the event's history."""

    event_id: str
    attempt: int
    status: int | None
    duration_ms: float
    error: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"type": "attempt", "id": self.event_id, "attempt": self.attempt, "status": self.status,
                "duration_ms": round(self.duration_ms, 3), "error": self.error}


def encode_attempt(report: AttemptReport) -> str:
    return json.dumps(report.to_wire(), separators=(",", ":"))


def encode_welcome(welcome: Welcome) -> str:
    body = {
        "type": "welcome",
        "version": welcome.version,
        "channel": welcome.channel,
        "group": welcome.group,
        "consumer": welcome.consumer,
        "window": welcome.window,
        "max_body": welcome.max_body,
        "backlog": welcome.backlog,
        "heartbeat": welcome.heartbeat,
        **welcome.extra,
    }
    return json.dumps(body, separators=(",", ":"))


def encode_ack(results: list[DeliveryResult]) -> str:
    """Build one ``ack`` frame for a batch of finished deliveries."""
    return dump_json({"type": "ack", "results": [r.to_wire() for r in results]}).decode()


def encode_error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message}, separators=(",", ":"))


def decode_text(text: str) -> dict[str, Any]:
    """Parse a text frame into a dict with a known ``type``; validates ack results."""
    try:
        message = load_json(text)
    except ValueError as exc:
        raise ProtocolError(f"text frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("text frame must be a JSON object with a string 'type'")
    kind = message["type"]
    if kind == "ack":
        results = message.get("results")
        if not isinstance(results, list) or not results:
            raise ProtocolError("ack frame needs a non-empty 'results' list")
        message["results"] = [DeliveryResult.from_wire(item) for item in results]
    elif kind == "welcome":
        message["welcome"] = _decode_welcome(message)
    elif kind == "attempt":
        status = message.get("status")
        if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
            raise ProtocolError("attempt status must be an integer or null")
        error = message.get("error")
        message["report"] = AttemptReport(
            event_id=_require(message, "id", str),
            attempt=_require(message, "attempt", int),
            status=status,
            duration_ms=_optional_number(message, "duration_ms"),
            error=error if isinstance(error, str) else None,
        )
    elif kind != "error":
        raise ProtocolError(f"unknown frame type {kind!r}")
    return message


def _decode_welcome(message: dict[str, Any]) -> Welcome:
    known = {"type", "version", "channel", "group", "consumer", "window", "max_body", "backlog", "heartbeat"}
    return Welcome(
        channel=_require(message, "channel", str),
        group=_require(message, "group", str),
        consumer=_require(message, "consumer", str),
        window=_require(message, "window", int),
        max_body=_require(message, "max_body", int),
        backlog=_optional_int(message, "backlog", 0),
        heartbeat=float(message.get("heartbeat") or 0.0),
        version=_optional_int(message, "version", PROTOCOL_VERSION),
        extra={k: v for k, v in message.items() if k not in known},
    )


def _decode_headers(raw: Any) -> tuple[tuple[bytes, bytes], ...]:
    """Turn the header list of an event frame back into byte pairs.

    A listener runs this for every header of every event, so the checks are
    written out instead of going through :func:`wire_to_bytes` per value.
    """
    if not isinstance(raw, list):
        raise ProtocolError("event headers must be a list of [name, value] pairs")
    pairs = []
    for item in raw:
        if type(item) is not list or len(item) != 2:
            raise ProtocolError("each event header must be a [name, value] pair of strings")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise ProtocolError("each event header must be a [name, value] pair of strings")
        try:
            pairs.append((name.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError as exc:
            raise ProtocolError(f"invalid byte string: code point above 255 at index {exc.start}") from None
    return tuple(pairs)


def _require(source: dict[str, Any], key: str, kind: type) -> Any:
    value = source.get(key)
    # bool is an int subclass; a flag is never a valid count or id.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} is missing or not a {kind.__name__}")
    return value


def _optional_number(source: dict[str, Any], key: str) -> float:
    """Read an optional number (0.0 when absent or null); raises :class:`ProtocolError` for anything else."""
    value = source.get(key)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"field {key!r} must be a number")
    return float(value)


def _optional_int(source: dict[str, Any], key: str, default: int) -> int:
    value = source.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be an integer")
    return value
