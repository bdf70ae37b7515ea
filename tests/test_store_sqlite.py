"""The SQLite store on a real database file: durability, groups, redelivery, retention."""

import asyncio
import time

import pytest

from relay_server.errors import ChannelFull
from relay_server.ids import hash_token
from relay_server.protocol import DeliveryResult
from relay_server.store import ChannelRecord, EventQuery, NewEvent, Retention, SQLiteStore


def new_event(channel, n, body=None):
    return NewEvent(
        id=f"evt_{channel}_{n:05d}",
        channel=channel,
        method="POST",
        target=f"/n/{n}?q=%2F".encode(),
        headers=((b"Content-Type", b"application/json"), (b"X-Obs", b"\xe9\x00")),
        body=body if body is not None else f'{{"n": {n}}}'.encode(),
        received_at=time.time(),
        remote="127.0.0.1",
    )


def delivered(event_id):
    return DeliveryResult(event_id, "delivered", 200)


@pytest.fixture
async def store(tmp_path):
    async with SQLiteStore(tmp_path) as opened:
        await opened.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        yield opened


async def append_many(store, channel, count):
    return await asyncio.gather(*(store.append(new_event(channel, n)) for n in range(count)))


async def test_append_assigns_increasing_sequence_numbers(store):
    """Concurrent appends (one group commit) get distinct, increasing numbers."""
    seqs = await append_many(store, "ch_a", 50)
    assert sorted(seqs) == seqs
    assert len(set(seqs)) == 50


async def test_claim_returns_events_unchanged(store):
    """A claimed event has the stored method, target, headers and body bytes."""
    original = new_event("ch_a", 1, body=bytes(range(256)))
    await store.append(original)
    [event] = await store.claim("ch_a", "default", "c1", 10)
    assert (event.id, event.method, event.target) == (original.id, original.method, original.target)
    assert event.headers == original.headers
    assert event.body == original.body


async def test_claim_respects_count_and_order(store):
    """Claims hand out events in sequence order, at most ``count`` at a time."""
    await append_many(store, "ch_a", 10)
    first = await store.claim("ch_a", "default", "c1", 4)
    second = await store.claim("ch_a", "default", "c1", 100)
    assert [e.id for e in first + second] == [f"evt_ch_a_{n:05d}" for n in range(10)]
    assert len(first) == 4


async def test_released_events_come_back_first_with_same_ids(store):
    """Unacknowledged events of a consumer that left are redelivered before new ones."""
    await append_many(store, "ch_a", 5)
    taken = await store.claim("ch_a", "default", "c1", 3)
    await store.ack("ch_a", "default", [delivered(taken[0].id)])
    assert await store.release("ch_a", "default", "c1") == 2
    again = await store.claim("ch_a", "default", "c2", 10)
    assert [e.id for e in again] == [taken[1].id, taken[2].id, "evt_ch_a_00003", "evt_ch_a_00004"]
    assert [e.delivery_count for e in again] == [2, 2, 1, 1]


async def test_groups_each_see_every_event(store):
    """A second group created before the events arrive reads all of them too."""
    assert await store.claim("ch_a", "audit", "a1", 10) == []
    await append_many(store, "ch_a", 3)
    default_ids = [e.id for e in await store.claim("ch_a", "default", "d1", 10)]
    audit_ids = [e.id for e in await store.claim("ch_a", "audit", "a1", 10)]
    assert default_ids == audit_ids
    assert len(audit_ids) == 3


async def test_new_group_starts_at_the_end(store):
    """A group seen for the first time gets new events only, not the history."""
    await append_many(store, "ch_a", 3)
    assert await store.claim("ch_a", "late", "l1", 10) == []
    await store.append(new_event("ch_a", 99))
    assert [e.id for e in await store.claim("ch_a", "late", "l1", 10)] == ["evt_ch_a_00099"]


async def test_backlog_counts_pending_and_unread(store):
    """Backlog is what the group still has to acknowledge."""
    await append_many(store, "ch_a", 6)
    taken = await store.claim("ch_a", "default", "c1", 4)
    await store.ack("ch_a", "default", [delivered(e.id) for e in taken[:3]])
    assert await store.backlog("ch_a", "default") == 3


async def test_ack_of_unknown_event_is_ignored(store):
    """An ack for an event that is not pending removes nothing."""
    assert await store.ack("ch_a", "default", [delivered("evt_missing")]) == 0


async def test_pending_events_survive_reopen(tmp_path):
    """Events claimed but not acknowledged are claimable again after a restart."""
    async with SQLiteStore(tmp_path) as store:
        await store.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        await append_many(store, "ch_a", 3)
        await store.claim("ch_a", "default", "c1", 3)
    async with SQLiteStore(tmp_path) as reopened:
        assert (await reopened.get_channel("ch_a")).token_hash == hash_token("t")
        again = await reopened.claim("ch_a", "default", "c2", 10)
    assert [e.id for e in again] == [f"evt_ch_a_{n:05d}" for n in range(3)]


async def test_full_channel_prunes_acknowledged_events(tmp_path):
    """At the count limit, events every group acknowledged make room."""
    async with SQLiteStore(tmp_path, retention=Retention(max_events=5)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 5)
        taken = await store.claim("ch_a", "default", "c1", 5)
        await store.ack("ch_a", "default", [delivered(e.id) for e in taken])
        await store.append(new_event("ch_a", 5))
        assert await store.backlog("ch_a", "default") == 1


async def test_full_channel_rejects_instead_of_dropping(tmp_path):
    """When every stored event still waits for a group, append raises ChannelFull."""
    async with SQLiteStore(tmp_path, retention=Retention(max_events=3)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 3)
        with pytest.raises(ChannelFull) as info:
            await store.append(new_event("ch_a", 3))
    assert str(info.value) == "channel ch_a is full: it holds 3 events not yet acknowledged"


async def test_prune_removes_events_past_max_age(tmp_path):
    """Age retention deletes old events and their pending entries."""
    async with SQLiteStore(tmp_path, retention=Retention(max_age=60)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 2)
        await store.claim("ch_a", "default", "c1", 1)
        assert await store.prune(time.time() + 120) == 2
        assert await store.backlog("ch_a", "default") == 0


async def test_full_durability_setting_is_applied(tmp_path):
    """synchronous=FULL reaches SQLite."""
    async with SQLiteStore(tmp_path, synchronous="full") as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        assert store.synchronous == "FULL"
        level = await store._read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert level == 2


async def test_close_twice_is_harmless(tmp_path):
    """close() is idempotent."""
    store = SQLiteStore(tmp_path)
    await store.open()
    await store.close()
    await store.close()


async def finish(store, event_id, outcome="delivered", status=200, attempts=1):
    await store.ack("ch_a", "default", [DeliveryResult(event_id, outcome, status, attempts, 2.0, None if status and status < 400 else "HTTP 500")])


async def test_history_lists_newest_first_with_state(store):
    """History shows every event newest first with its state for the group."""
    await append_many(store, "ch_a", 3)
    taken = await store.claim("ch_a", "default", "c1", 2)
    await finish(store, taken[0].id)
    await finish(store, taken[1].id, "failed", 503, 10)
    rows = await store.list_events("ch_a", EventQuery())
    assert [r.id for r in rows] == ["evt_ch_a_00002", "evt_ch_a_00001", "evt_ch_a_00000"]
    assert [(r.state, r.status, r.attempts) for r in rows] == [("pending", None, 0), ("failed", 503, 10), ("delivered", 200, 1)]


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"state": "pending"}, [2, 1]),
        ({"state": "delivered"}, [0]),
        ({"method": "PUT"}, []),
        ({"text": "/n/1"}, [1]),
        ({"before": 2}, [1, 0]),
        ({"after": 1}, [2]),
        ({"limit": 1}, [2]),
    ],
)
async def test_history_filters(store, query, expected):
    """Each history filter narrows the list as documented; before/after name an event by index."""
    seqs = sorted(await append_many(store, "ch_a", 3))
    [first] = await store.claim("ch_a", "default", "c1", 1)
    await finish(store, first.id)
    for key in ("before", "after"):
        if key in query:
            query = {**query, key: seqs[query[key]]}
    query = EventQuery(**query)
    rows = await store.list_events("ch_a", query)
    assert [r.id for r in rows] == [f"evt_ch_a_{n:05d}" for n in expected]


async def test_history_filters_event_type_by_prefix(tmp_path):
    """Filtering on ``issues`` finds ``issues.opened`` but not ``issue_comment``."""
    async with SQLiteStore(tmp_path) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        for n, kind in enumerate(["issues.opened", "issue_comment.created", "issues"]):
            await store.append(NewEvent(f"evt_{n}", "ch_a", "POST", b"", (), b"", time.time(), event_type=kind))
        rows = await store.list_events("ch_a", EventQuery(event_type="issues"))
    assert [r.id for r in rows] == ["evt_2", "evt_0"]


async def test_event_detail_has_attempts_and_outcome(store):
    """Failed attempts reported along the way and the final one appear in detail."""
    from relay_server.protocol import AttemptReport

    await store.append(new_event("ch_a", 0))
    [event] = await store.claim("ch_a", "default", "c1", 1)
    await store.record_attempt("ch_a", "default", AttemptReport(event.id, 1, 502, 3.0, "HTTP 502"))
    await finish(store, event.id, attempts=2)
    detail = await store.get_event("ch_a", event.id)
    assert detail.event.body == event.body
    assert [(a.attempt, a.status) for a in detail.attempts] == [(1, 502), (2, 200)]
    assert [(o.group, o.outcome, o.status) for o in detail.outcomes] == [("default", "delivered", 200)]
    assert await store.get_event("ch_b", event.id) is None


async def test_replay_delivers_again_with_same_id(store):
    """A replayed event comes back to the group with the same id and shows pending."""
    await store.append(new_event("ch_a", 0))
    [event] = await store.claim("ch_a", "default", "c1", 1)
    await finish(store, event.id)
    assert await store.replay("ch_a", event.id, "default") is True
    [again] = await store.claim("ch_a", "default", "c2", 5)
    assert again.id == event.id
    assert (await store.list_events("ch_a", EventQuery()))[0].state == "pending"
    assert await store.replay("ch_a", "evt_missing", "default") is False


async def test_delete_removes_event_and_history(store):
    """A deleted event is gone from history, detail and the pending list."""
    await store.append(new_event("ch_a", 0))
    [event] = await store.claim("ch_a", "default", "c1", 1)
    assert await store.delete_event("ch_a", event.id) is True
    assert await store.get_event("ch_a", event.id) is None
    assert await store.backlog("ch_a", "default") == 0
    assert await store.delete_event("ch_a", event.id) is False


async def test_settings_and_answer_are_kept(tmp_path):
    """Channel settings and a sender's answer survive a reopen."""
    from relay_server.store import SenderAnswer

    async with SQLiteStore(tmp_path) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await store.update_settings("ch_a", {"response": {"mode": "sync"}})
        await store.append(new_event("ch_a", 0))
        await store.record_answer("ch_a", "evt_ch_a_00000", SenderAnswer(200, ((b"X-A", b"\xe9"),), b"\x00\xff", "target", 1.0))
    async with SQLiteStore(tmp_path) as store:
        assert (await store.get_channel("ch_a")).settings == {"response": {"mode": "sync"}}
        detail = await store.get_event("ch_a", "evt_ch_a_00000")
    assert detail.answer == SenderAnswer(200, ((b"X-A", b"\xe9"),), b"\x00\xff", "target", 1.0)
