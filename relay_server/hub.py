"""Wake-ups for websocket sessions when their channel has work.

The hub carries no events, only the news that a channel changed: a new
event was stored, or a consumer released events for redelivery. Sessions
then claim from the store, which stays the single source of truth.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Hub:
    """Maps channel ids to the wake-up flags of the sessions reading them."""

    def __init__(self) -> None:
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, channel: str) -> asyncio.Event:
        flag = asyncio.Event()
        self._waiters[channel].add(flag)
        return flag

    def unsubscribe(self, channel: str, flag: asyncio.Event) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(flag)
        if not waiters:
            del self._waiters[channel]

    def notify(self, channel: str) -> None:
        for flag in self._waiters.get(channel, ()):
            flag.set()

    def listener_count(self, channel: str) -> int:
        return len(self._waiters.get(channel, ()))
