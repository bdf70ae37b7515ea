"""Hypothesis sends random and malformed websocket frames to a real relay's listener endpoint.

Each example opens a listener connection with the channel's token and
writes frames: well-formed text frames holding JSON that looks like the
protocol (acks, attempts, unknown types, wrong field types), binary frames
that look like response frames, and raw bytes that break the framing
(unmasked frames, reserved bits, bad opcodes, lying lengths, fragmented
control frames). Afterwards the relay must still accept listeners and
webhooks, must not have logged a traceback, and its memory must stay
bounded.
"""

import json
import os
import struct

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import rawsocket

EXAMPLES = 120
READ_SECONDS = 0.05
MAX_RSS_GROWTH = 64 * 1024 * 1024

scalar = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True) | st.text(max_size=20)
loose_json = st.recursive(scalar, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5), max_leaves=15)
VALID_RESULT = {"id": "evt_0000", "outcome": "delivered", "status": 200, "attempts": 1, "duration_ms": 1.5, "error": None}
VALID_ATTEMPT = {"type": "attempt", "id": "evt_0000", "attempt": 1, "status": 503, "duration_ms": 2.0, "error": "HTTP 503"}


@st.composite
def nearly_valid(draw, valid: dict) -> dict:
    """A valid protocol object with one field replaced by any JSON value and maybe one field left out."""
    item = dict(valid)
    item[draw(st.sampled_from(sorted(item)))] = draw(scalar)
    if draw(st.booleans()):
        del item[draw(st.sampled_from(sorted(item)))]
    return item


protocol_like = st.one_of(
    st.fixed_dictionaries({"type": st.just("ack"), "results": st.lists(nearly_valid(VALID_RESULT), min_size=1, max_size=3)}),
    st.fixed_dictionaries({"type": st.just("ack"), "results": loose_json}),
    nearly_valid(VALID_ATTEMPT),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["welcome", "error", "hello", ""]), scalar)}),
    loose_json,
)
text_frame = st.one_of(protocol_like.map(json.dumps), st.text(max_size=200))


@st.composite
def response_like(draw) -> bytes:
    """A binary frame shaped like the listener's response frame, with a header that may lie."""
    header = json.dumps(draw(st.one_of(st.fixed_dictionaries({"id": st.text(max_size=10), "status": scalar, "headers": loose_json}), loose_json))).encode()
    declared = draw(st.one_of(st.just(len(header)), st.integers(0, 2**32 - 1)))
    tag = draw(st.sampled_from([b"R", b"E", b"X", b""]))
    return tag + struct.pack(">I", declared) + header + draw(st.binary(max_size=100))


@st.composite
def malformed(draw) -> bytes:
    """Raw bytes that break websocket framing in one of the ways RFC 6455 forbids."""
    kind = draw(st.sampled_from(["unmasked", "reserved", "opcode", "fragmented_control", "long_ping", "bad_close", "truncated", "garbage"]))
    payload = draw(st.binary(max_size=64))
    if kind == "unmasked":
        return rawsocket.client_frame(0x1, payload, mask=b"")
    if kind == "reserved":
        return rawsocket.client_frame(0x1, payload, rsv=draw(st.integers(1, 7)))
    if kind == "opcode":
        return rawsocket.client_frame(draw(st.sampled_from([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])), payload)
    if kind == "fragmented_control":
        return rawsocket.client_frame(0x9, payload, fin=False)
    if kind == "long_ping":
        return rawsocket.client_frame(0x9, os.urandom(200))
    if kind == "bad_close":
        return rawsocket.client_frame(0x8, struct.pack("!H", draw(st.sampled_from([0, 999, 1004, 1005, 1006, 5000]))) + b"\xff\xfe")
    if kind == "truncated":
        return rawsocket.client_frame(0x2, payload + b"x" * 200)[: draw(st.integers(1, 100))]
    return draw(st.binary(min_size=1, max_size=200))


frames = st.lists(
    st.one_of(
        text_frame.map(lambda text: rawsocket.client_frame(0x1, text.encode())),
        response_like().map(lambda data: rawsocket.client_frame(0x2, data)),
        st.binary(max_size=100).map(lambda data: rawsocket.client_frame(0x1, data)),
        malformed(),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def fuzz_relay(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("fuzz-websocket")
    process, port = rawsocket.start_relay(log_dir, "--address-rate", "0", "--max-body", "64KiB")
    try:
        channel, token = rawsocket.create_channel(port)
        yield process, port, channel, token
    finally:
        rawsocket.stop(process)


def test_websocket_fuzz_no_crash(fuzz_relay):
    """No sequence of frames crashes the relay, leaves a traceback in its log, or grows its memory without bound."""
    process, port, channel, token = fuzz_relay
    rss_before = psutil.Process(process.pid).memory_info().rss

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sequence=frames)
    def send(sequence: list[bytes]) -> None:
        connection, received = rawsocket.open_websocket(port, channel, token)
        try:
            for frame in sequence:
                connection.sendall(frame)
            received += rawsocket.drain(connection, READ_SECONDS)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            connection.close()
        assert process.returncode is None, process.stderr_tail()
        # The relay closes with 1000 only in answer to a client's close; a
        # 1000 of its own means a session ended on an exception it swallowed.
        client_closed = any(len(frame) > 1 and frame[0] & 0x0F == 0x8 for frame in sequence)
        assert client_closed or 1000 not in rawsocket.server_close_codes(received), f"normal close after {sequence!r}"
        assert not rawsocket.process_output_has_traceback(process), f"after {sequence!r}:\n{process.stderr_tail(40)}"

    send()

    # The relay still serves listeners and webhooks.
    rawsocket.open_websocket(port, channel, token)[0].close()
    answer = rawsocket.exchange(port, f"POST /h/{channel} HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    assert rawsocket.statuses(answer) == [202], answer[:300]
    rss_after = psutil.Process(process.pid).memory_info().rss
    assert rss_after - rss_before < MAX_RSS_GROWTH, f"resident memory grew by {(rss_after - rss_before) / 2**20:.0f} MiB"
