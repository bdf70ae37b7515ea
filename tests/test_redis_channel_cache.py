"""Copies of channel records on relay nodes that share one real Redis.

Each node is a RedisStore whose channel cache is fed by its RedisHub, in
one process, as `hookrelay serve --store redis://…` wires them. The copies
live for a minute here, so a test that passes within its short bound shows
that the hub's invalidation did the work and not the maximum age.
"""

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from relay_server.ids import hash_token
from relay_server.redis_hub import RedisHub
from relay_server.store import ChannelRecord
from relay_server.store.redis import RedisStore, channel_keys
from relay_server.store.redis_channels import ChannelCache
from tests.support.api import poll
from tests.support.timing import MS, wait_until

CHANNEL = "ch_cache"
OLD_TOKEN_HASH = hash_token("old token")
NEW_TOKEN_HASH = hash_token("new token")
# Longer than every test, so only an invalidation can end a copy's use.
LONG_MAX_AGE = 60.0
# Bound for a change on one node to reach the other, which takes one pub/sub message.
PROPAGATION_TIMEOUT = 500 * MS
RECONNECT_TIMEOUT = 10_000 * MS
LOOKUPS = 100


async def start_node(url, *, channel_max_age=LONG_MAX_AGE):
    store = RedisStore(url, channel_max_age=channel_max_age)
    hub = RedisHub(url, channel_cache=store.channel_cache)
    await store.open()
    await hub.start()
    assert hub.ready
    return store, hub


@pytest.fixture
async def redis_client(redis_server):
    """A client of its own for the test's checks and for writes that bypass the store."""
    redis_server.flush()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def nodes(redis_server, redis_client):
    """Node A and node B as (store, hub) pairs, with the channel created through node A."""
    opened = []
    try:
        for _ in range(2):
            opened.append(await start_node(redis_server.url))
        await opened[0][0].create_channel(ChannelRecord(CHANNEL, OLD_TOKEN_HASH, time.time()))
        yield opened
    finally:
        for store, hub in opened:
            await hub.close()
            await store.close()


async def commands_processed(client) -> int:
    """Count the commands Redis has run so far, leaving out INFO, which this check itself sends."""
    stats = await client.info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


async def channel_reads(client) -> int:
    """Count the HMGET commands Redis has run so far, because the store reads a channel's record with one."""
    stats = await client.info("commandstats")
    return stats.get("cmdstat_hmget", {}).get("calls", 0)


async def token_hash_on(store):
    return (await store.get_channel(CHANNEL)).token_hash


async def test_lookups_served_from_memory(nodes, redis_client):
    """After its first read, node B looks the channel up with no Redis command."""
    _, (store_b, _) = nodes
    first = await store_b.get_channel(CHANNEL)
    before = await commands_processed(redis_client)

    lookups = [await store_b.get_channel(CHANNEL) for _ in range(LOOKUPS)]

    assert await commands_processed(redis_client) == before
    assert all(lookup == first for lookup in lookups)
    assert first.token_hash == OLD_TOKEN_HASH


async def test_rotated_token_reaches_other_node(nodes):
    """A token rotated on node A replaces node B's copy within one pub/sub delivery, and node A's at once."""
    (store_a, _), (store_b, _) = nodes
    assert await token_hash_on(store_a) == OLD_TOKEN_HASH
    assert await token_hash_on(store_b) == OLD_TOKEN_HASH

    await store_a.set_token_hash(CHANNEL, NEW_TOKEN_HASH)

    assert await token_hash_on(store_a) == NEW_TOKEN_HASH
    await poll(
        lambda: token_hash_on(store_b), lambda found: found == NEW_TOKEN_HASH, PROPAGATION_TIMEOUT, "the new token hash on node B"
    )


async def test_writing_node_uses_change_at_once(redis_server, redis_client):
    """The node that changes a channel drops its own copy at once, without waiting for its hub's message."""
    async with RedisStore(redis_server.url, channel_max_age=LONG_MAX_AGE) as store:
        # Enabled by hand: no hub feeds this store, so only its own writes can drop its copy.
        store.channel_cache.enable()
        await store.create_channel(ChannelRecord(CHANNEL, OLD_TOKEN_HASH, time.time()))
        assert await token_hash_on(store) == OLD_TOKEN_HASH
        settings = {"response": {"mode": "sync", "timeout": 5.0}}

        await store.set_token_hash(CHANNEL, NEW_TOKEN_HASH)
        rotated = await token_hash_on(store)
        await store.update_settings(CHANNEL, settings)
        updated = await store.get_channel(CHANNEL)

    assert rotated == NEW_TOKEN_HASH
    assert updated.settings == settings


async def test_settings_reach_other_node(nodes):
    """Settings updated on node A replace node B's copy within one pub/sub delivery."""
    (store_a, _), (store_b, _) = nodes
    assert (await store_b.get_channel(CHANNEL)).settings == {}
    settings = {"response": {"mode": "sync", "timeout": 5.0}, "dedupe_window": 30}

    updated = await store_a.update_settings(CHANNEL, settings)

    assert updated.settings == settings
    found = await poll(
        lambda: store_b.get_channel(CHANNEL),
        lambda channel: channel.settings == settings,
        PROPAGATION_TIMEOUT,
        "the new settings on node B",
    )
    assert found.token_hash == OLD_TOKEN_HASH


async def test_channel_created_again_replaces_copy(nodes, redis_client):
    """A channel whose keys vanished and that node A created again under its id replaces node B's copy."""
    (store_a, _), (store_b, _) = nodes
    assert await token_hash_on(store_b) == OLD_TOKEN_HASH

    # As after a FLUSHALL or a restore from an older backup, which no node hears of.
    await redis_client.delete(*channel_keys(CHANNEL))
    await store_a.create_channel(ChannelRecord(CHANNEL, NEW_TOKEN_HASH, time.time()))

    await poll(
        lambda: token_hash_on(store_b), lambda found: found == NEW_TOKEN_HASH, PROPAGATION_TIMEOUT, "the new channel on node B"
    )


async def test_change_missed_while_disconnected(redis_server, nodes):
    """A change made while node B's hub has lost its pub/sub connection is not hidden by B's copy after B reconnects."""
    (store_a, _), (store_b, hub_b) = nodes
    assert await token_hash_on(store_b) == OLD_TOKEN_HASH

    assert redis_server.command(b"CLIENT", b"KILL", b"TYPE", b"pubsub") is not None
    await wait_until(lambda: not hub_b.ready, RECONNECT_TIMEOUT, "node B's hub to notice the lost connection")
    await store_a.set_token_hash(CHANNEL, NEW_TOKEN_HASH)
    # The invalidation went out while node B was not subscribed, so B never gets it.
    assert not hub_b.ready, "node B resubscribed before the change; the test proves nothing"
    await wait_until(lambda: hub_b.ready, RECONNECT_TIMEOUT, "node B's hub to subscribe again")

    assert await token_hash_on(store_b) == NEW_TOKEN_HASH


async def test_reads_through_while_not_subscribed(redis_server, nodes, redis_client):
    """While node B's hub is not subscribed, every lookup on B reads Redis, and copies come back once it subscribes again."""
    _, (store_b, hub_b) = nodes
    await store_b.get_channel(CHANNEL)

    assert redis_server.command(b"CLIENT", b"KILL", b"TYPE", b"pubsub") is not None
    await wait_until(lambda: not hub_b.ready, RECONNECT_TIMEOUT, "node B's hub to notice the lost connection")
    before = await channel_reads(redis_client)
    for _ in range(3):
        await store_b.get_channel(CHANNEL)
    during = await channel_reads(redis_client) - before
    assert not hub_b.ready, "node B resubscribed during the lookups; the test proves nothing"
    await wait_until(lambda: hub_b.ready, RECONNECT_TIMEOUT, "node B's hub to subscribe again")
    before = await channel_reads(redis_client)
    for _ in range(3):
        await store_b.get_channel(CHANNEL)
    after = await channel_reads(redis_client) - before

    assert during == 3
    assert after == 1


async def test_store_without_hub_reads_every_lookup(redis_server, redis_client):
    """A Redis store that no hub feeds keeps no copies, because it cannot hear other nodes' changes."""
    async with RedisStore(redis_server.url) as store:
        await store.create_channel(ChannelRecord(CHANNEL, OLD_TOKEN_HASH, time.time()))
        before = await channel_reads(redis_client)

        for _ in range(3):
            await store.get_channel(CHANNEL)

        assert await channel_reads(redis_client) - before == 3


async def test_copy_read_again_after_max_age(redis_server, redis_client):
    """A change whose invalidation never came still reaches a node once its copy is older than the maximum age."""
    max_age = 300 * MS
    store, hub = await start_node(redis_server.url, channel_max_age=max_age)
    try:
        await store.create_channel(ChannelRecord(CHANNEL, OLD_TOKEN_HASH, time.time()))
        assert await token_hash_on(store) == OLD_TOKEN_HASH

        # Written around the store, so no node hears of the change.
        await redis_client.hset(channel_keys(CHANNEL)[0], "token_hash", NEW_TOKEN_HASH)
        still_cached = await token_hash_on(store)
        started = time.monotonic()
        await poll(lambda: token_hash_on(store), lambda found: found == NEW_TOKEN_HASH, 10 * max_age, "the new token hash")
        waited = time.monotonic() - started
    finally:
        await hub.close()
        await store.close()

    assert still_cached == OLD_TOKEN_HASH
    assert waited <= max_age + 200 * MS


async def test_cache_drops_read_overlapping_invalidation():
    """A read in flight while its channel is invalidated returns its record but leaves no copy behind."""
    cache = ChannelCache()
    cache.enable()
    record = ChannelRecord(CHANNEL, OLD_TOKEN_HASH, 0.0)
    reads = 0
    release = asyncio.Event()

    async def slow_read():
        nonlocal reads
        reads += 1
        await release.wait()
        return record

    lookup = asyncio.create_task(cache.get(CHANNEL, slow_read))
    await asyncio.sleep(0)
    cache.invalidate(CHANNEL)
    release.set()

    assert await lookup == record
    assert await cache.get(CHANNEL, slow_read) == record
    assert reads == 2
    assert await cache.get(CHANNEL, slow_read) == record
    assert reads == 2


async def test_cache_size_bounded():
    """Past its size the cache drops the copy read longest ago."""
    cache = ChannelCache(size=2)
    cache.enable()
    reads = []

    async def read(channel_id):
        reads.append(channel_id)
        return ChannelRecord(channel_id, OLD_TOKEN_HASH, 0.0)

    for channel_id in ("ch_1", "ch_2", "ch_3", "ch_2", "ch_1"):
        await cache.get(channel_id, lambda c=channel_id: read(c))

    assert reads == ["ch_1", "ch_2", "ch_3", "ch_1"]
