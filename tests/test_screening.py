"""Screening of one ingested request: the de-duplication key and event type, and how often the body is parsed."""

import json
import time

import pytest

from relay_server import event_types
from relay_server.config import ServerConfig
from relay_server.ids import hash_token
from relay_server.screening import screen
from relay_server.state import RelayState
from relay_server.store import ChannelRecord, SQLiteStore

JSON = (b"Content-Type", b"application/json")


@pytest.fixture
def state(tmp_path):
    return RelayState(config=ServerConfig(data_dir=tmp_path), store=SQLiteStore(tmp_path))


@pytest.fixture
def parses(monkeypatch):
    """The bodies that screening parsed, one entry per parse."""
    parsed = []
    real_parse = event_types.small_payload

    def counting_parse(content_type, body):
        parsed.append(body)
        return real_parse(content_type, body)

    monkeypatch.setattr(event_types, "small_payload", counting_parse)
    return parsed


def channel(**settings):
    return ChannelRecord("ch_screen", hash_token("t"), time.time(), settings)


@pytest.mark.parametrize(
    "settings, headers, event_type, key",
    [
        ({"dedupe_window": 0}, ((b"X-Shopify-Topic", b"orders/create"), JSON), "orders/create", None),
        (
            {"event_type": {"header": "X-Kind"}},
            ((b"X-Kind", b"deploy"), (b"X-GitHub-Delivery", b"d-1"), JSON),
            "deploy",
            "github:d-1",
        ),
    ],
)
def test_screen_leaves_body_unparsed(state, parses, settings, headers, event_type, key):
    """When headers give both the event type and the key, the body is never parsed."""
    screened = screen(state, channel(**settings), headers, b'{"type": "other", "id": "evt_x"}', time.time())

    assert screened.rejection is None
    assert screened.fields["event_type"] == event_type
    assert screened.fields["dedupe_key"] == key
    assert parses == []


def test_screen_parses_stripe_body_once(state, parses):
    """The Stripe key and the event type both come from the body, which is parsed once."""
    body = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid"}).encode()

    screened = screen(state, channel(), (JSON, (b"Stripe-Signature", b"t=1,v1=a")), body, time.time())

    assert screened.fields["event_type"] == "invoice.paid"
    assert screened.fields["dedupe_key"] == "stripe:evt_1"
    assert parses == [body]


def test_screen_repeated_headers_first_wins(state):
    """Of repeated headers, whatever their case, the first occurrence names the type and the key."""
    headers = (
        (b"x-github-event", b"issues"),
        (b"X-GitHub-Delivery", b"first"),
        (b"Content-Type", b"application/json"),
        (b"X-GitHub-Event", b"push"),
        (b"x-github-delivery", b"second"),
        (b"content-type", b"text/plain"),
    )

    screened = screen(state, channel(), headers, b'{"action": "opened"}', time.time())

    assert screened.fields["event_type"] == "issues.opened"
    assert screened.fields["dedupe_key"] == "github:first"
    assert screened.fields["dedupe_window"] == 86400.0
