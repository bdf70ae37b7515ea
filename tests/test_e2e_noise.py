"""Noise control through real relay and listener processes: event types, filters, routes, re-signing, de-duplication."""

import base64
import json
import uuid

from tests.support.http import send_request
from tests.support.signatures import sign_stripe, verify_standard_webhooks
from tests.support.timing import MS, wait_until

DELIVERY_TIMEOUT = 20_000 * MS
JSON = ("Content-Type", "application/json")
SIGN_SECRET = "whsec_" + base64.b64encode(b"local-app-secret-for-tests").decode()


async def json_records(listener, count: int) -> list[dict]:
    await wait_until(lambda: len(listener.json_lines()) >= count, DELIVERY_TIMEOUT, f"{count} --json lines from {listener.name}")
    return listener.json_lines()


async def post(channel, headers, body: bytes = b"{}", tail: str = "") -> str:
    response = await send_request(channel.url, "POST", headers, body, tail=tail)
    assert response.status in (200, 202), response.describe()
    return response.json()["id"]


async def test_event_types_per_provider(runner, shared_relay, target):
    """Each provider's event type is detected on the relay and shown in --json and on stderr."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, target.authority)
    sent = {
        "issues.opened": ([JSON, ("X-GitHub-Event", "issues")], {"action": "opened"}),
        "invoice.paid": ([JSON, ("Stripe-Signature", "t=1,v1=00")], {"id": "evt_t1", "object": "event", "type": "invoice.paid"}),
        "app_mention": ([JSON], {"type": "event_callback", "event": {"type": "app_mention"}}),
        "orders/create": ([JSON, ("X-Shopify-Topic", "orders/create")], {"id": 1}),
        "user.created": ([JSON, ("webhook-id", "msg_t1")], {"type": "user.created"}),
    }

    ids = {expected: await post(channel, headers, json.dumps(body).encode()) for expected, (headers, body) in sent.items()}
    records = await json_records(listener, len(sent))

    assert {record["event_id"]: record["event_type"] for record in records} == {event_id: kind for kind, event_id in ids.items()}
    assert all(f" {kind} " in listener.stderr_text() or f" {kind}  " in listener.stderr_text() for kind in sent)


async def test_configured_event_type_header(runner, shared_relay, target):
    """`channel event-type --header` makes the relay read the type from that header."""
    channel = await runner.create_channel(shared_relay.url)
    base = ["--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]
    exit_code, stdout, stderr = await runner.run(["channel", "event-type", *base, "--header", "X-Kind", "--json"])
    listener = runner.start_listener(shared_relay.url, channel, target.authority, "--events", "deploy.*")

    await post(channel, [JSON, ("X-Kind", "deploy.finished")])
    await post(channel, [JSON, ("X-Kind", "build.started")])
    records = await json_records(listener, 2)

    assert exit_code == 0, stderr
    assert json.loads(stdout) == {"channel": channel.id, "event_type": {"header": "X-Kind"}}
    assert [(record["event_type"], record["outcome"]) for record in records] == [("deploy.finished", "delivered"), ("build.started", "skipped")]


async def test_filtered_events_skipped_and_visible(runner, shared_relay, target):
    """Events that fail --events or --filter are acknowledged as skipped, never forwarded, and stay in history."""
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(
        shared_relay.url, channel, target.authority, "--events", "push", "--filter", "json:ref=refs/heads/main", "--filter", "query:source!=bot"
    )
    push = [JSON, ("X-GitHub-Event", "push")]

    kept = await post(channel, push, b'{"ref":"refs/heads/main"}', tail="/gh?source=ci")
    other_branch = await post(channel, push, b'{"ref":"refs/heads/dev"}')
    other_type = await post(channel, [JSON, ("X-GitHub-Event", "issues")], b'{"action":"opened","ref":"refs/heads/main"}')
    from_bot = await post(channel, push, b'{"ref":"refs/heads/main"}', tail="?source=bot")
    records = {record["event_id"]: record for record in await json_records(listener, 4)}
    history = await send_request(f"{shared_relay.url}/api/channels/{channel.id}/events", "GET", [("Authorization", f"Bearer {channel.token}")])

    assert [request.event_id for request in target.requests] == [kept]
    assert records[kept]["outcome"] == "delivered"
    assert records[other_branch]["error"] == "filter json:ref=refs/heads/main did not match"
    assert records[other_type]["error"] == "event type issues.opened is not in --events push"
    assert records[from_bot]["error"] == "filter query:source!=bot did not match"
    assert {records[event_id]["outcome"] for event_id in (other_branch, other_type, from_bot)} == {"skipped"}
    assert listener.stderr_text().count("skipped: ") == 3
    states = {item["id"]: item["state"] for item in history.json()["events"]}
    assert states == {kept: "delivered", other_branch: "skipped", other_type: "skipped", from_bot: "skipped"}


async def test_routes_by_prefix_and_type(runner, shared_relay, start_target):
    """Path rules strip their prefix, type rules keep the tail, the plain target takes the rest, in rule order."""
    github, stripe, pings, default = [await start_target() for _ in range(4)]
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(
        shared_relay.url, channel, default.authority,
        "--forward", f"/github={github.authority}/gh",
        "--forward", f"/stripe={stripe.authority}",
        "--forward", f"type:ping={pings.authority}/pings",
    )

    to_github = await post(channel, [JSON, ("X-GitHub-Event", "ping")], tail="/github/hooks/1?x=%2F")
    to_stripe = await post(channel, [JSON], tail="/stripe?x=1")
    to_pings = await post(channel, [JSON, ("X-GitHub-Event", "ping")], tail="/githubber/a")
    to_default = await post(channel, [JSON], tail="/other/b?q")
    records = {record["event_id"]: record for record in await json_records(listener, 4)}

    assert [(r.event_id, r.raw_target) for r in github.requests] == [(to_github, "/gh/hooks/1?x=%2F")]
    assert [(r.event_id, r.raw_target) for r in stripe.requests] == [(to_stripe, "/?x=1")]
    assert [(r.event_id, r.raw_target) for r in pings.requests] == [(to_pings, "/pings/githubber/a")]
    assert [(r.event_id, r.raw_target) for r in default.requests] == [(to_default, "/other/b?q")]
    assert records[to_github]["target"] == f"http://{github.authority}/gh"
    assert records[to_github]["path"] == "/github/hooks/1?x=%2F"
    assert all(r.header("Host") == github.authority for r in github.requests)


async def test_route_prefix_kept_when_repeated(runner, shared_relay, start_target):
    """Repeating the prefix in the target keeps it in the path the local server sees."""
    github = await start_target()
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, f"/github={github.authority}/github")

    event_id = await post(channel, [JSON], tail="/github/push")
    received = await github.wait_for_event(event_id, DELIVERY_TIMEOUT)

    assert received.raw_target == "/github/push"


async def test_unrouted_event_skipped(runner, shared_relay, start_target):
    """Without a plain target, an event no rule matches is skipped and reaches nobody."""
    github = await start_target()
    channel = await runner.create_channel(shared_relay.url)
    listener = runner.start_listener(shared_relay.url, channel, f"/github={github.authority}")

    await post(channel, [JSON], tail="/elsewhere")
    matched = await post(channel, [JSON], tail="/github")
    records = await json_records(listener, 2)

    assert [request.event_id for request in github.requests] == [matched]
    assert records[0]["outcome"] == "skipped"
    assert records[0]["target"] is None
    assert "no --forward rule matches" in records[0]["error"]


async def test_route_never_leaves_configured_targets(runner, shared_relay, start_target):
    """Tails that look like authorities or escape the prefix still go to the configured target only."""
    github, bystander = await start_target(), await start_target()
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, f"/github={github.authority}/gh")
    tails = [f"/github//{bystander.authority}/x", f"/github/@{bystander.authority}/y", "/github/../../z", f"/github?@{bystander.authority}"]

    ids = [await post(channel, [JSON, ("Host", bystander.authority)], tail=tail) for tail in tails]
    await github.wait_for_events(ids, DELIVERY_TIMEOUT)

    assert bystander.requests == []
    assert [request.raw_target for request in github.requests] == [
        f"/gh//{bystander.authority}/x", f"/gh/@{bystander.authority}/y", "/gh/../../z", f"/gh?@{bystander.authority}",
    ]


async def test_resign_with_standard_webhooks(runner, shared_relay, target):
    """--sign-secret replaces the sender's webhook-* headers with a fresh signature the local app verifies."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority, "--sign-secret", SIGN_SECRET)
    body = b'{"id":"evt_resign","type":"invoice.paid"}'
    headers = [JSON, ("Stripe-Signature", sign_stripe("stripe-test-secret", body, 1_700_000_000)), ("webhook-id", "msg_sender"),
               ("Webhook-Signature", "v1,forged")]

    event_id = await post(channel, headers, body)
    received = await target.wait_for_event(event_id, DELIVERY_TIMEOUT)

    assert received.header_values("webhook-id") == [event_id.encode()]
    assert len(received.header_values("webhook-signature")) == 1
    assert received.header("Stripe-Signature").startswith("t=1700000000,v1=")
    assert verify_standard_webhooks(SIGN_SECRET, received.body, received.header("webhook-signature"), event_id, received.header("webhook-timestamp"))


async def test_bad_sign_secret_exits(runner, shared_relay, target):
    channel = await runner.create_channel(shared_relay.url)

    listener = runner.start_listener(shared_relay.url, channel, target.authority, "--sign-secret", "not-a-whsec")
    exit_code = await listener.wait_for_exit(DELIVERY_TIMEOUT)

    assert exit_code == 2
    assert listener.stderr_text().startswith("hookrelay: error: invalid --sign-secret")


async def test_redelivery_stored_once(runner, shared_relay, target):
    """GitHub, Stripe and Standard Webhooks redeliveries get 2xx with the first event's id and arrive once."""
    channel = await runner.create_channel(shared_relay.url)
    runner.start_listener(shared_relay.url, channel, target.authority)
    delivery = str(uuid.uuid4())
    cases = [
        ([JSON, ("X-GitHub-Delivery", delivery), ("X-GitHub-Event", "push")], b'{"ref":"main"}'),
        ([JSON, ("Stripe-Signature", "t=1,v1=00")], b'{"id":"evt_dup_%s","object":"event"}' % uuid.uuid4().hex[:8].encode()),
        ([JSON, ("webhook-id", f"msg_{uuid.uuid4().hex}")], b'{"type":"a.b"}'),
    ]

    answers = []
    for headers, body in cases:
        first = await send_request(channel.url, "POST", headers, body)
        again = await send_request(channel.url, "POST", headers, body)
        answers.append((first, again))
    marker = await post(channel, [JSON], b'{"marker":true}')
    await target.wait_for_event(marker, DELIVERY_TIMEOUT)
    _, info = await _show(runner, shared_relay.url, channel)

    for first, again in answers:
        assert first.status == 202, first.describe()
        assert again.status == 200, again.describe()
        assert again.json() == {"id": first.json()["id"], "duplicate": True}
    # Delivery keeps order, so a stored duplicate would have arrived before the marker.
    assert target.event_ids == [first.json()["id"] for first, _ in answers] + [marker]
    assert info["counts"]["duplicates"] == 3
    assert info["dedupe_window"] == 86400


async def test_dedupe_window_off(runner, shared_relay, target):
    """`channel dedupe --window 0` stores every copy."""
    channel = await runner.create_channel(shared_relay.url)
    base = ["--relay", shared_relay.url, "--channel", channel.id, "--token", channel.token]
    exit_code, stdout, stderr = await runner.run(["channel", "dedupe", *base, "--window", "0", "--json"])
    headers = [JSON, ("X-GitHub-Delivery", str(uuid.uuid4()))]

    first = await post(channel, headers)
    second = await post(channel, headers)

    assert exit_code == 0, stderr
    assert json.loads(stdout) == {"channel": channel.id, "dedupe_window": 0}
    assert first != second


async def _show(runner, relay_url, channel):
    arguments = ["channel", "show", "--relay", relay_url, "--channel", channel.id, "--token", channel.token, "--json"]
    exit_code, stdout, stderr = await runner.run(arguments)
    assert exit_code == 0, stderr
    return stdout, json.loads(stdout)
