"""De-duplication keys in the SQLite store.

A key row remembers which event a provider's delivery id was first stored
as, until ``expires_at``. The SQLite store checks and writes the row in
the same savepoint as the event's insert, on its single writer thread, so
two copies of one delivery that arrive together still store one event.
"""

from __future__ import annotations

import sqlite3

from relay_server.errors import DuplicateEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS dedupe_keys (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_keys_by_expiry ON dedupe_keys (expires_at);
"""


def raise_if_duplicate(conn: sqlite3.Connection, channel: str, key: str, now: float) -> None:
    """Raise :class:`DuplicateEvent` when ``key`` was stored on ``channel`` and has not expired."""
    row = conn.execute(
        "SELECT event_id FROM dedupe_keys WHERE channel = ? AND key = ? AND expires_at > ?", (channel, key, now)
    ).fetchone()
    if row is not None:
        raise DuplicateEvent(channel, key, row[0])


def remember(conn: sqlite3.Connection, channel: str, key: str, event_id: str, expires_at: float) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO dedupe_keys (channel, key, event_id, expires_at) VALUES (?, ?, ?, ?)",
        (channel, key, event_id, expires_at),
    )


def forget_expired(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("DELETE FROM dedupe_keys WHERE expires_at <= ?", (now,)).rowcount
