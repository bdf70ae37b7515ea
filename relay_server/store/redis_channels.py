"""This relay node's copies of channel records, for a store shared through Redis.

Ingest looks up its channel on every request. Reading the record from
Redis each time cost a round trip before the append, so each node keeps
copies, and the hub drops them when another node changes a channel.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from relay_server.store.base import ChannelRecord

# A copy of a channel record is read again from Redis after this many
# seconds, even when no invalidation arrived for it.
CHANNEL_MAX_AGE = 2.0
# Maximum number of copies a node keeps. Past it, the oldest copy is dropped.
CHANNEL_CACHE_SIZE = 10_000


class ChannelCache:
    """This node's copies of channel records, used only while invalidations can reach the node.

    The guarantee: a change to a channel takes effect at once on the node
    that made it, and on every other node as soon as its hub reads the
    ``C <channel>`` message, one pub/sub delivery after the change. Even if
    that message is lost, no copy is used more than ``max_age`` seconds
    after its read began, so the change takes effect on every node within
    ``max_age`` (2 s by default).

    The cache starts disabled, and then every lookup reads Redis. The
    node's :class:`~relay_server.redis_hub.RedisHub` enables it each time
    its pub/sub subscription is confirmed and disables it when the
    subscription is lost, because messages published meanwhile never
    arrive. Both clear every copy. A store without a hub never keeps any.
    Channels that do not exist are not remembered.
    """

    def __init__(
        self,
        *,
        max_age: float = CHANNEL_MAX_AGE,
        size: int = CHANNEL_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.size = size
        self._clock = clock
        # Channel id -> (monotonic time its read began, record), oldest read first.
        self._copies: dict[str, tuple[float, ChannelRecord]] = {}
        self._enabled = False
        # Counts invalidations, so that a read which overlapped one keeps no copy.
        self._generation = 0

    async def get(self, channel_id: str, read: Callable[[], Awaitable[ChannelRecord | None]]) -> ChannelRecord | None:
        """Return the copy of the channel's record, or ``read()`` it and keep a copy."""
        started = self._clock()
        copy = self._copies.get(channel_id)
        if copy is not None and started - copy[0] <= self.max_age:
            return copy[1]

        generation = self._generation
        record = await read()
        # Redis may have run the read before a change whose invalidation
        # arrived while the read was in flight, so such a read keeps no copy.
        if record is not None and self._enabled and generation == self._generation:
            self._keep(channel_id, started, record)
        return record

    def invalidate(self, channel_id: str) -> None:
        """Drop the copy of one channel, and the result of any read of it in flight."""
        self._generation += 1
        self._copies.pop(channel_id, None)

    def enable(self) -> None:
        """Start keeping copies, none of them from before this call."""
        self._reset(enabled=True)

    def disable(self) -> None:
        """Drop every copy and read every lookup from Redis until :meth:`enable`."""
        self._reset(enabled=False)

    def _reset(self, *, enabled: bool) -> None:
        self._generation += 1
        self._copies.clear()
        self._enabled = enabled

    def _keep(self, channel_id: str, started: float, record: ChannelRecord) -> None:
        # Re-inserting moves the channel to the end, so the first key is the oldest read.
        self._copies.pop(channel_id, None)
        if len(self._copies) >= self.size:
            del self._copies[next(iter(self._copies))]
        self._copies[channel_id] = (started, record)
