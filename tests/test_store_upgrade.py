"""The SQLite store opens databases of earlier releases and keeps their meaning.

Earlier releases numbered events with AUTOINCREMENT, indexed them by
arrival time, and wrote the last attempt of every event as a row beside its
outcome. Each test builds such a database with plain SQL on a real file and
opens it with the store.
"""

import sqlite3
import time

from relay_server.store import ChannelRecord, NewEvent, Retention, SQLiteStore
from relay_server.store import sqlite as sqlite_store
from relay_server.store import sqlite_dedupe

# The version 2 schema as earlier releases created it.
EARLIER_SCHEMA = sqlite_store.SCHEMA.replace("seq INTEGER PRIMARY KEY,", "seq INTEGER PRIMARY KEY AUTOINCREMENT,") + (
    "CREATE INDEX events_by_age ON events (received_at);"
)
EVENT_COLUMNS = "id, channel, received_at, method, target, headers, body, remote, scheme"


def write_earlier_database(path, rows):
    """Create a version 2 database with ``rows`` of (event id, received_at), then delete the newest event."""
    with sqlite3.connect(path / "hookrelay.sqlite3") as conn:
        conn.executescript(EARLIER_SCHEMA)
        conn.executescript(sqlite_dedupe.SCHEMA)
        conn.execute("PRAGMA user_version=2")
        conn.execute("INSERT INTO channels (id, token_hash, created_at) VALUES ('ch_a', x'00', 0)")
        for event_id, received_at in rows:
            conn.execute(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, 'ch_a', ?, 'POST', x'2f', '[]', x'7b7d', '127.0.0.1', 'http')",
                (event_id, received_at),
            )
        conn.execute("DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)")
    conn.close()


def new_event(n):
    return NewEvent(f"evt_new_{n}", "ch_a", "POST", b"/", (), b"{}", time.time(), remote="127.0.0.1")


def indexes(path):
    with sqlite3.connect(path / "hookrelay.sqlite3") as conn:
        names = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
    conn.close()
    return names


async def test_upgrade_keeps_deleted_seqs_unused(tmp_path):
    """A seq that AUTOINCREMENT gave to a deleted event is not given again."""
    now = time.time()
    write_earlier_database(tmp_path, [("evt_1", now), ("evt_2", now), ("evt_3", now)])

    async with SQLiteStore(tmp_path) as store:
        seq = await store.append(new_event(4))

    assert seq == 4


async def test_upgrade_raises_schema_version(tmp_path):
    """An opened version 2 database records version 3, so that a version 2 release raises instead of misreading it."""
    write_earlier_database(tmp_path, [("evt_1", time.time())])

    async with SQLiteStore(tmp_path):
        pass

    with sqlite3.connect(tmp_path / "hookrelay.sqlite3") as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.close()
    assert version == 3


async def test_upgrade_drops_age_index(tmp_path):
    """The index by arrival time is dropped, and pruning by age still finds old events."""
    now = time.time()
    write_earlier_database(tmp_path, [("evt_1", now - 7200), ("evt_2", now - 7200), ("evt_3", now), ("evt_4", now)])
    assert "events_by_age" in indexes(tmp_path)

    async with SQLiteStore(tmp_path, retention=Retention(max_age=3600)) as store:
        assert "events_by_age" not in indexes(tmp_path)
        assert await store.prune(now) == 2
        assert await store.get_event("ch_a", "evt_3") is not None
        assert await store.get_event("ch_a", "evt_1") is None


async def test_upgrade_lists_last_attempt_once(tmp_path):
    """History lists an event's last attempt once, whether a row or only the outcome contains it."""
    now = time.time()
    write_earlier_database(tmp_path, [("evt_1", now), ("evt_2", now)])
    with sqlite3.connect(tmp_path / "hookrelay.sqlite3") as conn:
        conn.execute("INSERT INTO outcomes VALUES ('evt_1', 'default', 'delivered', 200, 2, 1.5, NULL, ?)", (now + 2,))
        conn.execute("INSERT INTO attempts VALUES ('evt_1', 'default', 1, 503, 1.0, 'HTTP 503', ?)", (now + 1,))
        conn.execute("INSERT INTO attempts VALUES ('evt_1', 'default', 2, 200, 1.5, NULL, ?)", (now + 2,))
    conn.close()

    async with SQLiteStore(tmp_path) as store:
        detail = await store.get_event("ch_a", "evt_1")

    assert [(a.attempt, a.status, a.at) for a in detail.attempts] == [(1, 503, now + 1), (2, 200, now + 2)]


async def test_age_prune_stops_at_young_event(tmp_path):
    """Pruning walks events in arrival order: one stamped late, after the clock was set back, keeps later ones."""
    now = time.time()
    async with SQLiteStore(tmp_path, retention=Retention(max_age=3600)) as store:
        await store.create_channel(ChannelRecord("ch_a", b"h", now))
        for n, received_at in enumerate([now - 7200, now, now - 7200]):
            await store.append(NewEvent(f"evt_{n}", "ch_a", "POST", b"/", (), b"{}", received_at))
        assert await store.prune(now) == 1
        assert await store.get_event("ch_a", "evt_2") is not None
        assert await store.prune(now + 3601) == 2
