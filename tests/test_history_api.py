"""The history API against a real relay: list, filters, paging, detail, replay, delete, tokens, long-poll.

Every response is also checked against the schema that the relay's OpenAPI
document gives for it. One test runs the application in-process, on a store
that lets an event land while a page is read.
"""

import asyncio
import time

import pytest
import websockets

from relay_server import ids
from relay_server.protocol import DeliveryResult, decode_events, decode_text, encode_ack
from relay_server.store import NewEvent, SQLiteStore
from tests.support.api import ChannelApi, api_request, check_schema, decode_raw
from tests.support.checks import post_webhook
from tests.support.http import send_request
from tests.support.inprocess import add_channel, serving
from tests.support.processes import Channel
from tests.support.timing import MS

DELIVERY_TIMEOUT = 15_000 * MS
LONG_POLL_WAIT = 10.0


@pytest.fixture
async def openapi(shared_relay) -> dict:
    answer = await api_request(shared_relay.url, "GET", "/api/openapi.json")
    assert answer.status == 200, answer.describe()
    return answer.body


async def new_channel(runner, relay) -> tuple[Channel, ChannelApi]:
    channel = await runner.create_channel(relay.url)
    return channel, ChannelApi(relay.url, channel)


async def test_list_newest_first_with_paging(runner, shared_relay, openapi):
    """Pages of two walk the whole history newest first, and next_before is null on the last page."""
    channel, api = await new_channel(runner, shared_relay)
    sent = [await post_webhook(channel.url, b'{"n": %d}' % n) for n in range(5)]

    first = await api.list_events(limit=2)
    check_schema(openapi, "EventPage", first)
    assert [row["id"] for row in first["events"]] == sent[:-3:-1]
    assert first["next_before"] == first["events"][-1]["seq"]

    second = await api.list_events(limit=2, before=first["next_before"])
    third = await api.list_events(limit=2, before=second["next_before"])
    assert [row["id"] for row in second["events"]] == [sent[2], sent[1]]
    assert [row["id"] for row in third["events"]] == [sent[0]]
    assert third["next_before"] is None

    everything = await api.list_events()
    assert [row["id"] for row in everything["events"]] == sent[::-1]
    seq_of_third = everything["events"][2]["seq"]
    assert await api.event_ids(after=seq_of_third) == [sent[4], sent[3]]


async def test_list_summary_fields(runner, shared_relay):
    """A summary row carries method, raw path with query, event type, size and the pending state."""
    channel, api = await new_channel(runner, shared_relay)
    headers = [("Content-Type", "application/json"), ("X-GitHub-Event", "issues")]
    event_id = await post_webhook(channel.url, b'{"action":"opened"}', tail="/gh/x", query="a=1&b=%20", headers=headers)

    [row] = (await api.list_events())["events"]

    assert row["id"] == event_id
    assert row["method"] == "POST"
    assert row["path"] == "/gh/x?a=1&b=%20"
    assert row["event_type"] == "issues.opened"
    assert row["size"] == len(b'{"action":"opened"}')
    assert row["state"] == "pending"
    assert row["status"] is None
    assert row["attempts"] == 0
    assert abs(row["received_at"] - time.time()) < 60


async def test_list_filters_method_type_text_time(runner, shared_relay):
    """Each filter keeps only the events that match it."""
    channel, api = await new_channel(runner, shared_relay)
    json_type = [("Content-Type", "application/json")]
    opened = await post_webhook(channel.url, b'{"action":"opened"}', tail="/github", headers=json_type + [("X-GitHub-Event", "issues")])
    pushed = await post_webhook(channel.url, b"{}", tail="/github", headers=json_type + [("X-GitHub-Event", "push")])
    response = await send_request(channel.url, "PUT", json_type, b'{"type":"invoice.paid"}', tail="/stripe", query="live=1")
    assert response.status == 202, response.describe()
    paid = response.json()["id"]

    assert await api.event_ids(method="put") == [paid]
    assert await api.event_ids(method="POST") == [pushed, opened]
    assert await api.event_ids(type="issues") == [opened]
    assert await api.event_ids(type="issues.opened") == [opened]
    assert await api.event_ids(type="invoice") == [paid]
    assert await api.event_ids(type="issues.closed") == []
    assert await api.event_ids(q="stripe") == [paid]
    assert await api.event_ids(q="live=1") == [paid]
    assert await api.event_ids(q="github") == [pushed, opened]
    assert await api.event_ids(q="github", type="push") == [pushed]

    rows = (await api.list_events())["events"]
    middle = next(row for row in rows if row["id"] == pushed)["received_at"]
    assert await api.event_ids(since=middle) == [paid, pushed]
    assert await api.event_ids(until=middle) == [opened]
    assert await api.event_ids(since=time.time() + 3600) == []


async def test_list_filter_by_state(runner, shared_relay, target):
    """state= separates delivered, failed and pending events of the default group."""
    channel, api = await new_channel(runner, shared_relay)
    listener = runner.start_listener(shared_relay.url, channel, target.authority, "--max-attempts", "1")
    target.fail_next(500, 1)
    failed = await post_webhook(channel.url, b'{"n": 1}')
    await api.wait_for_state(failed, "failed", DELIVERY_TIMEOUT)
    delivered = await post_webhook(channel.url, b'{"n": 2}')
    await api.wait_for_state(delivered, "delivered", DELIVERY_TIMEOUT)
    await asyncio.to_thread(listener.stop)
    pending = await post_webhook(channel.url, b'{"n": 3}')

    assert await api.event_ids(state="failed") == [failed]
    assert await api.event_ids(state="delivered") == [delivered]
    assert await api.event_ids(state="pending") == [pending]
    assert await api.event_ids(state="skipped") == []
    [failed_row] = (await api.list_events(state="failed"))["events"]
    assert failed_row["status"] == 500
    assert failed_row["attempts"] == 1
    [delivered_row] = (await api.list_events(state="delivered"))["events"]
    assert delivered_row["status"] == 200


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "lost"}, "state must be one of pending, delivered, failed, skipped, not 'lost'"),
        ({"limit": "ten"}, "limit must be a number, not 'ten'"),
        ({"since": "yesterday"}, "since must be a number, not 'yesterday'"),
        ({"version": "abc"}, "version must be a number, not 'abc'"),
        ({"group": "bad group!"}, "group must use 1-64 letters, digits and _ . : -, not 'bad group!'"),
        ({"group": "ops\n"}, "group must use 1-64 letters, digits and _ . : -, not 'ops\\n'"),
        ({"wait": "abc"}, "wait must be a number, not 'abc'"),
        ({"wait": "-1"}, "wait must be a number of seconds from 0 to 30, not '-1'"),
        ({"wait": "nan"}, "wait must be a number of seconds from 0 to 30, not 'nan'"),
    ],
)
async def test_list_invalid_filter(params, message, runner, shared_relay, openapi):
    """An invalid filter value gets 400 with a message naming it."""
    _, api = await new_channel(runner, shared_relay)

    answer = await api.call("GET", "/events", params=params)

    assert answer.status == 400, answer.describe()
    check_schema(openapi, "Error", answer.body)
    assert answer.body == {"error": "invalid_query", "message": message}


async def test_detail_exact_raw_bytes(runner, shared_relay, openapi):
    """The detail gives the exact target, header and body bytes, and text views of them."""
    channel, api = await new_channel(runner, shared_relay)
    body = b"\x00\x01binary\xff\xfe{not utf-8}\r\n"
    authority = channel.url.split("/")[2]
    headers = [
        ("Host", authority),
        ("content-type", "application/octet-stream"),
        ("X-Repeat", "one"),
        ("X-REPEAT", "two"),
        ("X-Latin", b"caf\xe9"),
        ("Content-Length", str(len(body))),
    ]
    response = await send_request(channel.url, "PATCH", headers, body, tail="/a%2Fb/c", query="x=1&y=%20&z")
    assert response.status == 202, response.describe()
    event_id = response.json()["id"]

    detail = await api.show(event_id)
    check_schema(openapi, "EventDetail", detail)
    target, raw_headers, raw_body = decode_raw(detail)

    assert target == b"/a%2Fb/c?x=1&y=%20&z"
    assert raw_headers == [(name.encode(), value if isinstance(value, bytes) else value.encode()) for name, value in headers]
    assert raw_body == body
    assert detail["body_text"] is None
    assert detail["size"] == len(body)
    assert detail["method"] == "PATCH"
    assert detail["path"] == "/a%2Fb/c?x=1&y=%20&z"
    assert detail["channel"] == channel.id
    assert detail["remote"] == "127.0.0.1"
    assert detail["headers"][2:4] == [["X-Repeat", "one"], ["X-REPEAT", "two"]]
    assert detail["headers"][4] == ["X-Latin", "caf\ufffd"]
    assert detail["state"] == "pending"
    assert detail["outcomes"] == []
    assert detail["attempts"] == []
    assert detail["answer"] is None


async def test_detail_utf8_body_text(runner, shared_relay):
    """A UTF-8 body is also given as text, unchanged."""
    channel, api = await new_channel(runner, shared_relay)
    body = '{"name": "Zoë", "emoji": "🚀"}'.encode()
    event_id = await post_webhook(channel.url, body)

    detail = await api.show(event_id)

    assert detail["body_text"] == body.decode()
    assert decode_raw(detail)[2] == body


async def test_replay_same_group(runner, shared_relay, target, openapi):
    """A replay delivers the event again to the group's listener, with the same id and bytes."""
    channel, api = await new_channel(runner, shared_relay)
    runner.start_listener(shared_relay.url, channel, target.authority)
    event_id = await post_webhook(channel.url, b'{"replay": true}', tail="/again", query="q=1")
    first = await target.wait_for_event(event_id, DELIVERY_TIMEOUT)
    await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT)

    answer = await api.call("POST", f"/events/{event_id}/replay")
    assert answer.status == 202, answer.describe()
    check_schema(openapi, "Replayed", answer.body)
    assert answer.body == {"id": event_id, "group": "default", "state": "pending", "new_group": False}

    await target.wait_for_requests(2, DELIVERY_TIMEOUT)
    second = target.requests[1]
    assert target.event_ids == [event_id, event_id]
    assert second.body == first.body == b'{"replay": true}'
    assert second.raw_target == first.raw_target == "/again?q=1"
    detail = await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT)
    assert [outcome["group"] for outcome in detail["outcomes"]] == ["default"]


async def test_replay_to_another_group(runner, shared_relay, start_target):
    """A replay with group= reaches that group's listener only; each group keeps its own outcome."""
    main_target, other_target = await start_target(), await start_target()
    channel, api = await new_channel(runner, shared_relay)
    runner.start_listener(shared_relay.url, channel, main_target.authority)
    event_id = await post_webhook(channel.url, b'{"to": "other"}')
    await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT)
    runner.start_listener(shared_relay.url, channel, other_target.authority, "--group", "other")

    answer = await api.call("POST", f"/events/{event_id}/replay", params={"group": "other"})
    assert answer.status == 202, answer.describe()
    assert {key: answer.body[key] for key in ("id", "group", "state")} == {"id": event_id, "group": "other", "state": "pending"}

    received = await other_target.wait_for_event(event_id, DELIVERY_TIMEOUT)
    assert received.body == b'{"to": "other"}'
    detail = await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT, group="other")
    assert sorted(outcome["group"] for outcome in detail["outcomes"]) == ["default", "other"]
    assert main_target.event_ids == [event_id]
    assert other_target.event_ids == [event_id]


async def test_replay_in_flight_409(runner, shared_relay, openapi):
    """A replay while the group's listener has the event unacknowledged gets 409; once acknowledged it is queued."""
    channel, api = await new_channel(runner, shared_relay)
    url = shared_relay.url.replace("http://", "ws://") + f"/api/channels/{channel.id}/listen?window=4&batch=1"
    headers = {"Authorization": f"Bearer {channel.token}"}
    async with websockets.connect(url, additional_headers=headers, proxy=None) as ws:
        assert decode_text(await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT))["type"] == "welcome"
        event_id = await post_webhook(channel.url, b'{"in_flight": true}')
        [in_flight] = decode_events(await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT))

        rejected = await api.call("POST", f"/events/{event_id}/replay")
        await ws.send(encode_ack([DeliveryResult(event_id, "delivered", 200)]))
        await api.wait_for_state(event_id, "delivered", DELIVERY_TIMEOUT)
        queued = await api.call("POST", f"/events/{event_id}/replay")
        [again] = decode_events(await asyncio.wait_for(ws.recv(), DELIVERY_TIMEOUT))

    assert in_flight.id == event_id
    assert rejected.status == 409, rejected.describe()
    check_schema(openapi, "Error", rejected.body)
    assert rejected.body == {
        "error": "event_in_flight",
        "message": f"event {event_id} is being delivered to group default now; replay it once that delivery ends",
    }
    assert queued.status == 202, queued.describe()
    assert (again.id, again.delivery_count) == (event_id, 1)


async def test_replay_names_new_group(runner, shared_relay, openapi):
    """A replay to a group no listener has used reports new_group true; one to a known group reports false."""
    channel, api = await new_channel(runner, shared_relay)
    event_id = await post_webhook(channel.url, b'{"typo": true}')

    known = await api.call("POST", f"/events/{event_id}/replay")
    typo = await api.call("POST", f"/events/{event_id}/replay", params={"group": "neverseen"})
    again = await api.call("POST", f"/events/{event_id}/replay", params={"group": "neverseen"})

    assert known.status == typo.status == again.status == 202
    assert known.body["new_group"] is False
    assert typo.body["new_group"] is True
    assert again.body["new_group"] is False
    check_schema(openapi, "Replayed", typo.body)


async def test_delete_event(runner, shared_relay, openapi):
    """DELETE removes the event from detail and list; a second DELETE gets 404."""
    channel, api = await new_channel(runner, shared_relay)
    kept = await post_webhook(channel.url, b'{"keep": 1}')
    doomed = await post_webhook(channel.url, b'{"keep": 0}')

    answer = await api.call("DELETE", f"/events/{doomed}")
    assert answer.status == 204, answer.describe()
    assert answer.body is None

    shown = await api.call("GET", f"/events/{doomed}")
    assert shown.status == 404, shown.describe()
    check_schema(openapi, "Error", shown.body)
    assert await api.event_ids() == [kept]
    again = await api.call("DELETE", f"/events/{doomed}")
    assert again.status == 404, again.describe()


def channel_endpoints(event_id: str) -> list[tuple[str, str]]:
    """Every endpoint that a channel token opens, as (method, path below the channel)."""
    return [
        ("GET", ""),
        ("PATCH", ""),
        ("POST", "/rotate-token"),
        ("GET", "/listen"),
        ("GET", "/events"),
        ("GET", f"/events/{event_id}"),
        ("POST", f"/events/{event_id}/replay"),
        ("DELETE", f"/events/{event_id}"),
    ]


@pytest.mark.parametrize("token_kind", ["wrong", "missing", "other-channel", "not-bearer"])
async def test_wrong_token_401_everywhere(token_kind, runner, shared_relay, openapi):
    """Every channel endpoint answers 401 with a Bearer challenge to a bad token, and changes nothing."""
    channel, api = await new_channel(runner, shared_relay)
    other = await runner.create_channel(shared_relay.url)
    event_id = await post_webhook(channel.url, b'{"guarded": true}')
    tokens = {"wrong": channel.token + "x", "missing": None, "other-channel": other.token}

    for method, path in channel_endpoints(event_id):
        if token_kind == "not-bearer":
            answer = await api_request(shared_relay.url, method, api.base + path, json_body={"response": {"mode": "sync"}})
        else:
            answer = await api.call(method, path, token=tokens[token_kind], json_body={"response": {"mode": "sync"}})
        assert answer.status == 401, f"{method} {path}: {answer.describe()}"
        assert answer.headers.get("WWW-Authenticate") == "Bearer", f"{method} {path}"
        check_schema(openapi, "Error", answer.body)
        assert answer.body["error"] == "unauthorized"

    assert await api.event_ids() == [event_id]
    info = await api.call("GET")
    assert info.status == 200, "the channel's own token stopped working"
    assert info.body["response"]["mode"] == "async"


async def test_unknown_channel_same_401(shared_relay):
    """An unknown channel gets the same 401 as a wrong token, so answers do not reveal channels."""
    answer = await api_request(shared_relay.url, "GET", "/api/channels/ch_doesnotexist/events", token="hrt_whatever")

    assert answer.status == 401
    assert answer.body == {"error": "unauthorized", "message": "missing or invalid channel token"}


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/replay")])
async def test_invalid_group_400(method, suffix, runner, shared_relay, openapi):
    """Show and replay reject a group name that no listener could use, instead of showing or queuing for it."""
    channel, api = await new_channel(runner, shared_relay)
    event_id = await post_webhook(channel.url, b"{}")

    answer = await api.call(method, f"/events/{event_id}{suffix}", params={"group": "bad group!"})

    assert answer.status == 400, answer.describe()
    check_schema(openapi, "Error", answer.body)
    assert answer.body["error"] == "invalid_group"
    assert "'bad group!'" in answer.body["message"]


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/replay"), ("DELETE", "")])
async def test_unknown_event_404(method, suffix, runner, shared_relay):
    """An event id that the channel does not have gets 404 event_not_found."""
    channel, api = await new_channel(runner, shared_relay)
    missing = "evt_000000000000aaaaaaaaaaaaaaaaaaaa"

    answer = await api.call(method, f"/events/{missing}{suffix}")

    assert answer.status == 404, answer.describe()
    assert answer.body == {"error": "event_not_found", "message": f"no event {missing} in channel {channel.id}"}


async def test_event_of_other_channel_404(runner, shared_relay):
    """A channel's token does not reach an event of another channel, even by id."""
    channel, api = await new_channel(runner, shared_relay)
    other = await runner.create_channel(shared_relay.url)
    foreign = await post_webhook(other.url, b"{}")

    for method, suffix in [("GET", ""), ("POST", "/replay"), ("DELETE", "")]:
        answer = await api.call(method, f"/events/{foreign}{suffix}")
        assert answer.status == 404, f"{method}: {answer.describe()}"
    assert await ChannelApi(shared_relay.url, other).event_ids() == [foreign]


async def test_long_poll_returns_on_new_event(runner, shared_relay):
    """A long-poll with the current version waits, and returns as soon as an event arrives."""
    channel, api = await new_channel(runner, shared_relay)
    version = (await api.list_events())["version"]
    started = time.monotonic()
    waiting = asyncio.create_task(api.list_events(wait=LONG_POLL_WAIT, version=version))
    await asyncio.sleep(500 * MS)
    assert not waiting.done(), "the long-poll returned before anything changed"

    event_id = await post_webhook(channel.url, b'{"wake": 1}')
    page = await asyncio.wait_for(waiting, 5_000 * MS)

    assert time.monotonic() - started < LONG_POLL_WAIT
    assert [row["id"] for row in page["events"]] == [event_id]
    assert page["version"] != version


async def test_long_poll_ends_with_rotated_token(runner, shared_relay):
    """A long-poll that waits with a token rotated meanwhile gets 401, not the events that came after."""
    channel, api = await new_channel(runner, shared_relay)
    version = (await api.list_events())["version"]
    waiting = asyncio.create_task(api.call("GET", "/events", params={"wait": str(LONG_POLL_WAIT), "version": str(version)}))
    await asyncio.sleep(500 * MS)

    rotated = await api.call("POST", "/rotate-token")
    await post_webhook(channel.url, b'{"after": "rotation"}', tail="/after?api_key=secret")
    answer = await asyncio.wait_for(waiting, 5_000 * MS)

    assert rotated.status == 200, rotated.describe()
    assert answer.status == 401, answer.describe()
    assert b"api_key" not in repr(answer.body).encode()


async def test_long_poll_times_out_unchanged(runner, shared_relay):
    """Without a change the long-poll returns after `wait` seconds with the same version."""
    _, api = await new_channel(runner, shared_relay)
    version = (await api.list_events())["version"]

    started = time.monotonic()
    page = await api.list_events(wait=0.5, version=version)

    assert time.monotonic() - started >= 0.45
    assert page["version"] == version
    assert page["events"] == []


async def test_long_poll_stale_version_returns_at_once(runner, shared_relay):
    """A version that is already out of date returns without waiting."""
    channel, api = await new_channel(runner, shared_relay)
    version = (await api.list_events())["version"]
    await post_webhook(channel.url, b"{}")

    started = time.monotonic()
    page = await api.list_events(wait=LONG_POLL_WAIT, version=version)

    assert time.monotonic() - started < 2.0
    assert len(page["events"]) == 1


async def test_channel_info_schema(runner, shared_relay, openapi):
    """GET on the channel returns its URL and settings in the documented shape."""
    channel, api = await new_channel(runner, shared_relay)

    answer = await api.call("GET")

    assert answer.status == 200, answer.describe()
    check_schema(openapi, "Channel", answer.body)
    assert answer.body["url"] == channel.url



class StoreWithLateEvent(SQLiteStore):
    """A real store in which an event lands while a history page is read, after the page's rows were read."""

    def __init__(self, path, land):
        super().__init__(path)
        self.land = land

    async def list_events(self, channel, query):
        rows = await super().list_events(channel, query)
        await self.land()
        return rows


async def test_page_version_predates_its_rows(tmp_path):
    """A page carries the channel version from before its read, so the next long-poll returns the event that landed meanwhile."""
    landed = []

    async def land():
        if not landed:
            event = NewEvent(ids.new_event_id(), "ch_race", "POST", b"/late", (), b"{}", time.time(), remote="127.0.0.1")
            await store.append(event)
            state.hub.notify("ch_race")
            landed.append(event.id)

    store = StoreWithLateEvent(tmp_path, land)
    async with serving(store, tmp_path) as (base, state):
        token = await add_channel(store, "ch_race")
        url = f"{base}/api/channels/ch_race/events"
        authorization = [("Authorization", f"Bearer {token}")]
        first = (await send_request(url, "GET", authorization)).json()
        version_now = state.hub.version("ch_race")
        second = (await send_request(url, "GET", authorization, query=f"wait=5&version={first['version']}")).json()

    assert first["events"] == []
    assert first["version"] < version_now
    assert [row["id"] for row in second["events"]] == landed
