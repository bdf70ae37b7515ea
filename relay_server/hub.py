"""Wake-ups for websocket sessions, and target responses for waiting senders.

The hub carries no events, only the news that a channel changed: a new
event was stored, or a consumer released events for redelivery. Sessions
then claim from the store, which stays the single source of truth.

For sync channels the hub also routes the target's answer from the session
that received it to the ingest request that waits for it, keyed by event id.
This hub works inside one relay process; :mod:`relay_server.redis_hub` extends it
to several nodes that share a Redis.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from relay_server.protocol import TargetResponse


class Hub:
    """Maps channel ids to the wake-up flags of listener sessions and history watchers.

    Listeners are woken when there may be events to claim. Watchers (history
    long-polls, the inspector page) are woken on any change, including an
    acknowledgement, and read the channel's ``version`` to tell changes apart.
    """

    def __init__(self) -> None:
        self._listeners: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._watchers: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._versions: defaultdict[str, int] = defaultdict(int)
        self._answers: dict[str, asyncio.Future[TargetResponse]] = {}

    def subscribe(self, channel: str, *, watcher: bool = False) -> asyncio.Event:
        flag = asyncio.Event()
        (self._watchers if watcher else self._listeners)[channel].add(flag)
        return flag

    def unsubscribe(self, channel: str, flag: asyncio.Event) -> None:
        for registry in (self._listeners, self._watchers):
            flags = registry.get(channel)
            if flags is not None and flag in flags:
                flags.discard(flag)
                if not flags:
                    del registry[channel]

    def notify(self, channel: str) -> None:
        """Wake listeners and watchers: the channel may have events to claim."""
        for flag in self._listeners.get(channel, ()):
            flag.set()
        self.touch(channel)

    def touch(self, channel: str) -> None:
        """Wake watchers only: something in the channel's history changed."""
        self._versions[channel] += 1
        for flag in self._watchers.get(channel, ()):
            flag.set()

    def version(self, channel: str) -> int:
        return self._versions[channel]

    def listener_count(self, channel: str) -> int:
        """Count the listener sessions of ``channel`` in this process."""
        return len(self._listeners.get(channel, ()))

    async def count_listeners(self, channel: str) -> int:
        """Count the listener sessions of ``channel`` on every relay node that shares this hub."""
        return self.listener_count(channel)

    @property
    def ready(self) -> bool:
        """Whether wake-ups from other nodes reach this one; always true for one process."""
        return True

    async def start(self) -> None:
        """Connect to whatever carries wake-ups between nodes; nothing for one process."""

    async def close(self) -> None:
        """Disconnect; calling it twice is harmless."""

    def expect_response(self, event_id: str) -> asyncio.Future[TargetResponse]:
        """Register interest in the target's response to ``event_id``; call :meth:`forget_response` after."""
        future: asyncio.Future[TargetResponse] = asyncio.get_running_loop().create_future()
        self._answers[event_id] = future
        return future

    def forget_response(self, event_id: str) -> None:
        self._answers.pop(event_id, None)

    def deliver_response(self, response: TargetResponse) -> bool:
        """Hand a response to the request waiting for it; False when none waits any more."""
        future = self._answers.pop(response.event_id, None)
        if future is None or future.done():
            return False
        future.set_result(response)
        return True
