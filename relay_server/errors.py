"""Exceptions of the relay server.

Tree::

    RelayError
    ├── StoreError            storage failed or is unreachable
    │   └── ChannelFull       retention leaves no room for another event
    ├── DuplicateEvent        a provider's redelivery of an event already stored
    └── ConfigError           a server option or channel setting has an invalid value

Each exception keeps the values involved as fields and builds its text in
``__str__`` as a fragment a caller can embed in a longer message.
"""

from __future__ import annotations


class RelayError(Exception):
    """Root of the relay server's exceptions."""


class StoreError(RelayError):
    """A store operation failed; ``operation`` names it."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(operation, reason)
        self.operation = operation
        self.reason = reason

    def __str__(self) -> str:
        return f"store {self.operation} failed: {self.reason}"


class ChannelFull(StoreError):
    """The channel holds ``limit`` events that some group has not acknowledged."""

    def __init__(self, channel: str, limit: int) -> None:
        super().__init__("append", f"channel {channel} holds {limit} unacknowledged events")
        self.channel = channel
        self.limit = limit

    def __str__(self) -> str:
        return f"channel {self.channel} is full: it holds {self.limit} events not yet acknowledged"


class DuplicateEvent(RelayError):
    """The channel already stored ``event_id`` under the provider's delivery ``key``."""

    def __init__(self, channel: str, key: str, event_id: str) -> None:
        super().__init__(channel, key, event_id)
        self.channel = channel
        self.key = key
        self.event_id = event_id

    def __str__(self) -> str:
        return f"channel {self.channel} already stored delivery {self.key} as event {self.event_id}"


class EventInFlight(RelayError):
    """A listener of ``group`` is delivering ``event_id`` now, so a replay would merge into that delivery."""

    def __init__(self, event_id: str, group: str) -> None:
        super().__init__(event_id, group)
        self.event_id = event_id
        self.group = group

    def __str__(self) -> str:
        return f"event {self.event_id} is being delivered to group {self.group} now; replay it once that delivery ends"


class ConfigError(RelayError):
    """A server option or channel setting is invalid; ``value`` None means it is missing."""

    def __init__(self, option: str, value: object, hint: str) -> None:
        super().__init__(option, value, hint)
        self.option = option
        self.value = value
        self.hint = hint

    def __str__(self) -> str:
        if self.value is None:
            return f"missing {self.option}: {self.hint}"
        return f"invalid {self.option} {self.value!r}: {self.hint}"


class ListenError(RelayError):
    """The relay could not listen on its address."""

    def __init__(self, address: str, reason: str, hint: str) -> None:
        super().__init__(address, reason, hint)
        self.address = address
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.reason}; {self.hint}"
