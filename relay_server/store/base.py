"""The storage interface every backend implements.

A channel is an ordered log of events. Listeners read it through consumer
groups: each group has a cursor (the last sequence number handed out) and a
pending list of events sent to one of its consumers but not acknowledged.
The model follows Redis Streams on purpose, so the SQLite and Redis backends
share one contract and one test suite.

Stores know nothing of HTTP or websockets. Every method that changes state
returns only after the change is durable under the backend's durability
setting.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from relay_server.protocol import AttemptReport, DeliveryResult, Event

DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A channel as stored: its id, the hash of its token and its settings."""

    id: str
    token_hash: bytes
    created_at: float
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class NewEvent:
    """A webhook request accepted by ingest, before the store numbers it.

    Not frozen, like :class:`~relay_server.protocol.Event`: one is built per
    request, and nothing changes it afterwards.
    """

    id: str
    channel: str
    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    received_at: float
    remote: str = ""
    scheme: str = "http"
    event_type: str | None = None
    respond_until: float | None = None
    verification: str | None = None
    # A provider's delivery id: while an event stored under the same key is
    # younger than ``dedupe_window`` seconds, append raises DuplicateEvent.
    dedupe_key: str | None = None
    dedupe_window: float = 0.0


# States an event has for one group, as history shows and filters them.
EVENT_STATES = ("pending", "delivered", "failed", "skipped")


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters for listing a channel's history, newest first.

    ``before`` and ``after`` are sequence numbers: ``before`` pages back in
    history, ``after`` selects what arrived after a given event.
    """

    group: str = DEFAULT_GROUP
    state: str | None = None
    method: str | None = None
    event_type: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EventSummary:
    """One row of a channel's history."""

    id: str
    seq: int
    method: str
    target: bytes
    event_type: str | None
    received_at: float
    size: int
    state: str
    status: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """Outcome of one event for one consumer group."""

    group: str
    outcome: str
    status: int | None
    attempts: int
    duration_ms: float
    error: str | None
    finished_at: float


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One delivery attempt as history shows it."""

    group: str
    attempt: int
    status: int | None
    duration_ms: float
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class SenderAnswer:
    """Response a sender of a sync channel received: the target's, or the fallback."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    source: str
    at: float


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One event in full, with its outcomes, attempts and the response its sender got."""

    event: Event
    outcomes: tuple[Outcome, ...]
    attempts: tuple[AttemptRecord, ...]
    answer: SenderAnswer | None


@dataclass(frozen=True, slots=True)
class Retention:
    """How long and how many events a channel keeps.

    ``max_events`` bounds the events a channel stores. Events every group has
    acknowledged are pruned first to make room; when the channel is full of
    events still waiting for a group, ingest is rejected instead of dropping
    them. ``max_age`` (seconds) removes events whatever their state.
    """

    max_events: int = 100_000
    max_age: float = 7 * 24 * 3600.0


class EventStore(abc.ABC):
    """Durable channels, event logs and consumer-group positions."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect or create the schema; redelivery state of dead consumers is released."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release resources; calling it twice is harmless."""

    @abc.abstractmethod
    async def create_channel(self, channel: ChannelRecord) -> None:
        """Store a new channel and its ``default`` group, positioned at the start."""

    @abc.abstractmethod
    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        """Return the channel or None when it does not exist."""

    @abc.abstractmethod
    async def set_token_hash(self, channel_id: str, token_hash: bytes) -> None:
        """Replace a channel's token hash, which invalidates the old token."""

    @abc.abstractmethod
    async def append(self, event: NewEvent) -> int:
        """Store ``event`` at the end of its channel's log and return its sequence number.

        Returns only after the event is committed. Raises
        :class:`~relay_server.errors.ChannelFull` when retention leaves no room,
        and :class:`~relay_server.errors.DuplicateEvent` without storing
        anything when ``event.dedupe_key`` was stored on the channel less than
        that event's ``dedupe_window`` ago. Checking and remembering the key
        is atomic with the insert.
        """

    @abc.abstractmethod
    async def claim(self, channel: str, group: str, consumer: str, count: int) -> list[Event]:
        """Hand up to ``count`` events to ``consumer`` and record them as pending.

        Events released by consumers that went away come first, then events
        after the group's cursor, all in sequence order. A group seen for the
        first time starts at the end of the log (new events only), except the
        ``default`` group, which exists from the channel's creation on.

        Fewer than ``count`` events come back only when the group has nothing
        more to claim at that moment. A session then waits for the hub's
        wake-up instead of claiming again, so an event that becomes
        claimable must come with a wake-up (an append, a release, a replay,
        or consumers found gone).
        """

    @abc.abstractmethod
    async def ack(self, channel: str, group: str, results: list[DeliveryResult]) -> int:
        """Remove the events of ``results`` from the group's pending list and keep their outcomes.

        Returns how many pending entries were removed. An ack for an event that
        is no longer pending (already acknowledged, or pruned) is ignored.
        """

    @abc.abstractmethod
    async def release(self, channel: str, group: str, consumer: str) -> int:
        """Make ``consumer``'s pending events available to the next claim; returns their count."""

    @abc.abstractmethod
    async def backlog(self, channel: str, group: str) -> int:
        """Count the events ``group`` has still to acknowledge (pending plus unread)."""

    @abc.abstractmethod
    async def list_groups(self, channel: str) -> list[str]:
        """Return the names of the channel's consumer groups, sorted."""

    @abc.abstractmethod
    async def update_settings(self, channel_id: str, settings: dict[str, Any]) -> ChannelRecord:
        """Replace a channel's settings and return the updated channel."""

    @abc.abstractmethod
    async def record_attempt(self, channel: str, group: str, report: AttemptReport) -> None:
        """Keep a failed attempt in the event's history."""

    @abc.abstractmethod
    async def record_answer(self, channel: str, event_id: str, answer: SenderAnswer) -> None:
        """Keep what the sender of a sync channel received."""

    @abc.abstractmethod
    async def list_events(self, channel: str, query: EventQuery) -> list[EventSummary]:
        """Return the channel's events matching ``query``, newest first.

        NOTE: an event without an outcome for ``query.group`` shows as pending,
        also when it was stored before the group's first claim and so never
        goes to that group, and for a group that no listener has used.
        """

    @abc.abstractmethod
    async def get_event(self, channel: str, event_id: str) -> EventDetail | None:
        """Return one event in full, or None when it is not in this channel."""

    @abc.abstractmethod
    async def delete_event(self, channel: str, event_id: str) -> bool:
        """Remove an event and its history; returns False when it did not exist."""

    @abc.abstractmethod
    async def replay(self, channel: str, event_id: str, group: str) -> bool:
        """Queue an event again for ``group``, with the same id; False when it does not exist.

        The group's outcome for the event is cleared, so history shows it
        pending until the next delivery finishes. The next claim hands it out
        with ``delivery_count`` 1, as a first delivery rather than a redelivery.

        Raises :class:`~relay_server.errors.EventInFlight` while a listener of
        ``group`` is delivering the event: the listener would take the replay
        for a copy of the delivery in hand and send it only once.
        """

    @abc.abstractmethod
    async def prune(self, now: float) -> int:
        """Apply age retention to every channel; returns how many events were removed."""

    async def ping(self) -> None:
        """Raise :class:`~relay_server.errors.StoreError` when the store cannot serve requests now."""

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
