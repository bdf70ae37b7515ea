"""Event stores behind one interface: SQLite (embedded, the default)."""

from relay_server.store.base import DEFAULT_GROUP, ChannelRecord, EventStore, NewEvent, Retention
from relay_server.store.sqlite import SQLiteStore

__all__ = ["DEFAULT_GROUP", "ChannelRecord", "EventStore", "NewEvent", "Retention", "SQLiteStore"]
