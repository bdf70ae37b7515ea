"""Large bodies in segment files beside the SQLite database (relay_server.store.sqlite_bodies).

Every test runs the SQLite store on a real file and reads the segment
files and the database the way an operator's tools would.
"""

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import time

import pytest

from relay_server.errors import StoreError
from relay_server.protocol import DeliveryResult
from relay_server.store import ChannelRecord, EventQuery, NewEvent, Retention, SQLiteStore
from relay_server.store.sqlite_bodies import EXTERNAL_BODY_BYTES, FOLDER

LARGE = EXTERNAL_BODY_BYTES + 1


def new_event(n, body):
    return NewEvent(
        id=f"evt_body_{n:05d}",
        channel="ch_a",
        method="POST",
        target=b"/",
        headers=((b"Content-Type", b"application/octet-stream"),),
        body=body,
        received_at=time.time(),
        remote="127.0.0.1",
    )


def large_body(n, size=LARGE):
    # Random bytes with NUL and invalid UTF-8, different for every event.
    return os.urandom(size - 4) + b"\x00\xff" + n.to_bytes(2, "big")


def segment_files(data_dir):
    return sorted(path.name for path in (data_dir / FOLDER).glob("*.body"))


def stored_rows(data_dir):
    with sqlite3.connect(data_dir / "hookrelay.sqlite3") as conn:
        return conn.execute("SELECT id, length(body), body_segment, body_offset, body_length FROM events ORDER BY seq").fetchall()


def forget_copies(store):
    """Drop the store's in-memory copies of new events, so that claims read bodies from disk."""
    store._forget_recent()


async def claim_after_restart(data_dir):
    """Open the store anew, as a restarted relay does, and claim every event."""
    store = await open_store(data_dir)
    try:
        return await store.claim("ch_a", "default", "c1", 10)
    finally:
        await store.close()


async def open_store(data_dir, **options):
    store = SQLiteStore(data_dir, **options)
    await store.open()
    if await store.get_channel("ch_a") is None:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
    return store


async def test_large_body_exact_round_trip(tmp_path):
    """Claims, history and the event page all see the exact bytes; the row keeps only their location."""
    body = large_body(1)
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(1, body))
        [claimed] = await store.claim("ch_a", "default", "c1", 1)
        detail = await store.get_event("ch_a", "evt_body_00001")
        [summary] = await store.list_events("ch_a", EventQuery())
    finally:
        await store.close()

    assert claimed.body == body
    assert detail is not None and detail.event.body == body
    assert summary.size == len(body)
    assert stored_rows(tmp_path) == [("evt_body_00001", 0, 1, 0, len(body))]
    assert (tmp_path / FOLDER / "00000001.body").read_bytes() == body


async def test_threshold_body_stays_inline(tmp_path):
    """Up to EXTERNAL_BODY_BYTES a body is stored in the database as before."""
    body = large_body(2, size=EXTERNAL_BODY_BYTES)
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(2, body))
    finally:
        await store.close()

    assert stored_rows(tmp_path) == [("evt_body_00002", len(body), None, None, None)]
    assert segment_files(tmp_path) == []


async def test_segment_read_after_restart(tmp_path):
    """A new relay process has no copy in memory and reads every body from its segment."""
    bodies = [large_body(n) for n in range(5)]
    store = await open_store(tmp_path)
    try:
        await asyncio.gather(*(store.append(new_event(n, body)) for n, body in enumerate(bodies)))
    finally:
        await store.close()

    claimed = await claim_after_restart(tmp_path)
    assert [event.body for event in claimed] == bodies


async def test_segment_rollover_keeps_bodies(tmp_path):
    """Appends go on in a new segment once one is full, and every body stays readable."""
    store = SQLiteStore(tmp_path)
    store._bodies._segment_bytes = 3 * LARGE
    await store.open()
    bodies = [large_body(n) for n in range(7)]
    try:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        for n, body in enumerate(bodies):
            await store.append(new_event(n, body))
        forget_copies(store)
        claimed = await store.claim("ch_a", "default", "c1", 10)
    finally:
        await store.close()

    assert [event.body for event in claimed] == bodies
    assert segment_files(tmp_path) == ["00000001.body", "00000002.body", "00000003.body"]
    assert [row[2] for row in stored_rows(tmp_path)] == [1, 1, 1, 2, 2, 2, 3]


async def test_prune_removes_unnamed_segments(tmp_path):
    """Age retention deletes the events and then their segments, but keeps the one being written."""
    store = SQLiteStore(tmp_path, retention=Retention(max_age=60))
    store._bodies._segment_bytes = 2 * LARGE
    await store.open()
    try:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        for n in range(5):
            await store.append(new_event(n, large_body(n)))
        assert segment_files(tmp_path) == ["00000001.body", "00000002.body", "00000003.body"]
        assert await store.prune(time.time() + 120) == 5
        left = segment_files(tmp_path)
        body = large_body(9)
        await store.append(new_event(9, body))
        forget_copies(store)
        [claimed] = await store.claim("ch_a", "default", "c1", 5)
    finally:
        await store.close()

    assert left == ["00000003.body"]
    assert claimed.id == "evt_body_00009"
    assert claimed.body == body
    # The segment being written kept its bytes, and the new body follows them.
    assert stored_rows(tmp_path) == [("evt_body_00009", 0, 3, LARGE, LARGE)]


async def test_startup_removes_leftover_segment(tmp_path):
    """Bytes of a batch that never committed, left by a crash, do not stay on disk forever."""
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "00000007.body").write_bytes(b"x" * 100)
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(1, large_body(1)))
    finally:
        await store.close()

    # Numbering goes on after the leftover, so no segment name is used twice.
    assert segment_files(tmp_path) == ["00000008.body"]


async def test_startup_drops_events_missing_bodies(tmp_path, caplog):
    """After a power failure, rows that name bytes past the end of their segment are removed, with a warning."""
    bodies = [large_body(n) for n in range(3)]
    store = await open_store(tmp_path)
    try:
        for n, body in enumerate(bodies):
            await store.append(new_event(n, body))
    finally:
        await store.close()
    segment = tmp_path / FOLDER / "00000001.body"
    # What the disk may hold when the kernel wrote the rows but not the last body.
    with open(segment, "r+b") as handle:
        handle.truncate(2 * LARGE + 10)

    caplog.set_level(logging.WARNING, logger="hookrelay.server.store")
    claimed = await claim_after_restart(tmp_path)

    assert [event.body for event in claimed] == bodies[:2]
    assert [row[0] for row in stored_rows(tmp_path)] == ["evt_body_00000", "evt_body_00001"]
    assert "event dropped: its body is missing from segment 1 channel=ch_a event_id=evt_body_00002" in caplog.text


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
async def test_close_syncs_segments(tmp_path, synchronous):
    """Closing syncs the segments; with FULL a commit already did. Either way nothing stays unsynced."""
    store = await open_store(tmp_path, synchronous=synchronous)
    try:
        await store.append(new_event(1, large_body(1)))
        unsynced_after_commit = store._bodies._dirty
    finally:
        await store.close()

    assert unsynced_after_commit is (synchronous == "NORMAL")
    assert store._bodies._dirty is False
    assert len((tmp_path / FOLDER / "00000001.body").read_bytes()) == LARGE


async def test_replay_keeps_large_body(tmp_path):
    """History outlives delivery: a replayed large event arrives with the same bytes."""
    body = large_body(3)
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(3, body))
        [first] = await store.claim("ch_a", "default", "c1", 1)
        await store.ack("ch_a", "default", [DeliveryResult(first.id, "delivered", 200)])
        assert await store.replay("ch_a", first.id, "default")
        forget_copies(store)
        [again] = await store.claim("ch_a", "default", "c1", 1)
    finally:
        await store.close()
    assert again.body == body


async def test_startup_refuses_missing_segment(tmp_path):
    """A database copied without its bodies folder does not start, and loses nothing."""
    bodies = [large_body(n) for n in range(3)]
    store = await open_store(tmp_path)
    try:
        for n, body in enumerate(bodies):
            await store.append(new_event(n, body))
    finally:
        await store.close()
    (tmp_path / FOLDER).rename(tmp_path / "bodies.elsewhere")

    with pytest.raises(StoreError) as refused:
        await open_store(tmp_path)
    (tmp_path / "bodies.elsewhere").rename(tmp_path / FOLDER)
    claimed = await claim_after_restart(tmp_path)

    assert [event.body for event in claimed] == bodies
    assert "the bodies of 3 events are missing" in str(refused.value)
    assert f"{tmp_path / FOLDER / '00000001.body'} not found" in str(refused.value)
    assert len(claimed) == 3


async def test_empty_segment_file_drops_its_events(tmp_path):
    """Creating a missing segment empty is the way to give up its events: they are dropped with warnings."""
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(1, large_body(1)))
        await store.append(new_event(2, b"small"))
    finally:
        await store.close()
    (tmp_path / FOLDER / "00000001.body").write_bytes(b"")

    claimed = await claim_after_restart(tmp_path)
    assert [event.id for event in claimed] == ["evt_body_00002"]


async def test_new_data_folder_is_private(tmp_path):
    """A data folder that the relay creates, and its bodies folder, are readable by its user only."""
    data_dir = tmp_path / "relay-data"
    store = await open_store(data_dir)
    try:
        await store.append(new_event(1, large_body(1)))
    finally:
        await store.close()
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / FOLDER).stat().st_mode & 0o777 == 0o700


def limited(resource_kind, soft):
    """Lower one resource limit of this process for a block, as a full disk or a busy relay would."""
    import contextlib
    import resource

    @contextlib.contextmanager
    def block():
        old = resource.getrlimit(resource_kind)
        resource.setrlimit(resource_kind, (soft, old[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource_kind, old)

    return block()


async def test_failed_write_leaves_segment_consistent(tmp_path):
    """A body that does not fit (a full disk) is refused with StoreError; later bodies land at their offsets."""
    import resource
    import signal

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    bodies = [large_body(n, size=1024 * 1024) for n in range(3)]
    store = await open_store(tmp_path)
    try:
        await store.append(new_event(0, bodies[0]))
        with limited(resource.RLIMIT_FSIZE, 1024 * 1024 + 1000):
            with pytest.raises(StoreError) as refused:
                await store.append(new_event(1, bodies[1]))
        await store.append(new_event(2, bodies[2]))
    finally:
        await store.close()
        signal.signal(signal.SIGXFSZ, previous)

    claimed = await claim_after_restart(tmp_path)
    assert "cannot write to body segment" in str(refused.value)
    assert [event.id for event in claimed] == ["evt_body_00000", "evt_body_00002"]
    assert [event.body for event in claimed] == [bodies[0], bodies[2]]
    assert (tmp_path / FOLDER / "00000001.body").stat().st_size == 2 * 1024 * 1024


async def test_failed_segment_creation_keeps_numbering(tmp_path):
    """When no new segment file can be opened, the append fails and later rows name files that exist."""
    import resource

    store = SQLiteStore(tmp_path)
    store._bodies._segment_bytes = LARGE
    await store.open()
    bodies = [large_body(n) for n in range(3)]
    try:
        await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
        await store.append(new_event(0, bodies[0]))
        # Every descriptor number in use: opening the next segment fails with EMFILE.
        with limited(resource.RLIMIT_NOFILE, 3):
            with pytest.raises(StoreError) as refused:
                await store.append(new_event(1, bodies[1]))
        await store.append(new_event(2, bodies[2]))
    finally:
        await store.close()

    claimed = await claim_after_restart(tmp_path)
    assert "cannot create body segment" in str(refused.value)
    assert [event.body for event in claimed] == [bodies[0], bodies[2]]
    assert segment_files(tmp_path) == ["00000001.body", "00000002.body"]


async def test_newer_schema_is_refused(tmp_path):
    """A database written by a newer release is not opened, so that nothing reads its rows wrongly."""
    store = await open_store(tmp_path)
    await store.close()
    with sqlite3.connect(tmp_path / "hookrelay.sqlite3") as conn:
        conn.execute("PRAGMA user_version=99")

    with pytest.raises(StoreError) as refused:
        await open_store(tmp_path)
    assert "written by a newer hookrelay (schema version 99, this one knows 3)" in str(refused.value)


def resident_bytes(path):
    """Return how many bytes of ``path`` are in the page cache, as util-linux fincore reports it."""
    output = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(output.strip())


def drops_synced_pages(folder):
    """Return True when this file system drops synced pages on POSIX_FADV_DONTNEED (tmpfs does not)."""
    probe = folder / "probe"
    with open(probe, "wb") as handle:
        handle.write(os.urandom(1 << 20))
        handle.flush()
        os.fdatasync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        return resident_bytes(probe) == 0
    finally:
        probe.unlink()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or shutil.which("fincore") is None, reason="needs posix_fadvise and fincore")
async def test_synced_bodies_leave_page_cache(tmp_path):
    """After a sync the segments' pages leave the page cache, and the bodies still read back from disk."""
    if not drops_synced_pages(tmp_path):
        pytest.skip(f"the file system of {tmp_path} keeps synced pages cached")
    store = SQLiteStore(tmp_path)
    store._bodies._segment_bytes = 4 * LARGE
    await store.open()
    await store.create_channel(ChannelRecord("ch_a", b"h", time.time()))
    bodies = [large_body(n) for n in range(6)]
    for n, body in enumerate(bodies):
        await store.append(new_event(n, body))
    segments = sorted((tmp_path / FOLDER).glob("*.body"))
    assert len(segments) == 2
    assert resident_bytes(segments[1]) > 0

    await asyncio.get_running_loop().run_in_executor(None, store._bodies.sync)

    assert [resident_bytes(path) for path in segments] == [0, 0]
    forget_copies(store)
    claimed = await store.claim("ch_a", "default", "c1", 10)
    await store.close()
    assert [event.body for event in claimed] == bodies
