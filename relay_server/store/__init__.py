"""Event stores behind one interface: SQLite (embedded, the default)."""

from relay_server.store.base import (
    DEFAULT_GROUP,
    EVENT_STATES,
    AttemptRecord,
    ChannelRecord,
    EventDetail,
    EventQuery,
    EventStore,
    EventSummary,
    NewEvent,
    Outcome,
    Retention,
    SenderAnswer,
)
from relay_server.store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_GROUP",
    "EVENT_STATES",
    "AttemptRecord",
    "ChannelRecord",
    "EventDetail",
    "EventQuery",
    "EventStore",
    "EventSummary",
    "NewEvent",
    "Outcome",
    "Retention",
    "SenderAnswer",
    "SQLiteStore",
]
