"""Event type detection per provider and from a channel's configured header or JSON field."""

import json
from urllib.parse import quote

import pytest

from relay_server import event_types
from relay_server.errors import ConfigError
from relay_server.dedupe import dedupe_key
from relay_server.event_types import check_source, detect_event_type, lazy_payload, lowered_headers

JSON = (b"Content-Type", b"application/json")


def headers(*pairs):
    return tuple((name.encode(), value.encode()) for name, value in pairs)


@pytest.mark.parametrize(
    "given, body, expected",
    [
        (headers(("X-GitHub-Event", "issues"), ("Content-Type", "application/json")), {"action": "opened"}, "issues.opened"),
        (headers(("X-GitHub-Event", "push"), ("Content-Type", "application/json")), {"ref": "refs/heads/main"}, "push"),
        (headers(("X-Shopify-Topic", "orders/create"), ("Content-Type", "application/json")), {"id": 1}, "orders/create"),
        (headers(("Stripe-Signature", "t=1,v1=ab"), ("Content-Type", "application/json")), {"id": "evt_1", "type": "invoice.paid"}, "invoice.paid"),
        (headers(("webhook-id", "msg_1"), ("Content-Type", "application/json")), {"type": "user.created", "data": {}}, "user.created"),
        (
            headers(("Content-Type", "application/json")),
            {"type": "event_callback", "event": {"type": "app_mention", "text": "hi"}},
            "app_mention",
        ),
        (headers(("Content-Type", "application/json")), {"type": "url_verification", "challenge": "c"}, "url_verification"),
        (headers(("X-Gitlab-Event", "Push Hook"), ("Content-Type", "application/json")), {}, "Push Hook"),
    ],
)
def test_provider_event_types(given, body, expected):
    """Each provider's event type comes from its header, its body, or both."""
    assert detect_event_type(given, json.dumps(body).encode()) == expected


def test_slack_interactive_form_payload():
    """Slack interactive payloads arrive form-encoded in a `payload` field that holds JSON."""
    payload = json.dumps({"type": "block_actions", "actions": [{"value": "café"}]})
    body = ("payload=" + quote(payload)).encode()

    detected = detect_event_type(headers(("Content-Type", "application/x-www-form-urlencoded")), body)

    assert detected == "block_actions"


def test_configured_header_wins():
    """A channel's configured header is read before provider detection."""
    given = headers(("X-GitHub-Event", "push"), ("X-Event-Name", "deploy.finished"))

    assert detect_event_type(given, b"{}", {"header": "x-event-name"}) == "deploy.finished"


def test_configured_json_field():
    """A configured dotted JSON path reaches nested fields and list items."""
    body = json.dumps({"data": {"items": [{"kind": "refund"}]}, "type": "ignored"}).encode()

    assert detect_event_type((JSON,), body, {"json": "data.items.0.kind"}) == "refund"


def test_configured_source_falls_back():
    """When the configured field is absent, provider detection still applies."""
    body = json.dumps({"type": "invoice.paid"}).encode()

    assert detect_event_type((JSON,), body, {"json": "meta.kind"}) == "invoice.paid"


@pytest.mark.parametrize("body", [b"[" * 200_000, b"{" * 100_000, b"\xff\xfe{", b'{"type": 5}', b'{"type": "' + b"x" * 500 + b'"}'])
def test_hostile_bodies_have_no_type(body):
    """Deeply nested, undecodable or odd JSON gives no type and raises nothing."""
    assert detect_event_type((JSON,), body) is None


@pytest.mark.parametrize("raw", [{"header": "X-Kind"}, {"json": "data.kind"}])
def test_check_source_accepts(raw):
    assert check_source(raw) == raw


@pytest.mark.parametrize("raw", [{}, {"header": ""}, {"xml": "a"}, {"header": "a", "json": "b"}, {"header": "X Bad"}, "X-Kind"])
def test_check_source_rejects(raw):
    """Anything but one header name or one dotted path raises ConfigError."""
    with pytest.raises(ConfigError):
        check_source(raw)


def test_type_from_header_leaves_body_unparsed():
    """A provider header names the type, and the body stays unparsed."""

    def fail_if_parsed():
        raise AssertionError("the body was parsed")

    sent = ((b"X-Shopify-Topic", b"orders/create"), (b"Content-Type", b"application/json"))
    assert detect_event_type(sent, b'{"type": "other"}', payload=fail_if_parsed) == "orders/create"


def test_lazy_payload_parses_once():
    """Detection and the Stripe de-duplication key share one parse of the body."""
    sent = ((b"Content-Type", b"application/json"), (b"Stripe-Signature", b"t=1,v1=x"))
    parse = lazy_payload(sent, b'{"id": "evt_9", "object": "event", "type": "invoice.paid"}')
    assert parse() is parse()
    assert dedupe_key(sent, b"", payload=parse) == "stripe:evt_9"
    assert detect_event_type(sent, b"", payload=parse) == "invoice.paid"


def test_lazy_payload_parses_at_most_once(monkeypatch):
    """Repeated calls parse the body once, also when the parse result is None."""
    calls = []

    def counting_parse(content_type, body):
        calls.append(body)
        return None

    monkeypatch.setattr(event_types, "small_payload", counting_parse)
    parse = lazy_payload((JSON,), b"not json")

    assert parse() is None
    assert parse() is None
    assert parse() is None
    assert calls == [b"not json"]


def test_lazy_payload_not_parsed_until_called(monkeypatch):
    monkeypatch.setattr(event_types, "small_payload", lambda content_type, body: pytest.fail("the body was parsed"))

    lazy_payload((JSON,), b"{}", lowered=lowered_headers((JSON,)))


def test_lowered_headers_first_occurrence_wins():
    """Each lower-cased name maps to the value of its first occurrence, whatever its case."""
    sent = ((b"X-GitHub-Event", b"issues"), (b"x-github-event", b"push"), (b"X-GITHUB-EVENT", b"ping"))

    assert lowered_headers(sent) == {b"x-github-event": b"issues"}


@pytest.mark.parametrize("pass_lowered", [False, True])
def test_repeated_type_header_first_wins(pass_lowered):
    """The first of repeated type headers names the event, with or without a pre-built lowered map."""
    sent = ((b"x-github-event", b"issues"), JSON, (b"X-GitHub-Event", b"push"))
    lowered = lowered_headers(sent) if pass_lowered else None

    assert detect_event_type(sent, b'{"action": "opened"}', lowered=lowered) == "issues.opened"


@pytest.mark.parametrize("pass_lowered", [False, True])
def test_repeated_content_type_first_wins(pass_lowered):
    """Only the first Content-Type header decides how the body is parsed, so a later JSON one is ignored."""
    sent = ((b"content-type", b"text/plain"), JSON)
    lowered = lowered_headers(sent) if pass_lowered else None

    parse = lazy_payload(sent, b'{"type": "invoice.paid"}', lowered=lowered)

    assert parse() is None
    assert detect_event_type(sent, b'{"type": "invoice.paid"}', lowered=lowered) is None


def test_configured_header_reads_lowered_map():
    """A configured header is looked up in the map the caller passes, not in a new one."""
    sent = ((b"X-Kind", b"from-headers"),)

    detected = detect_event_type(sent, b"{}", {"header": "X-Kind"}, lowered={b"x-kind": b"from-map"})

    assert detected == "from-map"
