"""Group commit in the SQLite store: operations that share a transaction do not share a failure.

Operations submitted together run in one transaction. Most tests put a
failing operation between appends on a real database file and check what
the commit kept. One makes the commit itself fail, as on a full disk.
"""

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

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


# Run in a child process, because a file size limit applies to every file the process writes.
FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys, time
    from pathlib import Path
    from relay_server.errors import ChannelFull, StoreError
    from relay_server.store import ChannelRecord, NewEvent, Retention, SQLiteStore

    def new_event(n):
        return NewEvent(f"evt_full_{n}", "ch_a", "POST", b"/", (), b"{}", time.time(), remote="127.0.0.1")

    async def outcome(append):
        try:
            await append
            return "stored"
        except ChannelFull:
            return "channel full"
        except StoreError as exc:
            return str(exc)

    async def main(path):
        store = SQLiteStore(path, retention=Retention(max_events=3))
        await store.open()
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await store.append(new_event(1))
        await store.append(new_event(2))
        # Writes past the log's present end now fail, as they would on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        log_size = (path / "hookrelay.sqlite3-wal").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (log_size, resource.RLIM_INFINITY))
        failed = await outcome(store.append(new_event(3)))
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        after = [await outcome(store.append(new_event(n))) for n in (4, 5)]
        claimed = await store.claim("ch_a", "default", "c1", 10)
        await store.close()
        print(json.dumps({"failed": failed, "after": after, "claimed": [event.id for event in claimed]}))

    asyncio.run(main(Path(sys.argv[1])))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX file size limit (resource.RLIMIT_FSIZE)")
def test_failed_commit_reports_its_error(tmp_path):
    """A commit that fails on a disk error reports that error, and the lost append does not count toward the limit."""
    repo = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": str(repo)}
    completed = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], env=environment, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)

    assert "disk" in report["failed"], report["failed"]
    assert "cannot rollback" not in report["failed"]
    assert report["after"] == ["stored", "channel full"]
    assert report["claimed"] == ["evt_full_1", "evt_full_2", "evt_full_4"]
