"""Both stores, SQLite on a real file and Redis on a real server, against one contract.

Every test runs once per backend through the `make_store` fixture. Tests of
one backend's own settings or failure modes are marked with their backend.
"""

import asyncio
import dataclasses
import os
import time

import pytest
import redis.asyncio as aioredis

from relay_server.errors import ChannelFull, DuplicateEvent, EventInFlight, StoreError
from relay_server.ids import hash_token
from relay_server.protocol import DeliveryResult
from relay_server.store import ChannelRecord, EventQuery, NewEvent, Retention, SQLiteStore
from relay_server.store import sqlite as sqlite_store
from relay_server.store.redis import RedisStore, channel_keys
from tests.support.redis_server import free_port
from tests.support.timing import MS


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


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    return request.param


@pytest.fixture
def make_store(backend, tmp_path, request):
    """A factory of unopened stores of the test's backend; the stores of one test share their data."""
    if backend == "sqlite":
        return lambda **options: SQLiteStore(tmp_path, **options)
    server = request.getfixturevalue("redis_server")
    server.flush()
    return lambda **options: RedisStore(server.url, **options)


@pytest.fixture
async def store(make_store):
    async with make_store() as opened:
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


async def test_list_groups_names_every_group(store):
    """A new channel has the default group; a group appears once a listener of it claimed."""
    before = await store.list_groups("ch_a")
    await append_many(store, "ch_a", 2)
    await store.claim("ch_a", "audit", "c1", 10)

    assert before == ["default"]
    assert await store.list_groups("ch_a") == ["audit", "default"]


async def test_ack_of_unknown_event_is_ignored(store):
    """An ack for an event that is not pending removes nothing."""
    assert await store.ack("ch_a", "default", [delivered("evt_missing")]) == 0


async def test_pending_events_survive_reopen(make_store):
    """Events claimed but not acknowledged are claimable again after a restart."""
    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        await append_many(store, "ch_a", 3)
        await store.claim("ch_a", "default", "c1", 3)
    async with make_store() as reopened:
        assert (await reopened.get_channel("ch_a")).token_hash == hash_token("t")
        again = await reopened.claim("ch_a", "default", "c2", 10)
    assert [e.id for e in again] == [f"evt_ch_a_{n:05d}" for n in range(3)]


async def test_fresh_claim_equals_claim_after_reopen(make_store):
    """An event claimed right after it was stored is the same, field for field, as one read back after a restart."""
    sent = NewEvent(
        id="evt_fields", channel="ch_a", method="PATCH", target=b"/t?x=%zz", headers=((b"X-A", b"\xff"), (b"x-a", b"2")),
        body=bytes(range(256)), received_at=time.time(), remote="127.0.0.9", scheme="https", event_type="push",
        respond_until=time.time() + 60, verification="github; result=valid",
    )
    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        await store.append(sent)
        [fresh] = await store.claim("ch_a", "default", "c1", 10)
        await store.release("ch_a", "default", "c1")
        [redelivered] = await store.claim("ch_a", "default", "c2", 10)
    async with make_store() as reopened:
        [read_back] = await reopened.claim("ch_a", "default", "c3", 10)

    assert fresh == dataclasses.replace(read_back, delivery_count=1)
    assert fresh.headers_json is None or fresh.headers_json == read_back.headers_json
    assert (fresh.delivery_count, redelivered.delivery_count, read_back.delivery_count) == (1, 2, 3)
    assert redelivered == dataclasses.replace(read_back, delivery_count=2)


async def test_full_channel_prunes_acknowledged_events(make_store):
    """At the count limit, events every group acknowledged make room."""
    async with make_store(retention=Retention(max_events=5)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 5)
        taken = await store.claim("ch_a", "default", "c1", 5)
        await store.ack("ch_a", "default", [delivered(e.id) for e in taken])
        await store.append(new_event("ch_a", 5))
        assert await store.backlog("ch_a", "default") == 1


async def test_full_channel_rejects_instead_of_dropping(make_store):
    """When every stored event still waits for a group, append raises ChannelFull."""
    async with make_store(retention=Retention(max_events=3)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 3)
        with pytest.raises(ChannelFull) as info:
            await store.append(new_event("ch_a", 3))
    assert str(info.value) == "channel ch_a is full: it holds 3 events not yet acknowledged"


async def test_prune_removes_events_past_max_age(make_store):
    """Age retention deletes old events and their pending entries."""
    async with make_store(retention=Retention(max_age=60)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 2)
        await store.claim("ch_a", "default", "c1", 1)
        assert await store.prune(time.time() + 120) == 2
        assert await store.backlog("ch_a", "default") == 0


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_write_ahead_log_stays_bounded_under_steady_load(make_store, backend, tmp_path):
    """With commits that never pause, the log still starts over instead of growing with every stored byte."""
    # Bodies small enough to stay in their rows, so that every byte goes through the log.
    body = os.urandom(32 * 1024)
    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        for start in range(0, 3000, 10):
            await asyncio.gather(*(store.append(new_event("ch_a", n, body=body)) for n in range(start, start + 10)))
        log_size = (tmp_path / "hookrelay.sqlite3-wal").stat().st_size
        [first] = await store.claim("ch_a", "default", "c1", 1)

    assert log_size < 64 * 1024 * 1024, f"the log grew to {log_size} bytes for 96 MiB stored"
    assert first.body == body


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_full_durability_setting_is_applied(tmp_path, backend):
    """synchronous=FULL reaches SQLite."""
    async with SQLiteStore(tmp_path, synchronous="full") as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        assert store.synchronous == "FULL"
        level = await store._read(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    assert level == 2


async def test_close_twice_is_harmless(make_store):
    """close() is idempotent."""
    store = make_store()
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


async def test_history_filters_event_type_by_prefix(make_store):
    """Filtering on ``issues`` finds ``issues.opened`` but not ``issue_comment``."""
    async with make_store() as store:
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
    assert again.delivery_count == 1, "a replay must arrive as a first delivery, not a redelivery"
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


async def test_deleted_newest_seq_not_reused(make_store):
    """After the newest event is deleted, even across a restart, the next event gets a new seq and reaches the group."""
    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        seqs = await append_many(store, "ch_a", 3)
        first_claim = await store.claim("ch_a", "default", "c1", 3)
        await store.ack("ch_a", "default", [delivered(e.id) for e in first_claim])
        assert await store.delete_event("ch_a", first_claim[-1].id)

    async with make_store() as store:
        seq = await store.append(new_event("ch_a", 3))
        claimed = await store.claim("ch_a", "default", "c2", 3)

    assert seq > max(seqs)
    assert [e.seq for e in claimed] == [seq]


async def test_settings_and_answer_are_kept(make_store):
    """Channel settings and a sender's answer survive a reopen."""
    from relay_server.store import SenderAnswer

    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await store.update_settings("ch_a", {"response": {"mode": "sync"}})
        await store.append(new_event("ch_a", 0))
        await store.record_answer("ch_a", "evt_ch_a_00000", SenderAnswer(200, ((b"X-A", b"\xe9"),), b"\x00\xff", "target", 1.0))
    async with make_store() as store:
        assert (await store.get_channel("ch_a")).settings == {"response": {"mode": "sync"}}
        detail = await store.get_event("ch_a", "evt_ch_a_00000")
    assert detail.answer == SenderAnswer(200, ((b"X-A", b"\xe9"),), b"\x00\xff", "target", 1.0)


async def test_ping_fails_after_close(make_store):
    """ping() passes on an open store and raises StoreError once it is closed."""
    store = make_store()
    await store.open()
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_replay_of_unread_event_is_not_doubled(store):
    """Replaying an event the group has not read yet delivers it once."""
    await store.append(new_event("ch_a", 0))
    assert await store.replay("ch_a", "evt_ch_a_00000", "default") is True
    claimed = await store.claim("ch_a", "default", "c1", 5)
    assert [e.id for e in claimed] == ["evt_ch_a_00000"]


async def test_replay_in_flight_raises(store):
    """A replay while a consumer has the event pending raises EventInFlight and changes nothing; after the ack it is queued."""
    await store.append(new_event("ch_a", 0))
    [in_flight] = await store.claim("ch_a", "default", "c1", 5)

    with pytest.raises(EventInFlight) as raised:
        await store.replay("ch_a", in_flight.id, "default")
    nothing = await store.claim("ch_a", "default", "c2", 5)
    assert await store.ack("ch_a", "default", [delivered(in_flight.id)]) == 1
    queued = await store.replay("ch_a", in_flight.id, "default")
    [again] = await store.claim("ch_a", "default", "c2", 5)

    assert (raised.value.event_id, raised.value.group) == (in_flight.id, "default")
    assert nothing == []
    assert queued is True
    assert (again.id, again.delivery_count) == (in_flight.id, 1)


async def test_replay_reaches_only_its_group(store):
    """An event replayed for one group is not delivered again to another group."""
    await store.claim("ch_a", "audit", "a1", 1)
    await store.append(new_event("ch_a", 0))
    for group, consumer in (("default", "d1"), ("audit", "a1")):
        [event] = await store.claim("ch_a", group, consumer, 1)
        await store.ack("ch_a", group, [delivered(event.id)])
    await store.replay("ch_a", "evt_ch_a_00000", "default")
    assert await store.claim("ch_a", "audit", "a1", 5) == []
    [again] = await store.claim("ch_a", "default", "d2", 5)
    assert again.id == "evt_ch_a_00000"
    assert again.body == b'{"n": 0}'
    assert await store.ack("ch_a", "default", [delivered(again.id)]) == 1
    assert await store.backlog("ch_a", "default") == 0


async def test_claim_skips_other_groups_replays(store):
    """Replays queued for another group do not make a claim come back short while events are there.

    A session waits for a wake-up after a short claim, so a claim that
    stopped early would strand the events behind the replays.
    """
    await store.claim("ch_a", "audit", "a1", 1)
    await append_many(store, "ch_a", 12)
    for group, consumer in (("default", "d1"), ("audit", "a1")):
        acked = await store.claim("ch_a", group, consumer, 12)
        await store.ack("ch_a", group, [delivered(event.id) for event in acked])
    for event in acked:
        assert await store.replay("ch_a", event.id, "audit") is True
    await store.append(new_event("ch_a", 12))

    claimed = await store.claim("ch_a", "default", "d1", 1)

    assert [event.id for event in claimed] == ["evt_ch_a_00012"]


async def test_replayed_event_survives_count_retention(make_store):
    """Count retention prunes acknowledged events before a replayed one but keeps the replayed one."""
    async with make_store(retention=Retention(max_events=3)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await append_many(store, "ch_a", 3)
        taken = await store.claim("ch_a", "default", "c1", 3)
        await store.ack("ch_a", "default", [delivered(e.id) for e in taken])
        await store.replay("ch_a", taken[1].id, "default")
        await store.append(new_event("ch_a", 3))
        claimed = await store.claim("ch_a", "default", "c2", 5)
        pruned = await store.get_event("ch_a", taken[0].id)
    assert [e.id for e in claimed] == [taken[1].id, "evt_ch_a_00003"]
    assert pruned is None


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_nodes_share_channels(make_store, backend):
    """An event appended through one store is claimed through another on the same Redis."""
    async with make_store() as node_a, make_store() as node_b:
        await node_a.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        assert (await node_b.get_channel("ch_a")).token_hash == hash_token("t")
        await node_a.append(new_event("ch_a", 0))
        [event] = await node_b.claim("ch_a", "default", "b1", 5)
    assert event.id == "evt_ch_a_00000"


async def first_node(make_store, ttl: float):
    """Open a Redis store with presence TTL ``ttl`` and create channel ch_a through it."""
    store = make_store(presence_ttl=ttl)
    await store.open()
    await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
    return store


async def die(store) -> None:
    """Stop a Redis store as a killed node stops: no release, no more presence refreshes."""
    store._refresher.cancel()
    await store._client.aclose()


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_dead_node_events_reclaimed(make_store, backend):
    """Pending events of a node that stopped refreshing its consumers go to another node after the TTL."""
    ttl = 300 * MS
    dead = await first_node(make_store, ttl)
    await append_many(dead, "ch_a", 3)
    taken = await dead.claim("ch_a", "default", "a1", 2)
    await die(dead)

    woken = []
    async with make_store(presence_ttl=ttl) as survivor:
        survivor.on_reclaimable = woken.append
        early = await survivor.claim("ch_a", "default", "b1", 5)
        await asyncio.sleep(3 * ttl)
        late = await survivor.claim("ch_a", "default", "b1", 5)
    assert [e.id for e in early] == ["evt_ch_a_00002"]
    assert [e.id for e in late] == [e.id for e in taken]
    assert [e.delivery_count for e in late] == [2, 2]
    assert woken == ["ch_a"]


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_wakes_for_each_dead_consumer(make_store, backend):
    """A consumer that expires while another expired one is removed still wakes the node's listeners."""
    ttl = 300 * MS
    old_g2 = await first_node(make_store, ttl)
    await old_g2.claim("ch_a", "g2", "g2-old", 1)
    await die(old_g2)
    holder = make_store(presence_ttl=ttl)
    await holder.open()
    await append_many(holder, "ch_a", 3)
    orphaned = await holder.claim("ch_a", "default", "d-old", 3)

    woken = []
    # The survivor's own refresher stays asleep: the test refreshes it at chosen moments.
    async with make_store(presence_ttl=60.0) as survivor:
        survivor.on_reclaimable = woken.append
        assert await survivor.claim("ch_a", "default", "d-new", 5) == []
        await asyncio.sleep(2 * ttl)
        await survivor._refresh_once()
        first_wake = list(woken)

        await die(holder)
        # A claim in g2 removes the expired g2 consumer, which has no pending events.
        await survivor.claim("ch_a", "g2", "g2-new", 1)
        await asyncio.sleep(2 * ttl)
        await survivor._refresh_once()
        reclaimed = await survivor.claim("ch_a", "default", "d-new", 5)

    assert first_wake == ["ch_a"]
    assert woken == ["ch_a", "ch_a"]
    assert [event.id for event in reclaimed] == [event.id for event in orphaned]


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_unreachable_raises_store_error(backend):
    """Without a reachable Redis, open() still succeeds and every operation raises StoreError."""
    async with RedisStore(f"redis://127.0.0.1:{free_port()}/0") as store:
        with pytest.raises(StoreError) as info:
            await store.append(new_event("ch_a", 0))
        with pytest.raises(StoreError):
            await store.ping()
    assert str(info.value).startswith("store append failed: ConnectionError")


async def test_dedupe_key_rejects_second_copy(store):
    """A delivery id seen within the window raises DuplicateEvent naming the first event."""
    first = NewEvent("evt_1", "ch_a", "POST", b"", (), b"a", time.time(), dedupe_key="d-1", dedupe_window=60)
    second = NewEvent("evt_2", "ch_a", "POST", b"", (), b"b", time.time(), dedupe_key="d-1", dedupe_window=60)
    await store.append(first)
    with pytest.raises(DuplicateEvent) as info:
        await store.append(second)
    assert info.value.event_id == "evt_1"
    assert await store.backlog("ch_a", "default") == 1


async def test_replay_keeps_earlier_attempts(store):
    """A replayed event's attempts are added to the history, not written over it."""
    await store.append(new_event("ch_a", 0))
    [event] = await store.claim("ch_a", "default", "c1", 1)
    await finish(store, event.id, status=500, attempts=1, outcome="delivered")
    await store.replay("ch_a", event.id, "default")
    [again] = await store.claim("ch_a", "default", "c1", 1)
    await finish(store, again.id, status=200, attempts=1)
    detail = await store.get_event("ch_a", event.id)
    assert [(a.attempt, a.status) for a in detail.attempts] == [(1, 500), (1, 200)]


async def test_redelivery_carries_reported_attempts(store):
    """A redelivery carries the number of attempts the group already made; a replay starts over."""
    from relay_server.protocol import AttemptReport

    # A group starts at the end of the log, so "other" exists before the event does.
    assert await store.claim("ch_a", "other", "c9", 1) == []
    await store.append(new_event("ch_a", 1))
    [first] = await store.claim("ch_a", "default", "c1", 1)
    await store.claim("ch_a", "other", "c9", 1)
    for attempt in (1, 2):
        await store.record_attempt("ch_a", "default", AttemptReport(first.id, attempt, 503, 1.0, "HTTP 503"))
    await store.release("ch_a", "default", "c1")
    [again] = await store.claim("ch_a", "default", "c2", 1)
    await store.release("ch_a", "other", "c9")
    [other] = await store.claim("ch_a", "other", "c8", 1)
    await store.ack("ch_a", "default", [DeliveryResult(first.id, "failed", 503, 3, 1.0, "HTTP 503")])
    assert await store.replay("ch_a", first.id, "default")
    [replayed] = await store.claim("ch_a", "default", "c2", 1)

    assert (first.delivery_count, first.attempts) == (1, 0)
    assert (again.delivery_count, again.attempts) == (2, 2)
    assert (other.delivery_count, other.attempts) == (2, 0)
    assert (replayed.delivery_count, replayed.attempts) == (1, 0)


async def test_repeated_ack_adds_no_attempt(store):
    """An ack for an event no longer pending leaves the attempt history as it was."""
    await store.append(new_event("ch_a", 0))
    [event] = await store.claim("ch_a", "default", "c1", 1)
    await finish(store, event.id)
    await finish(store, event.id)
    detail = await store.get_event("ch_a", event.id)
    assert len(detail.attempts) == 1


async def redis_info(url, section, field):
    """Read one integer field of Redis's INFO through a client of its own."""
    client = aioredis.Redis.from_url(url)
    try:
        return int((await client.info(section))[field])
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_concurrent_appends_share_round_trips(store, backend, redis_server):
    """50 concurrent appends reach Redis in a few pipelines, not in 50 round trips one after the other."""
    await store.append(new_event("ch_a", 0))
    monitor = aioredis.Redis.from_url(redis_server.url)
    try:
        before = (await monitor.info("stats"))["total_writes_processed"]
        seqs = await asyncio.gather(*(store.append(new_event("ch_a", n)) for n in range(1, 51)))
        after = (await monitor.info("stats"))["total_writes_processed"]
    finally:
        await monitor.aclose()

    assert seqs == list(range(2, 52))
    # Redis writes the replies of one pipeline at once; one more write is the
    # reply to the first INFO. Round trips one after the other would take 50.
    assert after - before <= 5


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_append_reloads_flushed_scripts(store, backend, redis_server):
    """After Redis lost its script cache, a batch of appends loads the script again and all succeed in order."""
    await store.append(new_event("ch_a", 0))
    assert redis_server.command(b"SCRIPT", b"FLUSH") == b"+OK"

    seqs = await append_many(store, "ch_a", 5)

    assert seqs == [2, 3, 4, 5, 6]
    claimed = await store.claim("ch_a", "default", "c1", 10)
    assert [e.id for e in claimed[1:]] == [f"evt_ch_a_{n:05d}" for n in range(5)]


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_cancelled_append_is_stored(store, backend):
    """An append whose caller is cancelled still runs to its end, and the next appends get their own replies."""
    cancelled = asyncio.ensure_future(store.append(new_event("ch_a", 0)))
    await asyncio.sleep(0)
    cancelled.cancel()

    seqs = await append_many(store, "ch_a", 3)

    assert cancelled.cancelled()
    assert seqs == [2, 3, 4]
    claimed = await store.claim("ch_a", "default", "c1", 10)
    assert [e.id for e in claimed] == ["evt_ch_a_00000", "evt_ch_a_00000", "evt_ch_a_00001", "evt_ch_a_00002"]


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_full_channel_fails_only_late_appends(make_store, backend):
    """In one batch of concurrent appends, those past the limit raise ChannelFull and the others are stored."""
    async with make_store(retention=Retention(max_events=3)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        results = await asyncio.gather(*(store.append(new_event("ch_a", n)) for n in range(5)), return_exceptions=True)

    assert results[:3] == [1, 2, 3]
    assert [type(r) for r in results[3:]] == [ChannelFull, ChannelFull]
    assert str(results[3]) == "channel ch_a is full: it holds 3 events not yet acknowledged"


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_claim_writes_presence_only_near_expiry(store, backend, redis_server):
    """A claim leaves a fresh consumer expiry alone, so an empty claim adds nothing to the AOF, and renews one near its end."""
    key = channel_keys("ch_a")[8]
    ttl_ms = int(store.presence_ttl * 1000)
    await store.append(new_event("ch_a", 0))
    await store.claim("ch_a", "default", "c1", 1)
    first_expiry = await store._client.zscore(key, "default/c1")
    aof_before = await redis_info(redis_server.url, "persistence", "aof_current_size")

    assert await store.claim("ch_a", "default", "c1", 1) == []

    assert await redis_info(redis_server.url, "persistence", "aof_current_size") == aof_before
    assert await store._client.zscore(key, "default/c1") == first_expiry

    # Less than half of the TTL left, as after a late refresh.
    await store._client.zadd(key, {"default/c1": first_expiry - ttl_ms * 0.6})
    await store.claim("ch_a", "default", "c1", 1)
    assert await store._client.zscore(key, "default/c1") > first_expiry


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_recent_copies_stay_bounded(make_store, backend):
    """The in-memory copies of new events stop at their count and byte limits, and older events are read back."""
    limit = sqlite_store._RECENT_EVENTS
    async with make_store() as store:
        await store.create_channel(ChannelRecord("ch_a", hash_token("t"), time.time()))
        for start in range(0, limit + 100, 100):
            await asyncio.gather(*(store.append(new_event("ch_a", n)) for n in range(start, start + 100)))
        copies_of_small = len(store._recent)
        large = os.urandom(1024 * 1024)
        for n in range(50000, 50020):
            await store.append(new_event("ch_a", n, body=large))
        bytes_of_large = store._recent_bytes
        claimed = await store.claim("ch_a", "default", "c1", 3)

    assert copies_of_small == limit
    assert bytes_of_large <= sqlite_store._RECENT_BYTES
    assert [event.body for event in claimed] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
