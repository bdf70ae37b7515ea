"""The wire protocol: frames survive encoding unchanged and defects are rejected."""

import json
import struct

import pytest

from relay_server.protocol import (
    DeliveryResult,
    Event,
    ProtocolError,
    Welcome,
    decode_batch,
    decode_event,
    decode_events,
    decode_text,
    encode_ack,
    encode_batch,
    encode_event,
    encode_welcome,
)

ALL_BYTES = bytes(range(256))


def make_event(**changes):
    fields = dict(
        id="evt_1",
        channel="ch_a",
        seq=7,
        method="POST",
        target=b"/a%2Fb?x=@:&y=%zz",
        headers=((b"X-Name", b"caf\xe9 \x80\xff"), (b"x-rep", b"1"), (b"X-Rep", b"2")),
        body=ALL_BYTES * 3,
        received_at=1700000000.5,
        remote="127.0.0.1",
        scheme="https",
        delivery_count=2,
        event_type="push",
    )
    fields.update(changes)
    return Event(**fields)


def test_event_round_trip_keeps_every_byte():
    """Body, target and header bytes that are not UTF-8 come back identical."""
    event = make_event()
    assert decode_event(encode_event(event)) == event


def test_event_with_encoded_headers_round_trip():
    """Headers the store kept as the frame's JSON list arrive as the same bytes."""
    event = make_event()
    stored = json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in event.headers])
    frame = encode_event(make_event(headers_json=stored))
    assert decode_event(frame) == event
    assert decode_event(frame).headers == event.headers


def test_earlier_attempts_round_trip():
    """A redelivery's earlier attempts travel in the frame; a first delivery leaves the field out."""
    again = make_event(attempts=4)
    first = make_event(attempts=0)
    assert decode_event(encode_event(again)).attempts == 4
    assert decode_event(encode_event(first)).attempts == 0
    assert b'"attempts"' not in encode_event(first)


def test_event_body_is_not_base64():
    """The body follows the header raw, so frames cost one copy of the body."""
    frame = encode_event(make_event(body=b"\x00raw\xff"))
    assert frame.endswith(b"\x00raw\xff")


def test_empty_body_and_target_round_trip():
    """An empty body and an empty tail are kept as empty, not replaced."""
    event = make_event(body=b"", target=b"", headers=())
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"", "binary frame does not start with the event tag"),
        (b"X\x00\x00\x00\x00", "binary frame does not start with the event tag"),
        (b"E" + struct.pack(">I", 99) + b"{}", "event header length 99 exceeds the frame"),
        (b"E" + struct.pack(">I", 2) + b"[]", "event header must be a JSON object"),
        (b"E" + struct.pack(">I", 2) + b"{}", "field 'id' is missing or not a str"),
    ],
)
def test_malformed_event_frames_are_rejected(frame, message):
    """Each defect of a binary frame is named in the error."""
    with pytest.raises(ProtocolError) as info:
        decode_event(frame)
    assert str(info.value) == message


def test_batch_round_trip_keeps_order_and_bytes():
    """A batch frame gives back its events in order, each as its own frame would."""
    events = [make_event(id=f"evt_{n}", seq=n, body=ALL_BYTES[n:]) for n in range(5)]
    frame = encode_batch([encode_event(event) for event in events])
    assert decode_batch(frame) == events
    assert decode_events(frame) == events
    assert decode_events(encode_event(events[0])) == events[:1]


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"B", "batch frame carries no event"),
        (b"B\x00\x00", "batch frame ends inside a length at byte 1"),
        (b"B" + struct.pack(">I", 50) + b"E", "batch member length 50 at byte 5 exceeds the frame"),
        (b"B" + struct.pack(">I", 1) + b"X", "binary frame does not start with the event tag"),
        (b"E" + struct.pack(">I", 0), "binary frame does not start with the batch tag"),
    ],
)
def test_malformed_batch_frames_are_rejected(frame, message):
    """A batch with a cut length, an overlong member or a member that is no event frame is a protocol error."""
    with pytest.raises(ProtocolError) as info:
        decode_batch(frame)
    assert str(info.value) == message


def test_header_code_point_above_255_is_rejected():
    """A header string that cannot stand for bytes is a protocol error."""
    head = json.dumps({"id": "e", "channel": "c", "seq": 1, "method": "POST", "target": "", "headers": [["a", "\u20ac"]]}).encode()
    with pytest.raises(ProtocolError, match="code point above 255"):
        decode_event(b"E" + struct.pack(">I", len(head)) + head)


@pytest.mark.parametrize(
    "headers, message",
    [
        ({"a": "b"}, "event headers must be a list of [name, value] pairs"),
        (["ab"], "each event header must be a [name, value] pair of strings"),
        ([["a", "b", "c"]], "each event header must be a [name, value] pair of strings"),
        ([["a"]], "each event header must be a [name, value] pair of strings"),
        ([["a", 1]], "each event header must be a [name, value] pair of strings"),
        ([[None, "b"]], "each event header must be a [name, value] pair of strings"),
        ([{"a": "b"}], "each event header must be a [name, value] pair of strings"),
        ([["\u0100", "b"]], "invalid byte string: code point above 255 at index 0"),
    ],
)
def test_malformed_event_headers_are_rejected(headers, message):
    """A header list with a member that is not a pair of byte strings is a protocol error."""
    head = json.dumps({"id": "e", "channel": "c", "seq": 1, "method": "POST", "target": "", "headers": headers}).encode()
    with pytest.raises(ProtocolError) as info:
        decode_event(b"E" + struct.pack(">I", len(head)) + head)
    assert str(info.value) == message


def test_ack_round_trip():
    """Ack results keep outcome, status, attempts and error."""
    results = [DeliveryResult("evt_1", "delivered", 200, 1, 3.5), DeliveryResult("evt_2", "failed", None, 10, 9.0, "refused")]
    decoded = decode_text(encode_ack(results))
    assert decoded["type"] == "ack"
    assert decoded["results"] == results


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "text frame is not valid JSON"),
        ("[]", "text frame must be a JSON object with a string 'type'"),
        ('{"type": "nope"}', "unknown frame type 'nope'"),
        ('{"type": "ack", "results": []}', "ack frame needs a non-empty 'results' list"),
        ('{"type": "ack", "results": [{"id": "e", "outcome": "lost"}]}', "ack outcome 'lost' is not one of"),
        ('{"type": "ack", "results": [{"id": "e", "outcome": "delivered", "status": "200"}]}', "ack status must be an integer or null"),
        ('{"type": "ack", "results": [{"id": 5, "outcome": "delivered"}]}', "field 'id' is missing or not a str"),
    ],
)
def test_malformed_text_frames_are_rejected(text, message):
    """Invalid text frames raise ProtocolError with the defect named."""
    with pytest.raises(ProtocolError) as info:
        decode_text(text)
    assert str(info.value).startswith(message)


def test_welcome_round_trip_keeps_extra_fields():
    """Fields a newer relay adds travel in ``extra`` instead of failing."""
    welcome = Welcome("ch_a", "default", "default-1", 64, 1024, 3, 10.0, extra={"url": "http://127.0.0.1/h/ch_a"})
    assert decode_text(encode_welcome(welcome))["welcome"] == welcome


def test_event_header_lookup_is_case_insensitive():
    """Event.header finds the first value whatever the spelling."""
    assert make_event().header("X-REP") == b"1"
    assert make_event().header("missing") is None
