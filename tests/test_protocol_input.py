"""Frames from a listener are untrusted: every defect in an ack or attempt frame is a ProtocolError."""

import json

import pytest

from relay_server.protocol import ProtocolError, decode_text


@pytest.mark.parametrize(
    "message",
    [
        {"type": "ack", "results": [{"id": "e", "outcome": "delivered", "duration_ms": "abc"}]},
        {"type": "ack", "results": [{"id": "e", "outcome": "delivered", "duration_ms": [1]}]},
        {"type": "ack", "results": [{"id": "e", "outcome": "delivered", "duration_ms": True}]},
        {"type": "attempt", "id": "e", "attempt": 1, "duration_ms": {"ms": 1}},
        {"type": "attempt", "id": "e", "attempt": 1, "duration_ms": "1.5"},
    ],
)
def test_malformed_numbers_are_protocol_errors(message):
    """A number field holding anything but a number raises ProtocolError, which closes the session with 4400."""
    with pytest.raises(ProtocolError) as info:
        decode_text(json.dumps(message))

    assert "duration_ms" in str(info.value)


def test_absent_or_null_duration_is_zero():
    message = decode_text('{"type": "ack", "results": [{"id": "e", "outcome": "skipped", "duration_ms": null}]}')

    assert message["results"][0].duration_ms == 0.0
