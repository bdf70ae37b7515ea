"""Group commit in the SQLite store: operations that share a transaction do not share a failure.

Operations submitted together run in one transaction. Each test puts a
failing operation between appends on a real database file and checks what
the commit kept.
"""

import asyncio
import sqlite3
import time

import pytest

from relay_server.errors import ChannelFull
from relay_server.store import ChannelRecord, NewEvent, Retention, SQLiteStore


def new_event(n):
    return NewEvent(f"evt_batch_{n}", "ch_a", "POST", b"/", (), b"{}", time.time(), remote="127.0.0.1")


def insert_then_fail(conn):
    conn.execute("INSERT INTO channels (id, token_hash, created_at) VALUES ('ch_half', x'00', 0)")
    raise sqlite3.IntegrityError("failed after a change")


def fail_before_change(conn):
    raise sqlite3.IntegrityError("failed before a change")


async def open_store(path, **options):
    store = SQLiteStore(path, **options)
    await store.open()
    await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
    return store


@pytest.mark.parametrize("failing", [insert_then_fail, fail_before_change])
async def test_failure_keeps_neighbours(tmp_path, failing):
    """The appends around a failing operation are committed, and only the failing one's changes are undone."""
    store = await open_store(tmp_path)
    try:
        first, failed, second = await asyncio.gather(
            store.append(new_event(1)), store._submit(failing), store.append(new_event(2)), return_exceptions=True
        )
        claimed = await store.claim("ch_a", "default", "c1", 5)
        leftover = await store._read(lambda conn: conn.execute("SELECT id FROM channels WHERE id = 'ch_half'").fetchone())
    finally:
        await store.close()

    assert isinstance(failed, sqlite3.IntegrityError)
    assert second > first
    assert [event.id for event in claimed] == ["evt_batch_1", "evt_batch_2"]
    assert leftover is None


async def test_rerun_batch_counts_once(tmp_path):
    """Appends of a batch that ran twice count once toward the channel's limit."""
    store = await open_store(tmp_path, retention=Retention(max_events=3))
    try:
        await asyncio.gather(
            store.append(new_event(1)), store._submit(insert_then_fail), store.append(new_event(2)), return_exceptions=True
        )
        await store.append(new_event(3))
        with pytest.raises(ChannelFull):
            await store.append(new_event(4))
    finally:
        await store.close()
