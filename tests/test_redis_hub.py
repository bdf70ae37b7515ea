"""Two relay nodes in one process, each a RedisStore and a RedisHub on one real Redis.

The store's scripts publish the wake-ups of appends, replays and releases,
and the hub of every node, the writing one included, must hear them.
"""

import asyncio
import time

import pytest

from relay_server.ids import hash_token
from relay_server.redis_hub import VERSIONS_KEY, RedisHub
from relay_server.store import ChannelRecord, NewEvent
from relay_server.store.redis import RedisStore
from tests.support.timing import MS, wait_until

CHANNEL = "ch_hub"
WAKE_TIMEOUT = 2_000 * MS


def new_event(n):
    return NewEvent(
        id=f"evt_hub_{n:05d}",
        channel=CHANNEL,
        method="POST",
        target=b"/",
        headers=((b"Content-Type", b"application/json"),),
        body=b'{"n": %d}' % n,
        received_at=time.time(),
        remote="127.0.0.1",
    )


@pytest.fixture
async def nodes(redis_server):
    """Node A and node B as (store, hub) pairs, with the channel created."""
    redis_server.flush()
    opened = []
    try:
        for _ in range(2):
            store, hub = RedisStore(redis_server.url), RedisHub(redis_server.url)
            opened.append((store, hub))
            await store.open()
            await hub.start()
            assert hub.ready
        await opened[0][0].create_channel(ChannelRecord(CHANNEL, hash_token("t"), time.time()))
        yield opened
    finally:
        for store, hub in opened:
            await hub.close()
            await store.close()


async def woken(flag):
    """Wait for ``flag`` to be set; False when WAKE_TIMEOUT passes first."""
    try:
        await asyncio.wait_for(flag.wait(), timeout=WAKE_TIMEOUT)
    except asyncio.TimeoutError:
        return False
    return True


async def append_heard_by(store, hub):
    """Append one event and wait until ``hub`` has read its wake-up, so a later wake-up has another cause."""
    probe = hub.subscribe(CHANNEL)
    await store.append(new_event(1))
    assert await woken(probe), "the append's wake-up did not arrive"
    hub.unsubscribe(CHANNEL, probe)


async def test_append_wakes_listeners_on_every_node(nodes):
    """An append alone, with no notify, wakes listeners on the writing node and on the other one."""
    (store_a, hub_a), (_, hub_b) = nodes
    flag_a, flag_b = hub_a.subscribe(CHANNEL), hub_b.subscribe(CHANNEL)

    await store_a.append(new_event(1))

    assert await woken(flag_b), "the listener on node B was not woken"
    assert await woken(flag_a), "the listener on node A was not woken"


async def test_notify_wakes_local_listener_at_once(nodes):
    """notify sets the writing node's listener flags before any message returns from Redis."""
    (_, hub_a), _ = nodes
    flag = hub_a.subscribe(CHANNEL)

    hub_a.notify(CHANNEL)

    assert flag.is_set()


async def test_other_channel_listener_not_woken(nodes):
    """An append wakes only the listeners of its own channel."""
    (store_a, _), (_, hub_b) = nodes
    other = hub_b.subscribe("ch_other")
    own = hub_b.subscribe(CHANNEL)

    await store_a.append(new_event(1))

    assert await woken(own)
    assert not other.is_set()


async def test_release_wakes_other_node(nodes):
    """Events released by a consumer on node A wake listeners on node B."""
    (store_a, _), (_, hub_b) = nodes
    await append_heard_by(store_a, hub_b)
    await store_a.claim(CHANNEL, "default", "a1", 1)
    flag = hub_b.subscribe(CHANNEL)

    released = await store_a.release(CHANNEL, "default", "a1")

    assert released == 1
    assert await woken(flag), "the listener on node B was not woken"


async def test_replay_wakes_other_node(nodes):
    """A replay through node A wakes listeners on node B."""
    (store_a, _), (_, hub_b) = nodes
    await append_heard_by(store_a, hub_b)
    flag = hub_b.subscribe(CHANNEL)

    assert await store_a.replay(CHANNEL, "evt_hub_00001", "default")

    assert await woken(flag), "the listener on node B was not woken"


async def test_touch_version_same_on_every_node(nodes):
    """A change through node A wakes watchers on node B, and both nodes report the same version."""
    (_, hub_a), (_, hub_b) = nodes
    watcher = hub_b.subscribe(CHANNEL, watcher=True)

    hub_a.touch(CHANNEL)

    assert await woken(watcher), "the watcher on node B was not woken"
    assert hub_b.version(CHANNEL) == 1
    await wait_until(lambda: hub_a.version(CHANNEL) == 1, WAKE_TIMEOUT, "version 1 on node A")


async def test_notify_wakes_watchers_on_other_node(nodes):
    """notify after an append reaches watchers on the other node with the new version."""
    (store_a, hub_a), (_, hub_b) = nodes
    watcher = hub_b.subscribe(CHANNEL, watcher=True)

    await store_a.append(new_event(1))
    hub_a.notify(CHANNEL)

    assert await woken(watcher), "the watcher on node B was not woken"
    assert hub_b.version(CHANNEL) == 1


async def test_touches_in_flight_share_one_bump(nodes):
    """Touches made while a version bump is in flight share one more bump, sent after the last of them."""
    (_, hub_a), (_, hub_b) = nodes
    watcher = hub_b.subscribe(CHANNEL, watcher=True)

    for _ in range(50):
        hub_a.touch(CHANNEL)

    assert await woken(watcher), "the watcher on node B was not woken"
    await wait_until(lambda: hub_b.version(CHANNEL) == 2, WAKE_TIMEOUT, "version 2 on node B")
    # Give any extra bump time to land before reading the shared version.
    await asyncio.sleep(100 * MS)
    assert await hub_a._client.hget(VERSIONS_KEY, CHANNEL) == b"2"
    assert hub_a.version(CHANNEL) == 2

    hub_a.touch(CHANNEL)
    await wait_until(lambda: hub_b.version(CHANNEL) == 3, WAKE_TIMEOUT, "version 3 on node B after a later touch")
