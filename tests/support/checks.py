"""Assertions that compare what the target received with a case's expectation.

Every condition has its own assert and message, so a failure names the one
field that differs. conftest.py registers this module for pytest's assert
rewriting.
"""

import hashlib
import re

from .cases import TARGET_AUTHORITY, Expectation, SignatureCheck, WebhookRequest
from .http import HeaderValue, RawResponse, send_request
from .signatures import verify_github, verify_shopify, verify_slack, verify_standard_webhooks, verify_stripe
from .target import CapturedRequest

# RFC 9110 section 7.6.1: hop-by-hop fields that a relay replaces rather than forwards.
HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"}

# Fields that describe one connection or message frame and that the forwarding client writes itself.
FRAMING = {"host", "content-length", *HOP_BY_HOP}

EVENT_ID_PATTERN = re.compile(r"^evt_[A-Za-z0-9_-]+$")


def _as_bytes(value: HeaderValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _substitute(value: HeaderValue, target_authority: str) -> HeaderValue:
    if isinstance(value, str):
        return value.replace(TARGET_AUTHORITY, target_authority)
    return value


def check_sender_response(expect: Expectation, response: RawResponse) -> None:
    """Check the relay's response to the sender: a 2xx that is not an HTML page."""
    assert expect.status_to_sender == "2xx", f"unknown status_to_sender {expect.status_to_sender!r}"
    assert 200 <= response.status < 300, f"sender got {response.describe()}"
    assert "text/html" not in response.content_type.lower(), f"sender got HTML: {response.describe()}"
    assert not response.body.lstrip().startswith(b"<"), f"sender got markup: {response.describe()}"


def accepted_event_id(response: RawResponse) -> str:
    """Return the event id of a 202 response `{"id": "evt_..."}`."""
    assert response.status == 202, f"expected 202 from ingest, got {response.describe()}"
    assert response.content_type.startswith("application/json"), f"ingest response is not JSON: {response.describe()}"
    event_id = response.json().get("id")
    assert isinstance(event_id, str) and EVENT_ID_PATTERN.match(event_id), f"no evt_ id in {response.describe()}"
    return event_id


async def post_webhook(
    url: str,
    body: bytes = b"{}",
    *,
    tail: str = "/hook",
    query: str = "",
    headers: list[tuple[str, HeaderValue]] | None = None,
) -> str:
    """POST a JSON webhook to a channel URL, check the 202 response and return the event id."""
    headers = [("Content-Type", "application/json")] if headers is None else headers
    response = await send_request(url, "POST", headers, body, tail=tail, query=query)
    return accepted_event_id(response)


def check_delivery(expect: Expectation, received: CapturedRequest, target_authority: str) -> None:
    """Check method, path, query, body and headers of a request at the target against `expect`."""
    assert received.method == expect.method
    assert received.path == expect.path
    assert received.query == expect.query
    if not expect.query:
        assert "?" not in received.raw_target, f"empty query arrived as {received.raw_target!r}"

    assert len(received.body) == expect.body_length
    assert hashlib.sha256(received.body).hexdigest() == expect.body_sha256, "body bytes changed"

    check_headers(expect, received, target_authority)

    if expect.signature is not None:
        assert signature_is_valid(expect.signature, received), (
            f"{expect.signature.scheme} signature in {expect.signature.header} does not verify at the target"
        )


def check_headers(expect: Expectation, received: CapturedRequest, target_authority: str) -> None:
    """Check the header fields of `expect` against the received header bytes."""
    for name, value in expect.headers_present:
        expected = _as_bytes(_substitute(value, target_authority))
        values = received.header_values(name)
        assert expected in values, f"{name}: {expected!r} missing, got {values!r}"

    for name in expect.headers_absent:
        values = received.header_values(name)
        assert not values, f"{name} must be absent, got {values!r}"

    for name, pattern in expect.headers_match:
        values = received.header_values(name)
        assert values, f"{name} missing, expected a value matching {pattern!r}"
        for value in values:
            assert re.search(_substitute(pattern, re.escape(target_authority)), value.decode("latin-1")), (
                f"{name}: {value!r} does not match {pattern!r}"
            )

    for name, pattern in expect.headers_match_if_present:
        for value in received.header_values(name):
            assert re.search(_substitute(pattern, re.escape(target_authority)), value.decode("latin-1")), (
                f"{name}: {value!r} does not match {pattern!r}"
            )

    for name, pattern in expect.headers_must_not_match:
        for value in received.header_values(name):
            assert not re.search(_substitute(pattern, re.escape(target_authority)), value.decode("latin-1")), (
                f"{name}: {value!r} must not match {pattern!r}"
            )

    received_names = [name for name, _ in received.raw_headers]
    for name in expect.header_names_exact:
        assert name.encode("ascii") in received_names, f"header name {name!r} not spelled as sent: {received_names!r}"


def end_to_end_headers(request: WebhookRequest) -> list[tuple[str, bytes]]:
    """Return the sender's headers that the target must receive unchanged: all but Host and framing fields.

    Names are lowercased because `header_names_exact` checks the spelling separately.
    """
    return [(name.lower(), _as_bytes(value)) for name, value in request.headers if name.lower() not in FRAMING]


def check_headers_in_order(request: WebhookRequest, received: CapturedRequest) -> None:
    """Check that the end-to-end headers arrive with the same values, order and repeats as sent."""
    sent = end_to_end_headers(request)
    sent_names = {name for name, _ in sent}
    arrived = [
        (name.decode("latin-1").lower(), value)
        for name, value in received.raw_headers
        if name.decode("latin-1").lower() in sent_names
    ]
    assert arrived == sent, f"end-to-end headers changed:\nsent    {sent!r}\narrived {arrived!r}"


def check_no_invented_headers(request: WebhookRequest, received: CapturedRequest) -> None:
    """Check that the target got no header that neither the sender nor the relay's own namespaces explain.

    Allowed beyond the sender's headers: Host, framing fields, X-Forwarded-*
    and X-Hookrelay-*.
    """
    sent_names = {name for name, _ in end_to_end_headers(request)}
    invented = [
        name.decode("latin-1")
        for name, _ in received.raw_headers
        if name.decode("latin-1").lower() not in sent_names | FRAMING
        and not name.lower().startswith((b"x-forwarded-", b"x-hookrelay-"))
    ]
    assert not invented, f"headers the sender did not send: {invented!r}"


def check_forwarding_headers(received: CapturedRequest, target_authority: str, sender_host: str) -> None:
    """Check Host, X-Forwarded-Host, X-Forwarded-For, X-Forwarded-Proto and the event id header."""
    assert received.header_values("Host") == [target_authority.encode()]
    assert received.header_values("X-Forwarded-Host") == [sender_host.encode()]
    assert received.header("X-Forwarded-For") == "127.0.0.1"
    assert received.header("X-Forwarded-Proto") == "http"
    assert len(received.header_values("X-Hookrelay-Event-Id")) == 1
    assert EVENT_ID_PATTERN.match(received.event_id), f"bad event id {received.event_id!r}"


def signature_is_valid(check: SignatureCheck, received: CapturedRequest) -> bool:
    """Recompute the provider signature over the received body and compare it with the received header."""
    signature = received.header(check.header)
    if signature is None:
        return False
    body = received.body
    match check.scheme:
        case "github-sha256":
            return verify_github(check.secret, body, signature)
        case "stripe-v1":
            return verify_stripe(check.secret, body, signature)
        case "slack-v0":
            return verify_slack(check.secret, body, signature, received.header(check.timestamp_header) or "")
        case "shopify-base64":
            return verify_shopify(check.secret, body, signature)
        case "standard-webhooks":
            message_id = received.header(check.id_header) or ""
            timestamp = received.header(check.timestamp_header) or ""
            return verify_standard_webhooks(check.secret, body, signature, message_id, timestamp)
    raise ValueError(f"unknown signature scheme {check.scheme!r}")
