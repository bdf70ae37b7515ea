"""The hub of relay nodes that share a Redis: wake-ups, versions and responses cross nodes.

An event stored through node A must wake the listener sessions on node B,
a history watcher on B must see a change made through A, and the target's
response that reaches B must get to the sender waiting on A. Each node keeps
the in-process :class:`~relay_server.hub.Hub` for its own sessions and
adds Redis pub/sub between nodes:

- ``hookrelay:hub`` carries ``W <channel>`` (wake listeners),
  ``T <version> <channel>`` (history changed; versions come from one
  Redis hash, so every node reports the same number) and ``C <channel>``
  (the channel's record changed: drop the copy in the store's
  :class:`~relay_server.store.redis_channels.ChannelCache`). The Redis store
  publishes ``W`` itself when it makes events claimable (append, replay,
  release) and ``C`` when it changes a channel, so the hub publishes only ``T``;
- ``hookrelay:answers`` carries target answers in the wire protocol's
  binary format; the node that holds the waiting sender takes it.

Listener sessions are counted across nodes in a sorted set per channel,
each member refreshed by its node and expiring when the node dies.

Each node reads pub/sub on a connection of its own. A message published
while a node is not subscribed (Redis restarting, the node reconnecting) is
lost, so after every (re)subscription the node wakes all its sessions and
watchers once and they read the store again, and it drops its copies of
channel records. While it is not subscribed, it keeps no copies at all.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from relay_server.errors import StoreError
from relay_server.hub import Hub
from relay_server.protocol import ProtocolError, TargetResponse, decode_response, encode_response
from relay_server.store.redis import HUB_CHANNEL, PREFIX, PRESENCE_TTL, run_to_end
from relay_server.store.redis_channels import ChannelCache

logger = logging.getLogger("hookrelay.server.hub")

ANSWERS_CHANNEL = f"{PREFIX}:answers"
VERSIONS_KEY = f"{PREFIX}:versions"

# Reconnect backoff of the pub/sub reader while Redis is unreachable.
RECONNECT_BASE = 0.2
RECONNECT_CAP = 5.0
# How long one pub/sub read waits before it checks the connection again.
# Seconds a starting node waits for its first pub/sub subscription.
START_TIMEOUT = 5.0
READ_TIMEOUT = 5.0

_COUNT_LISTENERS = r"""
-- KEYS[1]: the channel's listener set. ARGV: ttl ms, then members to refresh.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


_TOUCH = r"""
-- KEYS[1]: the versions hash. ARGV: channel, hub pub/sub channel.
-- Bump the channel's version and tell every node, in one round trip.
local version = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PUBLISH', ARGV[2], 'T ' .. version .. ' ' .. ARGV[1])
return version
"""


def listeners_key(channel: str) -> str:
    return f"{PREFIX}:{{{channel}}}:listeners"


class RedisHub(Hub):
    """A :class:`Hub` whose notifications, versions and target responses reach every node on one Redis."""

    def __init__(self, url: str, *, presence_ttl: float = PRESENCE_TTL, channel_cache: ChannelCache | None = None) -> None:
        super().__init__()
        self.url = url
        # The store's copies of channel records. The hub enables the cache only
        # while it is subscribed, and drops the copies that other nodes change.
        self.channel_cache = channel_cache
        self.node = secrets.token_hex(6)
        self.presence_ttl = presence_ttl
        self._client: aioredis.Redis | None = None
        self._count_script: Any = None
        self._touch_script: Any = None
        self._subscribed = False
        self._first_subscription = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Listener flag -> (channel, member of the channel's listener set).
        self._members: dict[asyncio.Event, tuple[str, str]] = {}
        self._member_numbers = 0
        # Channels whose version bump is in flight, each mapped to whether
        # another change came after that bump was sent.
        self._pending_touches: dict[str, bool] = {}
        self._closed = False

    # -- lifecycle -----------------------------------------------------

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30)
        self._count_script = self._client.register_script(_COUNT_LISTENERS)
        self._touch_script = self._client.register_script(_TOUCH)
        self._reader = asyncio.create_task(self._read_forever(), name="hookrelay-hub-reader")
        self._refresher = asyncio.create_task(self._refresh_forever(), name="hookrelay-hub-presence")

        # Announce the node only once it hears the other nodes; with Redis
        # down at start it serves anyway, reports not ready, and catches up.
        try:
            await asyncio.wait_for(self._first_subscription.wait(), timeout=START_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("hub not subscribed to Redis after %.0f s; starting not ready", START_TIMEOUT)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._subscribed = False
        if self.channel_cache is not None:
            self.channel_cache.disable()
        for task in (self._reader, self._refresher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        members = defaultdict(list)
        for channel, member in self._members.values():
            members[channel].append(member)
        for channel, names in members.items():
            await self._try("remove presence", lambda c=channel, n=names: self._client.zrem(listeners_key(c), *n))
        if self._client is not None:
            await self._client.aclose()

    @property
    def ready(self) -> bool:
        return self._subscribed

    # -- the Hub interface -----------------------------------------------

    def subscribe(self, channel: str, *, watcher: bool = False) -> asyncio.Event:
        flag = super().subscribe(channel, watcher=watcher)
        if not watcher:
            self._member_numbers += 1
            member = f"{self.node}:{self._member_numbers}"
            self._members[flag] = (channel, member)
            self._spawn("add presence", lambda: self._refresh_members(channel, [member]))
        return flag

    def unsubscribe(self, channel: str, flag: asyncio.Event) -> None:
        super().unsubscribe(channel, flag)
        entry = self._members.pop(flag, None)
        if entry is not None:
            self._spawn("remove presence", lambda: self._client.zrem(listeners_key(entry[0]), entry[1]))

    def notify(self, channel: str) -> None:
        """Wake this node's listeners and every node's watchers.

        Listeners on other nodes are woken by the ``W`` message that the
        store's append, replay or release script has already published.
        """
        super().notify(channel)

    def touch(self, channel: str) -> None:
        """Bump the channel's shared version, once for all the changes made while a bump is in flight.

        Watchers only compare versions and then read the store again, so one
        bump sent after the latest change covers every change before it. Under
        load this saves a script call and a message to every node per event.
        """
        if channel in self._pending_touches:
            self._pending_touches[channel] = True
        elif self._spawn("publish change", lambda: self._publish_changes(channel)):
            self._pending_touches[channel] = False

    async def _publish_changes(self, channel: str) -> None:
        try:
            await self._publish_change(channel)
            while self._pending_touches[channel]:
                self._pending_touches[channel] = False
                await self._publish_change(channel)
        finally:
            del self._pending_touches[channel]

    async def count_listeners(self, channel: str) -> int:
        local = self.listener_count(channel)
        try:
            shared = int(await run_to_end(self._tasks, lambda: self._count_script(keys=[listeners_key(channel)], args=[0])))
        except (RedisError, OSError) as exc:
            logger.warning("listener count failed channel=%s, counting this node only: %s", channel, exc)
            return local
        # A session that just subscribed may not be in Redis yet.
        return max(local, shared)

    def deliver_response(self, response: TargetResponse) -> bool:
        if super().deliver_response(response):
            return True
        # The sender may wait on another node, which takes the response there.
        self._spawn("publish answer", lambda: self._client.publish(ANSWERS_CHANNEL, encode_response(response)))
        return True

    def wake_local(self, channel: str) -> None:
        """Wake this node's listener sessions of ``channel`` only."""
        for flag in self._listeners.get(channel, ()):
            flag.set()

    # -- between nodes ---------------------------------------------------

    async def _publish_change(self, channel: str) -> None:
        try:
            version = int(await self._touch_script(keys=[VERSIONS_KEY], args=[channel, HUB_CHANNEL]))
        except (RedisError, OSError):
            # Watchers on this node still learn of the change.
            self._apply_version(channel, self._versions[channel] + 1)
            raise
        self._apply_version(channel, version)

    def _apply_version(self, channel: str, version: int) -> None:
        if version <= self._versions[channel]:
            return
        self._versions[channel] = version
        for flag in self._watchers.get(channel, ()):
            flag.set()

    async def _read_forever(self) -> None:
        """Read pub/sub messages; reconnect with backoff while Redis is away."""
        failures = 0
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(HUB_CHANNEL, ANSWERS_CHANNEL)
                while True:
                    message = await pubsub.get_message(timeout=READ_TIMEOUT)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._dispatch(message["channel"], message["data"])
                    elif message["type"] == "subscribe" and message["channel"] == HUB_CHANNEL.encode():
                        # This client retries no read (redis-py 8.2), so a lost connection
                        # raises. One set to retry would subscribe again inside get_message,
                        # and that confirmation would arrive here too.
                        await self._catch_up(failures)
                        failures = 0
            except (RedisError, OSError) as exc:
                if self._subscribed or failures == 0:
                    logger.error("hub lost Redis: %s; wake-ups from other nodes stop until it returns", exc)
                self._unsubscribed()
                failures += 1
            finally:
                await asyncio.shield(pubsub.aclose())
            await asyncio.sleep(min(RECONNECT_CAP, RECONNECT_BASE * 2 ** min(failures, 10)))

    async def _catch_up(self, failures: int) -> None:
        """Make up for the messages missed before Redis confirmed the subscription to the hub channel."""
        versions = await run_to_end(self._tasks, lambda: self._client.hgetall(VERSIONS_KEY))
        for channel, version in versions.items():
            self._apply_version(channel.decode(), int(version))
        if self.channel_cache is not None:
            self.channel_cache.enable()
        self._subscribed = True
        self._first_subscription.set()
        if failures:
            logger.info("hub reconnected to Redis after %d failed attempts", failures)
        self._wake_everyone()

    def _unsubscribed(self) -> None:
        self._subscribed = False
        if self.channel_cache is not None:
            self.channel_cache.disable()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        if channel == ANSWERS_CHANNEL.encode():
            try:
                response = decode_response(data)
            except ProtocolError as exc:
                logger.warning("invalid target response on the hub channel: %s", exc)
                return
            super().deliver_response(response)
            return
        kind, _, rest = data.decode().partition(" ")
        if kind == "W":
            self.wake_local(rest)
        elif kind == "C":
            if self.channel_cache is not None:
                self.channel_cache.invalidate(rest)
        elif kind == "T":
            version, _, name = rest.partition(" ")
            self._apply_version(name, int(version))

    def _wake_everyone(self) -> None:
        for flags in (*self._listeners.values(), *self._watchers.values()):
            for flag in flags:
                flag.set()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.presence_ttl / 3)
            members = defaultdict(list)
            for channel, member in self._members.values():
                members[channel].append(member)
            for channel, names in members.items():
                if not await self._try("refresh presence", lambda c=channel, n=names: self._refresh_members(c, n)):
                    break

    async def _refresh_members(self, channel: str, members: list[str]) -> None:
        await self._count_script(keys=[listeners_key(channel)], args=[int(self.presence_ttl * 1000), *members])

    # -- tasks -------------------------------------------------------------

    def _spawn(self, what: str, command: Callable[[], Awaitable[Any]]) -> bool:
        """Run a command in the background; it is never cancelled, and a failure is logged.

        Returns False when the hub is closed or not started, and the command did not run.
        """
        if self._closed or self._client is None:
            return False
        task = asyncio.ensure_future(command())
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(what, done))
        return True

    def _finished(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # While Redis is away every event would log this, and the reader
        # has already logged "hub lost Redis".
        level = logging.WARNING if self._subscribed else logging.DEBUG
        logger.log(level, "hub could not %s: %s", what, task.exception())

    async def _try(self, what: str, command: Any) -> bool:
        try:
            await run_to_end(self._tasks, command)
        except (RedisError, OSError, StoreError) as exc:
            logger.warning("hub could not %s: %s", what, exc)
            return False
        return True
