"""Hypothesis sends random requests to a real relay on loopback: no 5xx, no crash, no traceback, bounded memory.

Requests vary the method, the request target (channel or not, odd bytes,
percent escapes), the header list (provider headers, framing headers that
lie, obs-text) and the body (binary, JSON, deeply nested JSON). A few are
not HTTP at all. The relay verifies signatures in mark mode and reads a
configured event-type field, so those paths see the same input.
"""

import json
import string

import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support import rawsocket

EXAMPLES = 150
# Growth of the relay's resident memory over the whole run that still counts
# as bounded: SQLite's page cache and allocator slack, not stored bodies.
MAX_RSS_GROWTH = 64 * 1024 * 1024

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
PROVIDER_HEADERS = [
    "Content-Type", "Content-Length", "Transfer-Encoding", "Content-Encoding", "X-GitHub-Event", "X-GitHub-Delivery",
    "X-Hub-Signature-256", "Stripe-Signature", "X-Slack-Signature", "X-Slack-Request-Timestamp", "X-Shopify-Topic",
    "X-Shopify-Hmac-Sha256", "webhook-id", "webhook-timestamp", "webhook-signature", "X-Hookrelay-Verified", "Connection",
    "Expect", "Host",
]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/octet-stream", "multipart/form-data; boundary=x"]


@pytest.fixture(scope="module")
def fuzz_relay(tmp_path_factory):
    """A relay without rate limits (so requests reach ingest), with one channel that verifies GitHub signatures."""
    log_dir = tmp_path_factory.mktemp("fuzz-ingest")
    process, port = rawsocket.start_relay(log_dir, "--channel-rate", "0", "--address-rate", "0", "--max-body", "64KiB")
    try:
        channel, token = rawsocket.create_channel(port)
        settings_status = rawsocket.patch_channel(
            port, channel, token, {"verify": {"provider": "github", "secret": "fuzz-secret", "mode": "mark"}, "event_type": {"json": "a.b.0"}}
        )
        assert settings_status == 200
        yield process, port, channel
    finally:
        rawsocket.stop(process)


header_value = st.one_of(
    st.sampled_from(CONTENT_TYPES).map(str.encode),
    st.sampled_from(["0", "5", "-1", "99999999999", "chunked", "gzip", "sha256=" + "a" * 64, "t=1,v1=00", "100-continue", "close"]).map(str.encode),
    # Visible ASCII and obs-text (0x80-0xFF), which HTTP allows in values.
    st.binary(max_size=80).map(lambda data: bytes(byte for byte in data if 0x20 <= byte < 0x7F or byte >= 0x80)),
    st.binary(max_size=20).map(lambda data: bytes(byte for byte in data if byte not in b"\r\n")),
)
header_name = st.one_of(st.sampled_from(PROVIDER_HEADERS), st.text(TOKEN_CHARS, min_size=1, max_size=30))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
body = st.one_of(
    st.binary(max_size=2048),
    json_value.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.just(b""),
)
tail = st.one_of(
    st.just(""),
    st.text(string.ascii_letters + string.digits + "/%?&=.-_~:@!$'()*+,;", max_size=60).map(lambda text: "/" + text),
    st.binary(max_size=40).map(lambda data: "/" + "".join(f"%{byte:02X}" if byte < 0x21 or byte > 0x7E else chr(byte) for byte in data)),
)
method = st.one_of(
    st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=10),
)


@st.composite
def requests(draw, channel: str) -> bytes:
    """Draw one request as bytes, usually well-formed HTTP/1.1, sometimes not."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    where = draw(st.sampled_from([f"/h/{channel}"] * 4 + ["/h/ch_unknown", "/h/", "/api/channels", f"/api/channels/{channel}", "/"]))
    target = where + draw(tail)
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=12))
    payload = draw(body)
    lines = [f"{draw(method)} {target} HTTP/1.1".encode(), b"Host: relay"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
        lines.append(b"Content-Length: %d" % len(payload))
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def test_ingest_fuzz_no_server_errors(fuzz_relay):
    """No request makes the relay answer 5xx, log a traceback or stop; its memory stays bounded."""
    process, port, channel = fuzz_relay
    rss_before = psutil.Process(process.pid).memory_info().rss

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests(channel))
    def send(request: bytes) -> None:
        answer = rawsocket.exchange(port, request)
        event(f"first status {(rawsocket.statuses(answer) or ['none'])[0]}")
        server_errors = [status for status in rawsocket.statuses(answer) if status >= 500]
        assert not server_errors, f"{server_errors} for {request[:300]!r}:\n{answer[:500]!r}"
        assert process.returncode is None, process.stderr_tail()

    send()

    rss_after = psutil.Process(process.pid).memory_info().rss
    assert not rawsocket.process_output_has_traceback(process), process.stderr_tail(40)
    assert rss_after - rss_before < MAX_RSS_GROWTH, f"resident memory grew by {(rss_after - rss_before) / 2**20:.0f} MiB"
