"""Listener-side noise control: filters, routing rules, re-signing and the dispatcher on loopback."""

import base64
import json
import time

import pytest

from relay_client.cli_security import describe_settings
from relay_client.config import ListenerConfig, parse_target
from relay_client.console import delivery_record, parse_verification
from relay_client.dispatch import open_dispatcher
from relay_client.errors import UsageError
from relay_client.filters import EventFilter, parse_filter, type_matches
from relay_client.forwarder import forward_headers
from relay_client.resign import StandardWebhooksSigner
from relay_client.retry import Backoff, RetryPolicy
from relay_client.routing import Router
from relay_server.protocol import Event
from tests.support.signatures import verify_standard_webhooks
from tests.support.target import CapturingTarget

SIGN_SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


def event(**changes):
    fields = dict(
        id="evt_0001",
        channel="ch_a",
        seq=1,
        method="POST",
        target=b"/github/push?source=ci&tag=v%201",
        headers=((b"Content-Type", b"application/json"), (b"X-GitHub-Event", b"pull_request"), (b"X-Rep", b"a"), (b"x-rep", b"b")),
        body=json.dumps({"action": "opened", "number": 7, "draft": False, "pull_request": {"base": {"ref": "main"}}, "labels": [{"name": "bug"}]}).encode(),
        received_at=time.time(),
        remote="127.0.0.9",
        event_type="pull_request.opened",
    )
    fields.update(changes)
    return Event(**fields)


@pytest.mark.parametrize(
    "pattern, event_type, matches",
    [
        ("push", "push", True),
        ("issues", "issues.opened", True),
        ("issues", "issues_comment", False),
        ("invoice.*", "invoice.paid", True),
        ("*.created", "customer.created", True),
        ("push", None, False),
        ("issues.opened", "issues", False),
    ],
)
def test_type_patterns(pattern, event_type, matches):
    assert type_matches(pattern, event_type) is matches


@pytest.mark.parametrize(
    "text, passes",
    [
        ("header:X-GitHub-Event=pull_request", True),
        ("header:x-github-event=push", False),
        ("header:X-Rep=b", True),
        ("header:X-GitHub-Event!=push", True),
        ("header:X-Missing", False),
        ("header:X-Rep", True),
        ("query:source=ci", True),
        ("query:tag=v 1", True),
        ("query:source=c*", True),
        ("query:source!=ci", False),
        ("query:other!=x", True),
        ("json:action=opened", True),
        ("json:action=closed", False),
        ("json:number=7", True),
        ("json:draft=false", True),
        ("json:pull_request.base.ref=main", True),
        ("json:labels.0.name=bug", True),
        ("json:labels.5.name=bug", False),
        ("json:missing!=x", True),
        ("json:pull_request", True),
    ],
)
def test_field_filters(text, passes):
    """Each filter source reads its field and compares with a glob; != and presence tests work."""
    rejection = EventFilter.parse(None, [text]).rejection(event())

    assert (rejection is None) is passes, rejection


def test_filters_and_events_are_anded():
    """--events and every --filter must pass; the reason names the first that failed."""
    event_filter = EventFilter.parse(["push,pull_request"], ["json:action=opened", "query:source=ci"])

    assert event_filter.rejection(event()) is None
    assert event_filter.rejection(event(body=b'{"action":"closed"}')) == "filter json:action=opened did not match"
    assert event_filter.rejection(event(target=b"/x?source=cd")) == "filter query:source=ci did not match"
    assert event_filter.rejection(event(event_type="issues.opened")) == "event type issues.opened is not in --events push,pull_request"


def test_json_filter_on_non_json_body():
    """A body that is not JSON fails json: filters without raising."""
    assert EventFilter.parse(None, ["json:a=1"]).rejection(event(body=b"\xff" + b"[" * 100_000)) is not None


@pytest.mark.parametrize("text", ["action=opened", "xml:a=b", "json:", "json:=x"])
def test_bad_filters_rejected(text):
    with pytest.raises(UsageError) as info:
        parse_filter(text)

    assert info.value.option == "--filter"


def route_of(router, target):
    route = router.resolve(event(target=target))
    return None if route is None else (route.target.redacted(), route.tail)


def test_path_rules_strip_prefix():
    """A path rule mounts its prefix on the target: the prefix goes, the rest of the tail and the query stay."""
    router = Router.parse(["/github=localhost:8000/gh", "/stripe/=localhost:9000", "7000"])

    assert route_of(router, b"/github/push?x=1") == ("http://localhost:8000/gh", b"/push?x=1")
    assert route_of(router, b"/github") == ("http://localhost:8000/gh", b"")
    assert route_of(router, b"/github?x=1") == ("http://localhost:8000/gh", b"?x=1")
    assert route_of(router, b"/stripe/events") == ("http://localhost:9000", b"/events")
    assert route_of(router, b"/githubber") == ("http://localhost:7000", b"/githubber")
    assert route_of(router, b"") == ("http://localhost:7000", b"")


def test_path_rules_compare_raw_path():
    """Prefixes match the raw path: an encoded slash is not a segment boundary."""
    router = Router.parse(["/a=localhost:8000"])

    assert route_of(router, b"/a%2Fb") is None
    assert route_of(router, b"/a/b%2Fc") == ("http://localhost:8000", b"/b%2Fc")


def test_first_matching_rule_wins():
    router = Router.parse(["type:pull_request=localhost:7000", "/github=localhost:8000", "localhost:9000"])

    assert route_of(router, b"/github/x") == ("http://localhost:7000", b"/github/x")
    assert router.resolve(event(event_type="push")).target.port == 8000


def test_no_default_leaves_unmatched():
    router = Router.parse(["/github=localhost:8000"])

    assert router.resolve(event(target=b"/other")) is None


@pytest.mark.parametrize(
    "values",
    [["8000", "9000"], ["/github"], ["/github="], ["/=8000"], ["type:=8000"], ["/a?b=8000"], ["/a=ftp://x"]],
)
def test_bad_forward_values(values):
    with pytest.raises(UsageError) as info:
        Router.parse(values)

    assert info.value.option == "--forward"


def test_route_cannot_change_host():
    """Whatever the tail holds, the route's origin is the configured target's."""
    router = Router.parse(["/github=127.0.0.1:8000/gh"])

    for tail in (b"/github//evil.example/x", b"/github/@evil.example", b"/github/../../x", b"/github?@evil.example:1/"):
        route = router.resolve(event(target=tail))
        url = route.target.url_for(route.tail.decode())
        assert url.startswith("http://127.0.0.1:8000/gh"), url


def test_signer_replaces_sender_headers():
    """Re-signing drops the sender's webhook-* headers and adds a signature a receiver verifies."""
    signer = StandardWebhooksSigner(SIGN_SECRET, clock=lambda: 1_700_000_000.5)
    original = event(headers=((b"Webhook-Id", b"msg_sender"), (b"webhook-signature", b"v1,forged"), (b"X-Keep", b"1")))

    headers = signer.sign(original, [(b"X-Keep", b"1"), (b"Webhook-Id", b"msg_sender"), (b"webhook-signature", b"v1,forged")])

    values = dict(headers)
    assert [name for name, _ in headers].count(b"webhook-id") == 1
    assert b"Webhook-Id" not in values
    assert values[b"webhook-id"] == b"evt_0001"
    assert values[b"webhook-timestamp"] == b"1700000000"
    assert verify_standard_webhooks(SIGN_SECRET, original.body, values[b"webhook-signature"].decode(), "evt_0001", "1700000000")
    assert values[b"X-Keep"] == b"1"


@pytest.mark.parametrize("secret", ["abc", "whsec_***", "whsec_" + base64.b64encode(b"short").decode()])
def test_signer_rejects_bad_secrets(secret):
    with pytest.raises(UsageError) as info:
        StandardWebhooksSigner(secret)

    assert info.value.option == "--sign-secret"
    assert secret.removeprefix("whsec_") not in str(info.value)


def test_verified_header_added_and_spoof_dropped():
    """The relay's verdict goes out as X-Hookrelay-Verified; a sender's own copy never does."""
    spoofed = event(headers=((b"X-Hookrelay-Verified", b"github; result=valid"),), verification="github; result=invalid")

    headers = forward_headers(spoofed, "127.0.0.1:1")

    assert [value for name, value in headers if name.lower() == b"x-hookrelay-verified"] == [b"github; result=invalid"]
    assert not any(name.lower() == b"x-hookrelay-verified" for name, _ in forward_headers(event(headers=spoofed.headers), "x:1"))


def test_verification_in_json_record():
    record = delivery_record(event(verification="stripe; result=stale"), _result("skipped"), None, "default")

    assert record["verified"] == {"scheme": "stripe", "result": "stale"}
    assert record["outcome"] == "skipped"
    assert record["target"] is None
    assert parse_verification("garbage") is None


def _result(outcome):
    from relay_server.protocol import DeliveryResult

    return DeliveryResult("evt_0001", outcome, None, 0, 0.0, "filtered")


async def test_dispatcher_routes_and_skips():
    """On loopback: matched events reach their own target with the stripped path, others are skipped unsent."""
    github, default = CapturingTarget(), CapturingTarget()
    await github.start()
    await default.start()
    try:
        config = ListenerConfig(
            relay="http://127.0.0.1:1",
            channel="ch_a",
            token="t",
            target=parse_target(default.authority),
            router=Router.parse([f"/github={github.authority}/gh", default.authority]),
            event_filter=EventFilter.parse(None, ["json:action!=closed"]),
            sign_secret=SIGN_SECRET,
            retry=RetryPolicy(max_attempts=1, backoff=Backoff(base=0.01, cap=0.02)),
        )
        async with open_dispatcher(config, on_attempt=lambda attempt: None) as dispatcher:
            routed = await dispatcher.deliver(event())
            plain = await dispatcher.deliver(event(id="evt_0002", target=b"/other?q=1"))
            skipped = await dispatcher.deliver(event(id="evt_0003", body=b'{"action":"closed"}'))
    finally:
        await github.stop()
        await default.stop()

    assert (routed.outcome, routed.status) == ("delivered", 200)
    assert [request.raw_target for request in github.requests] == ["/gh/push?source=ci&tag=v%201"]
    assert [request.raw_target for request in default.requests] == ["/other?q=1"]
    assert plain.outcome == "delivered"
    assert (skipped.outcome, skipped.attempts, skipped.status) == ("skipped", 0, None)
    assert skipped.error == "filter json:action!=closed did not match"
    received = github.requests[0]
    assert received.header("webhook-id") == "evt_0001"
    assert verify_standard_webhooks(SIGN_SECRET, received.body, received.header("webhook-signature"), "evt_0001", received.header("webhook-timestamp"))


def test_channel_show_lines():
    """`channel show` prints the check without its secret, the window, the type source and the counts."""
    info = {"verify": {"provider": "github", "mode": "reject"}, "dedupe_window": 86400.0, "event_type": {"header": "X-Kind"},
            "counts": {"signature_invalid": 2, "duplicates": 1}}

    lines = describe_settings(info)

    assert lines == [
        "verify     github, mode reject",
        "dedupe     86400 s",
        "type from  header X-Kind",
        "counts     duplicates 1, signature_invalid 2",
    ]
    assert describe_settings({"verify": None, "dedupe_window": 0})[:2] == ["verify     off", "dedupe     0 s"]
