"""SQLite backend: one file in WAL mode, one writer thread with group commit.

Every state change goes through one writer thread. Operations that arrive
while a transaction runs wait and are committed together in the next one.
One failing operation does not undo its neighbours: when it changed rows
before it failed, the batch runs again with each operation in its own
savepoint. A caller's ``await`` returns only after the commit that contains
its operation.

Durability: with ``synchronous=NORMAL`` (the default) a commit survives the
relay process being killed, because WAL frames are in the operating
system's page cache, but the latest commits may be lost on power failure.
``synchronous=FULL`` syncs the WAL on every commit and survives power loss
at the cost of one fsync per group commit.

Where the writer runs: with ``synchronous=NORMAL`` a commit does no fsync,
so a batch of small operations runs on the event loop's thread, which
saves the hand-off to a thread and back (measured with scripts/bench: about
a fifth of the relay's CPU per 1 KB event). Batches with large bodies, age
pruning and every batch under ``synchronous=FULL`` run on the store's
thread instead. Automatic checkpoints, which fsync, are off on the writing
connection. Instead the store's thread checkpoints between two batches,
after 200 commits or 4 MiB of bodies. Reads use their own connection on
the store's thread and see committed data only.

Bodies over 32 KiB live in segment files beside the database instead of
in their rows, so that they are written once (:mod:`.sqlite_bodies`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from relay_server.errors import ChannelFull, EventInFlight, StoreError
from relay_server.protocol import AttemptReport, DeliveryResult, Event, dump_json, load_json
from relay_server.store import sqlite_bodies, sqlite_dedupe
from relay_server.store.base import (
    DEFAULT_GROUP,
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

logger = logging.getLogger("hookrelay.server.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL,
    created_at REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
);
-- seq is assigned by the store, never reused (see SQLiteStore._next_seq).
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    received_at REAL NOT NULL,
    method TEXT NOT NULL,
    target BLOB NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    remote TEXT NOT NULL,
    scheme TEXT NOT NULL,
    event_type TEXT,
    respond_until REAL,
    body_segment INTEGER,
    body_offset INTEGER,
    body_length INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_channel ON events (channel, seq);
CREATE TABLE IF NOT EXISTS groups (
    channel TEXT NOT NULL,
    name TEXT NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (channel, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    channel TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    consumer TEXT,
    delivery_count INTEGER NOT NULL,
    delivered_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, grp, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    event_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    attempts INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    error TEXT,
    finished_at REAL NOT NULL,
    PRIMARY KEY (event_id, grp)
) WITHOUT ROWID;
-- Attempts before the last one; the last is the group's row in outcomes.
-- Append-only: a replayed event numbers its attempts from 1 again.
CREATE TABLE IF NOT EXISTS attempts (
    event_id TEXT NOT NULL,
    grp TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    duration_ms REAL NOT NULL,
    error TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts (event_id);
CREATE TABLE IF NOT EXISTS answers (
    event_id TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    source TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

# Columns added after the first release, created on databases that lack them.
_ADDED_COLUMNS = {
    "events": {
        "respond_until": "REAL",
        "verification": "TEXT",
        "body_segment": "INTEGER",
        "body_offset": "INTEGER",
        "body_length": "INTEGER",
    },
    "pending": {"attempts": "INTEGER NOT NULL DEFAULT 0"},
}
# Kept in PRAGMA user_version. Version 2 keeps large bodies in segment files,
# which a release that reads only version 1 would take for empty bodies.
# Version 3 keeps an event's last attempt only in its outcome row and numbers
# events without AUTOINCREMENT, so a version 2 release would lose attempts
# from history and could give a deleted event's seq again.
_SCHEMA_VERSION = 3
# Created once the columns it covers exist, also on databases of earlier releases.
_SEGMENT_INDEX = "CREATE INDEX IF NOT EXISTS events_by_segment ON events (body_segment) WHERE body_segment IS NOT NULL"
# Earlier releases indexed events by arrival time for pruning by age. Pruning
# now walks the events in seq order, and the index cost a page in every commit.
_DROPPED_INDEXES = ("events_by_age",)

_EVENT_COLUMNS = (
    "seq, id, channel, received_at, method, target, headers, body, remote, scheme, event_type, respond_until, verification,"
    " body_segment, body_offset, body_length"
)

# Share of a full channel pruned at once, so a channel at its limit does not
# run a delete for every single append.
_PRUNE_FRACTION = 0.01

# The delivery count and earlier attempts of an event claimed for the first time.
_FIRST_DELIVERY = (1, 0)

# A write batch runs on the event loop's thread (synchronous=NORMAL only)
# while the bodies it stores add up to no more than this many bytes.
_INLINE_BATCH_BYTES = 1024 * 1024
# A checkpoint of the write-ahead log starts after this many commits or
# stored body bytes, whichever comes first. SQLite's own automatic
# checkpoint comes after 1,000 pages (4 MiB with the default page size).
_CHECKPOINT_COMMITS = 200
_CHECKPOINT_BYTES = 4 * 1024 * 1024
# A log longer than this makes the write loop wait for a checkpoint, so that
# the log starts over instead of growing under steady load.
_LOG_RESTART_BYTES = 32 * 1024 * 1024
# Held with flock by the relay that has the data folder open.
_LOCK_FILE = "hookrelay.lock"
# The newest stored events stay in memory, up to this many and this many
# body bytes, so that a claim for a listener that keeps up does not read
# the bodies back from the database. A 1 KB event takes about 3 KB here.
# Under 50 senders the queue behind one listener stayed below 160 events in
# 30,000, and keeping 4,096 cost the relay 3 to 4 % more CPU per event
# than 1,024 in paired runs.
_RECENT_EVENTS = 1024
_RECENT_BYTES = 16 * 1024 * 1024

Operation = Callable[[sqlite3.Connection], Any]
# An operation, the future of its caller, and its weight: the body bytes it
# stores, or infinity for one that may run long.
Queued = tuple[Operation, "asyncio.Future[Any]", float]


class SQLiteStore(EventStore):
    """The embedded store: a database file under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        synchronous: str = "NORMAL",
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(data_dir) / "hookrelay.sqlite3"
        self.synchronous = synchronous.upper()
        self.retention = retention or Retention()
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookrelay-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._queue: list[Queued] = []
        self._inline = self.synchronous == "NORMAL"
        # Commits and body bytes since the last checkpoint started.
        self._commits = 0
        self._written = 0.0
        self._checkpoint: asyncio.Future[None] | None = None
        self._lock: TextIO | None = None
        self._log_path = self.path.with_name(self.path.name + "-wal")
        self._bodies = sqlite_bodies.BodyLog(self.path.parent / sqlite_bodies.FOLDER)
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._channels: dict[str, ChannelRecord] = {}
        self._counts: dict[str, int] = {}
        # Stored events never change, so a copy of a committed one is exact.
        # Only operations of the write batches touch it, one batch at a time.
        self._recent: OrderedDict[int, Event] = OrderedDict()
        self._recent_bytes = 0
        # The seq of the next appended event. The store numbers events itself
        # because AUTOINCREMENT writes its counter's page in every commit.
        # A seq is not given twice, even after the newest events were deleted,
        # because a group's cursor may already be past it.
        self._next_seq = 1
        self._closed = False

    # -- lifecycle -----------------------------------------------------

    async def open(self) -> None:
        # Only the relay's user reads a data folder that the relay creates.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_data_dir()
        loop = asyncio.get_running_loop()
        try:
            released = await loop.run_in_executor(self._executor, self._connect)
        except BaseException:
            self._unlock_data_dir()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="hookrelay-sqlite-writer")
        logger.info("store opened path=%s synchronous=%s released_pending=%d", self.path, self.synchronous, released)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        # The writer commits what is queued, then ends; cancelling it could
        # strand a batch whose callers wait for their commit.
        if self._writer is not None:
            self._wakeup.set()
            await self._writer
        # Sync the bodies first: closing the last connection checkpoints the log, which makes its rows durable.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._bodies.close)
        for conn in (self._conn, self._reader):
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)
        self._unlock_data_dir()
        logger.info("store closed path=%s", self.path)

    def _lock_data_dir(self) -> None:
        """Take the data folder for this process, or raise StoreError when another relay has it.

        Opening the store releases every pending event of earlier runs, so a
        second relay on the same folder would hand out events that a running
        relay's listeners are still delivering.
        """
        if fcntl is None:
            # NOTE: without fcntl (Windows) nothing stops a second relay on the same folder.
            return
        lock_path = self.path.parent / _LOCK_FILE
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(
                "open", f"another relay (pid {holder}) uses the data folder {self.path.parent}; stop it or pass another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _unlock_data_dir(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def ping(self) -> None:
        if self._closed or self._conn is None:
            raise StoreError("ping", "the store is closed")
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    def _connect(self) -> int:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            self._check_schema_version(conn)
        except StoreError:
            conn.close()
            raise
        conn.executescript(SCHEMA)
        conn.executescript(sqlite_dedupe.SCHEMA)
        _add_missing_columns(conn)
        conn.execute(_SEGMENT_INDEX)
        for index in _DROPPED_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._bodies.open()
        try:
            self._drop_events_without_bodies(conn)
        except StoreError:
            conn.close()
            raise
        unused = self._bodies.unused(_named_segments(conn))
        if unused:
            # The deletions that left them unused reach the disk first (a checkpoint syncs the log).
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._bodies.remove(unused)

        # Consumers of a previous run are gone: their pending events go back
        # to their groups so the next listener gets them again.
        released = conn.execute("UPDATE pending SET consumer = NULL WHERE consumer IS NOT NULL").rowcount
        self._next_seq = _first_free_seq(conn)
        for row in conn.execute("SELECT id, token_hash, created_at, settings FROM channels"):
            self._channels[row[0]] = ChannelRecord(row[0], bytes(row[1]), row[2], json.loads(row[3]))
        if self._inline:
            conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={_LOG_RESTART_BYTES}")
        self._conn = conn
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.execute(f"PRAGMA synchronous={self.synchronous}")
        self._reader.execute("PRAGMA busy_timeout=5000")
        return released

    # -- group commit ---------------------------------------------------

    async def _submit(self, operation: Operation, weight: float = 0) -> Any:
        if self._closed:
            raise StoreError("write", "the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, future, weight))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        while not (self._closed and not self._queue):
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._queue:
                await self._commit_batch(self._take_batch())
            if self._closed:
                self._wakeup.set()

    def _take_batch(self) -> list[Queued]:
        batch, self._queue = self._queue, []
        return batch

    async def _commit_batch(self, batch: list[Queued]) -> None:
        loop = asyncio.get_running_loop()
        operations = [op for op, _, _ in batch]
        weight = sum(weight for _, _, weight in batch)
        try:
            if self._inline and weight <= _INLINE_BATCH_BYTES:
                outcomes = self._run_batch(operations)
            else:
                outcomes = await loop.run_in_executor(self._executor, self._run_batch, operations)
        except Exception as exc:
            logger.error("store commit failed for a batch of %d operations: %s", len(batch), exc)
            outcomes = [StoreError("commit", str(exc))] * len(batch)
        for (_, future, _), outcome in zip(batch, outcomes):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        await self._checkpoint_now_and_then(weight)

    def _run_batch(self, operations: list[Operation]) -> list[Any]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = self._run_operations(conn, operations)
            if results is None:
                # An operation failed after it changed rows: start over, each operation in its own savepoint.
                self._roll_back(conn)
                conn.execute("BEGIN IMMEDIATE")
                results = self._run_in_savepoints(conn, operations)
            if not self._inline:
                # synchronous=FULL: a committed row's body is on disk too.
                self._bodies.sync()
            conn.execute("COMMIT")
        except BaseException:
            self._roll_back(conn)
            raise
        return results

    def _run_operations(self, conn: sqlite3.Connection, operations: list[Operation]) -> list[Any] | None:
        """Run the operations one after another; returns their results, or None if one failed after changing rows.

        Most failures (a duplicate, a full channel) come before any change, and
        leave nothing to undo. Skipping a savepoint per operation for them
        saved about 3 us of the 45 us that the store spent per 1 KB event.
        """
        results: list[Any] = []
        for operation in operations:
            changes = conn.total_changes
            try:
                results.append(operation(conn))
            except Exception as exc:
                if conn.total_changes != changes:
                    return None
                results.append(exc)
        return results

    def _run_in_savepoints(self, conn: sqlite3.Connection, operations: list[Operation]) -> list[Any]:
        """Run each operation in its own savepoint, so that one that fails does not undo its neighbours."""
        results: list[Any] = []
        for operation in operations:
            conn.execute("SAVEPOINT op")
            try:
                results.append(operation(conn))
                conn.execute("RELEASE op")
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append(exc)
        return results

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        # SQLite ends the transaction itself when a commit fails on a disk
        # error, and a second ROLLBACK would fail and hide that error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        # The batch's appends are gone, and their seqs stay unused. The
        # channel counts may include them, so they are counted again.
        self._forget_recent()
        self._counts.clear()

    async def _checkpoint_now_and_then(self, weight: float) -> None:
        """Checkpoint the write-ahead log on the store's thread after enough commits or bytes.

        A checkpoint syncs the database file, which took about 10 ms per 4 MiB
        here, so commits go on while it runs. A checkpoint that overlaps
        commits cannot copy the frames they add, though, and the log starts
        over only after one copied everything. So once the log file is longer
        than _LOG_RESTART_BYTES, the write loop waits for a checkpoint with no
        commit beside it, and the next commit starts the log over.
        """
        self._commits += 1
        self._written += weight
        due = self._commits >= _CHECKPOINT_COMMITS or self._written >= _CHECKPOINT_BYTES
        if not self._inline or not due:
            return
        self._commits = 0
        self._written = 0.0
        running = self._checkpoint is not None and not self._checkpoint.done()
        if self._log_file_size() > _LOG_RESTART_BYTES:
            if running:
                await asyncio.wait([self._checkpoint])
            await asyncio.wait([self._start_checkpoint()])
        elif not running:
            self._start_checkpoint()

    def _start_checkpoint(self) -> asyncio.Future[None]:
        checkpoint = asyncio.get_running_loop().run_in_executor(self._executor, self._run_checkpoint)
        checkpoint.add_done_callback(self._checkpoint_done)
        self._checkpoint = checkpoint
        return checkpoint

    def _run_checkpoint(self) -> None:
        assert self._reader is not None
        # The checkpoint syncs the log, and with it rows that name bodies.
        self._bodies.sync()
        self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _check_schema_version(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise StoreError(
                "open",
                f"the database {self.path} was written by a newer hookrelay (schema version {version}, this one knows"
                f" {_SCHEMA_VERSION}); run that release or a newer one",
            )

    def _remove_segments(self, unused: list[int]) -> None:
        """Remove segments that no row names, once the deletion of their rows is on disk.

        Under synchronous=NORMAL a commit is not synced. Without the
        checkpoint, a power failure could bring back rows whose segments
        were already gone.
        """
        try:
            self._run_checkpoint()
        except (sqlite3.Error, StoreError) as exc:
            logger.error("body segments kept until the next pruning pass: checkpoint failed: %s", exc)
            return
        self._bodies.remove(unused)

    def _checkpoint_done(self, checkpoint: asyncio.Future[None]) -> None:
        if not checkpoint.cancelled() and checkpoint.exception() is not None:
            logger.error("store checkpoint failed path=%s: %s", self.path, checkpoint.exception())

    def _log_file_size(self) -> int:
        """Return the write-ahead log file's size.

        SQLite reuses the file when the log starts over and cuts it back to
        the journal_size_limit, so a file longer than that limit means the
        log grew past it since it last started over.
        """
        try:
            return os.stat(self._log_path).st_size
        except FileNotFoundError:
            return 0

    async def _read(self, operation: Operation) -> Any:
        # Reads run on the store's thread with their own connection: in WAL
        # mode they see the last commit and do not wait for the writer's transaction.
        return await asyncio.get_running_loop().run_in_executor(self._executor, operation, self._reader)

    # -- channels ------------------------------------------------------

    async def create_channel(self, channel: ChannelRecord) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO channels (id, token_hash, created_at, settings) VALUES (?, ?, ?, ?)",
                (channel.id, channel.token_hash, channel.created_at, json.dumps(channel.settings)),
            )
            conn.execute("INSERT INTO groups (channel, name, last_seq) VALUES (?, ?, 0)", (channel.id, DEFAULT_GROUP))

        await self._submit(insert)
        self._channels[channel.id] = channel
        self._counts[channel.id] = 0

    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        # The writer thread is the only writer, so the in-memory copy is exact.
        return self._channels.get(channel_id)

    async def set_token_hash(self, channel_id: str, token_hash: bytes) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE channels SET token_hash = ? WHERE id = ?", (token_hash, channel_id))

        await self._submit(update)
        old = self._channels[channel_id]
        self._channels[channel_id] = ChannelRecord(old.id, token_hash, old.created_at, old.settings)

    # -- events --------------------------------------------------------

    async def append(self, event: NewEvent) -> int:
        return await self._submit(lambda conn: self._append(conn, event), len(event.body))

    def _append(self, conn: sqlite3.Connection, event: NewEvent) -> int:
        deduplicated = bool(event.dedupe_key) and event.dedupe_window > 0
        if deduplicated:
            # A redelivery of a stored event gets its duplicate response even when the channel is full.
            sqlite_dedupe.raise_if_duplicate(conn, event.channel, event.dedupe_key, event.received_at)
        count = self._count(conn, event.channel)
        if count >= self.retention.max_events:
            count -= self._prune_acknowledged(conn, event.channel, count)
            if count >= self.retention.max_events:
                raise ChannelFull(event.channel, self.retention.max_events)
        if deduplicated:
            expires_at = event.received_at + event.dedupe_window
            sqlite_dedupe.remember(conn, event.channel, event.dedupe_key, event.id, expires_at)
        headers_json = _encode_headers(event.headers)
        body, segment, offset, length = event.body, None, None, None
        if len(body) > sqlite_bodies.EXTERNAL_BODY_BYTES:
            segment, offset = self._bodies.append(body)
            body, length = b"", len(event.body)
        seq = self._next_seq
        conn.execute(
            f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event.id,
                event.channel,
                event.received_at,
                event.method,
                event.target,
                headers_json,
                body,
                event.remote,
                event.scheme,
                event.event_type,
                event.respond_until,
                event.verification,
                segment,
                offset,
                length,
            ),
        )
        self._next_seq = seq + 1
        self._counts[event.channel] = count + 1
        self._remember_recent(_stored_event(event, seq, headers_json))
        return seq

    def _remember_recent(self, event: Event) -> None:
        self._recent[event.seq] = event
        self._recent_bytes += len(event.body)
        while len(self._recent) > _RECENT_EVENTS or self._recent_bytes > _RECENT_BYTES:
            _, oldest = self._recent.popitem(last=False)
            self._recent_bytes -= len(oldest.body)

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0

    def _count(self, conn: sqlite3.Connection, channel: str) -> int:
        if channel not in self._counts:
            (self._counts[channel],) = conn.execute("SELECT COUNT(*) FROM events WHERE channel = ?", (channel,)).fetchone()
        return self._counts[channel]

    def _prune_acknowledged(self, conn: sqlite3.Connection, channel: str, count: int) -> int:
        """Delete the oldest events every group is done with; returns how many."""
        (floor,) = conn.execute("SELECT MIN(last_seq) FROM groups WHERE channel = ?", (channel,)).fetchone()
        (oldest_pending,) = conn.execute("SELECT MIN(seq) FROM pending WHERE channel = ?", (channel,)).fetchone()
        limit = floor or 0
        if oldest_pending is not None:
            limit = min(limit, oldest_pending - 1)
        batch = max(1, int(self.retention.max_events * _PRUNE_FRACTION))
        deleted = conn.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE channel = ? AND seq <= ? ORDER BY seq LIMIT ?)",
            (channel, limit, batch),
        ).rowcount
        if deleted:
            logger.info("retention pruned channel=%s events=%d reason=count", channel, deleted)
        return deleted

    async def claim(self, channel: str, group: str, consumer: str, count: int) -> list[Event]:
        if count <= 0:
            return []
        # NOTE: a claim's weight is unknown before it runs, so it counts as
        # small. Claiming large events that are no longer in memory therefore
        # reads their bodies from segments on the event loop's thread, up to
        # ``count`` of them (a session claims at most 64 at a time).
        return await self._submit(lambda conn: self._claim(conn, channel, group, consumer, count))

    def _claim(self, conn: sqlite3.Connection, channel: str, group: str, consumer: str, count: int) -> list[Event]:
        now = self._clock()
        released = conn.execute(
            "SELECT seq, delivery_count + 1, attempts FROM pending"
            " WHERE channel = ? AND grp = ? AND consumer IS NULL ORDER BY seq LIMIT ?",
            (channel, group, count),
        ).fetchall()
        conn.executemany(
            "UPDATE pending SET consumer = ?, delivery_count = ?, delivered_at = ? WHERE channel = ? AND grp = ? AND seq = ?",
            [(consumer, n, now, channel, group, seq) for seq, n, _ in released],
        )
        fresh = self._claim_new(conn, channel, group, consumer, count - len(released), now)
        counts = {seq: (n, attempts) for seq, n, attempts in released} | {seq: _FIRST_DELIVERY for seq in fresh}
        return self._load_events(conn, sorted(counts), counts)

    def _claim_new(self, conn: sqlite3.Connection, channel: str, group: str, consumer: str, count: int, now: float) -> list[int]:
        if count <= 0:
            return []
        cursor = self._group_cursor(conn, channel, group)
        seqs = [
            seq
            for (seq,) in conn.execute(
                "SELECT seq FROM events WHERE channel = ? AND seq > ? ORDER BY seq LIMIT ?", (channel, cursor, count)
            )
        ]
        if not seqs:
            return []
        conn.executemany(
            "INSERT INTO pending (channel, grp, seq, consumer, delivery_count, delivered_at) VALUES (?, ?, ?, ?, 1, ?)",
            [(channel, group, seq, consumer, now) for seq in seqs],
        )
        conn.execute("UPDATE groups SET last_seq = ? WHERE channel = ? AND name = ?", (seqs[-1], channel, group))
        return seqs

    def _group_cursor(self, conn: sqlite3.Connection, channel: str, group: str) -> int:
        row = conn.execute("SELECT last_seq FROM groups WHERE channel = ? AND name = ?", (channel, group)).fetchone()
        if row is not None:
            return row[0]

        # A new group starts at the end of the log: it gets events stored from now on.
        (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE channel = ?", (channel,)).fetchone()
        conn.execute("INSERT INTO groups (channel, name, last_seq) VALUES (?, ?, ?)", (channel, group, last))
        logger.info("group created channel=%s group=%s position=%d", channel, group, last)
        return last

    def _load_events(self, conn: sqlite3.Connection, seqs: list[int], counts: dict[int, tuple[int, int]]) -> list[Event]:
        """Return the events of ``seqs`` (sorted) that still exist, each with its delivery count and earlier attempts."""
        found = {seq: self._recent[seq] for seq in seqs if seq in self._recent}
        missing = [seq for seq in seqs if seq not in found]
        if missing:
            marks = ",".join("?" * len(missing))
            rows = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq IN ({marks})", missing)
            found.update((row[0], self._row_to_event(row, 1)) for row in rows)
        events = []
        for seq in seqs:
            event = found.get(seq)
            if event is not None:
                count, attempts = counts.get(seq, _FIRST_DELIVERY)
                fresh = count == 1 and attempts == 0
                events.append(event if fresh else dataclasses.replace(event, delivery_count=count, attempts=attempts))
        return events

    def _row_to_event(self, row: tuple[Any, ...], delivery_count: int) -> Event:
        """Build the event of a row of _EVENT_COLUMNS, reading its body from a segment when it lives there."""
        segment, offset, length = row[13:16]
        body = bytes(row[7]) if segment is None else self._bodies.read(segment, offset, length)
        return _row_to_event(row, delivery_count, body)

    def _drop_events_without_bodies(self, conn: sqlite3.Connection) -> None:
        """Delete the events whose bodies did not reach the disk before a power failure.

        Under synchronous=NORMAL the kernel may write a row out before the
        body it names. Such an event cannot be delivered as it arrived, so
        it is dropped, with a warning naming it. A segment file that is
        missing altogether points to an incomplete copy of the data folder
        rather than a power failure, so opening fails instead of deleting
        every event that the file held.
        """
        ends = dict(
            conn.execute(
                "SELECT body_segment, MAX(body_offset + body_length) FROM events WHERE body_segment IS NOT NULL GROUP BY body_segment"
            )
        )
        missing = self._bodies.missing_from(ends)
        absent = [segment for segment, size in missing.items() if size is None]
        if absent:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM events WHERE body_segment IN ({','.join('?' * len(absent))})", absent
            ).fetchone()
            more = f" and {len(absent) - 1} more segment files" if len(absent) > 1 else ""
            raise StoreError(
                "open",
                f"the bodies of {count} event{'' if count == 1 else 's'} are missing: {self._bodies.path_of(absent[0])}{more} not found;"
                " restore the bodies folder that belongs with this database, or create each missing file empty"
                " to drop those events",
            )
        for segment, size in missing.items():
            lost = conn.execute(
                "SELECT seq, id, channel FROM events WHERE body_segment = ? AND body_offset + body_length > ?", (segment, size)
            ).fetchall()
            for seq, event_id, channel in lost:
                logger.warning("event dropped: its body is missing from segment %d channel=%s event_id=%s", segment, channel, event_id)
                conn.execute("DELETE FROM pending WHERE channel = ? AND seq = ?", (channel, seq))
                conn.execute("DELETE FROM events WHERE seq = ?", (seq,))

    async def ack(self, channel: str, group: str, results: list[DeliveryResult]) -> int:
        if not results:
            return 0
        return await self._submit(lambda conn: self._ack(conn, channel, group, results))

    def _ack(self, conn: sqlite3.Connection, channel: str, group: str, results: list[DeliveryResult]) -> int:
        """Remove the acknowledged events from pending and keep each one's outcome.

        The outcome row doubles as the record of the last attempt (see
        :func:`_attempt_history`), which saves a row and an index entry per
        event. One statement per table for the whole ack, because per-result
        statements made the writer's Python work per event large.
        """
        now = self._clock()
        # The summed row count: an event no longer pending, or repeated in the ack, removes nothing.
        removed = conn.executemany(
            "DELETE FROM pending WHERE channel = ? AND grp = ? AND seq = (SELECT seq FROM events WHERE id = ? AND channel = ?)",
            [(channel, group, result.event_id, channel) for result in results],
        ).rowcount
        conn.executemany(
            "INSERT OR REPLACE INTO outcomes (event_id, grp, outcome, status, attempts, duration_ms, error, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.event_id, group, r.outcome, r.status, r.attempts, r.duration_ms, r.error, now) for r in results],
        )
        return removed

    async def release(self, channel: str, group: str, consumer: str) -> int:
        def update(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE pending SET consumer = NULL WHERE channel = ? AND grp = ? AND consumer = ?", (channel, group, consumer)
            ).rowcount

        return await self._submit(update)

    async def backlog(self, channel: str, group: str) -> int:
        def count(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT last_seq FROM groups WHERE channel = ? AND name = ?", (channel, group)).fetchone()
            if row is None:
                return 0
            (unread,) = conn.execute("SELECT COUNT(*) FROM events WHERE channel = ? AND seq > ?", (channel, row[0])).fetchone()
            (pending,) = conn.execute("SELECT COUNT(*) FROM pending WHERE channel = ? AND grp = ?", (channel, group)).fetchone()
            return unread + pending

        return await self._read(count)

    async def list_groups(self, channel: str) -> list[str]:
        def names(conn: sqlite3.Connection) -> list[str]:
            return [name for (name,) in conn.execute("SELECT name FROM groups WHERE channel = ? ORDER BY name", (channel,))]

        return await self._read(names)

    async def update_settings(self, channel_id: str, settings: dict[str, Any]) -> ChannelRecord:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE channels SET settings = ? WHERE id = ?", (json.dumps(settings), channel_id))

        await self._submit(update)
        old = self._channels[channel_id]
        self._channels[channel_id] = ChannelRecord(old.id, old.token_hash, old.created_at, dict(settings))
        return self._channels[channel_id]

    async def record_attempt(self, channel: str, group: str, report: AttemptReport) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO attempts (event_id, grp, attempt, status, duration_ms, error, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (report.event_id, group, report.attempt, report.status, report.duration_ms, report.error, self._clock()),
            )
            # A redelivery hands the count on to the next listener.
            conn.execute(
                "UPDATE pending SET attempts = MAX(attempts, ?)"
                " WHERE channel = ? AND grp = ? AND seq = (SELECT seq FROM events WHERE id = ? AND channel = ?)",
                (report.attempt, channel, group, report.event_id, channel),
            )

        await self._submit(insert)

    async def record_answer(self, channel: str, event_id: str, answer: SenderAnswer) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO answers (event_id, status, headers, body, source, at) VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, answer.status, _encode_headers(answer.headers), answer.body, answer.source, answer.at),
            )

        await self._submit(insert, len(answer.body))

    async def list_events(self, channel: str, query: EventQuery) -> list[EventSummary]:
        sql, params = _history_query(channel, query)

        def select(conn: sqlite3.Connection) -> list[EventSummary]:
            return [EventSummary(*row[:3], bytes(row[3]), *row[4:]) for row in conn.execute(sql, params)]

        return await self._read(select)

    async def get_event(self, channel: str, event_id: str) -> EventDetail | None:
        def select(conn: sqlite3.Connection) -> EventDetail | None:
            row = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = ? AND channel = ?", (event_id, channel)).fetchone()
            if row is None:
                return None
            outcomes = tuple(
                Outcome(*item)
                for item in conn.execute(
                    "SELECT grp, outcome, status, attempts, duration_ms, error, finished_at FROM outcomes WHERE event_id = ? ORDER BY grp",
                    (event_id,),
                )
            )
            earlier = [
                AttemptRecord(*item)
                for item in conn.execute("SELECT grp, attempt, status, duration_ms, error, at FROM attempts WHERE event_id = ?", (event_id,))
            ]
            attempts = _attempt_history(earlier, outcomes)
            answer = conn.execute("SELECT status, headers, body, source, at FROM answers WHERE event_id = ?", (event_id,)).fetchone()
            return EventDetail(self._row_to_event(row, 1), outcomes, attempts, _row_to_answer(answer) if answer else None)

        return await self._read(select)

    async def delete_event(self, channel: str, event_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT seq FROM events WHERE id = ? AND channel = ?", (event_id, channel)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM pending WHERE channel = ? AND seq = ?", (channel, row[0]))
            conn.execute("DELETE FROM events WHERE seq = ?", (row[0],))
            for table in ("outcomes", "attempts", "answers"):
                conn.execute(f"DELETE FROM {table} WHERE event_id = ?", (event_id,))
            self._counts.pop(channel, None)
            return True

        return await self._submit(delete)

    async def replay(self, channel: str, event_id: str, group: str) -> bool:
        def requeue(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT seq FROM events WHERE id = ? AND channel = ?", (event_id, channel)).fetchone()
            if row is None:
                return False
            seq = row[0]
            if seq > self._group_cursor(conn, channel, group):
                # The group has not read it yet: it will arrive anyway.
                return True
            (consumer,) = conn.execute(
                "SELECT consumer FROM pending WHERE channel = ? AND grp = ? AND seq = ?", (channel, group, seq)
            ).fetchone() or (None,)
            if consumer is not None:
                raise EventInFlight(event_id, group)
            # delivery_count 0: the claim adds one, so the replay arrives as a
            # first delivery, which a listener forwards even if it remembers the id.
            conn.execute(
                "INSERT INTO pending (channel, grp, seq, consumer, delivery_count, delivered_at) VALUES (?, ?, ?, NULL, 0, ?)"
                " ON CONFLICT (channel, grp, seq) DO UPDATE SET consumer = NULL, delivery_count = 0, attempts = 0",
                (channel, group, seq, self._clock()),
            )
            _keep_last_attempt(conn, event_id, group)
            conn.execute("DELETE FROM outcomes WHERE event_id = ? AND grp = ?", (event_id, group))
            return True

        return await self._submit(requeue)

    async def prune(self, now: float) -> int:
        cutoff = now - self.retention.max_age

        def delete(conn: sqlite3.Connection) -> int:
            expired = _received_before(conn, cutoff)
            conn.executemany("DELETE FROM pending WHERE channel = ? AND seq = ?", expired)
            conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for _, seq in expired])
            for table in ("outcomes", "attempts", "answers"):
                conn.execute(f"DELETE FROM {table} WHERE event_id NOT IN (SELECT id FROM events)")
            sqlite_dedupe.forget_expired(conn, now)
            for channel, _ in expired:
                self._counts.pop(channel, None)
            # In the write batch, so that no uncommitted row names a segment it finds unused.
            return len(expired), self._bodies.unused(_named_segments(conn))

        # Pruning may delete many rows, so it runs on the store's thread.
        removed, unused = await self._submit(delete, math.inf)
        if removed:
            logger.info("retention pruned events=%d reason=age max_age_s=%d", removed, self.retention.max_age)
        if unused:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._remove_segments, unused)
        return removed


def _encode_headers(headers: tuple[tuple[bytes, bytes], ...]) -> str:
    # The frame's own encoding of a header list, so claims can send the text as is.
    return dump_json([[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]).decode()


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _history_query(channel: str, query: EventQuery) -> tuple[str, list[Any]]:
    """Build the SQL for :meth:`SQLiteStore.list_events`."""
    state = "COALESCE(o.outcome, 'pending')"
    clauses = ["e.channel = ?"]
    params: list[Any] = [query.group, channel]
    filters = [
        (query.state, f"{state} = ?"),
        (query.method, "e.method = ?"),
        (query.event_type, "(e.event_type = ? OR e.event_type LIKE ? || '.%')"),
        (query.since, "e.received_at >= ?"),
        (query.until, "e.received_at < ?"),
        (query.text, "instr(CAST(e.target AS TEXT), ?) > 0"),
        (query.before, "e.seq < ?"),
        (query.after, "e.seq > ?"),
    ]
    for value, clause in filters:
        if value is None:
            continue
        clauses.append(clause)
        params.extend([value, value] if clause.count("?") == 2 else [value])
    sql = (
        f"SELECT e.id, e.seq, e.method, e.target, e.event_type, e.received_at, COALESCE(e.body_length, length(e.body)), {state},"
        " o.status, COALESCE(o.attempts, 0)"
        " FROM events e LEFT JOIN outcomes o ON o.event_id = e.id AND o.grp = ?"
        f" WHERE {' AND '.join(clauses)} ORDER BY e.seq DESC LIMIT ?"
    )
    return sql, params + [max(1, min(query.limit, 1000))]


def _row_to_answer(row: tuple[Any, ...]) -> SenderAnswer:
    status, headers, body, source, at = row
    pairs = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(headers))
    return SenderAnswer(status, pairs, bytes(body), source, at)


def _stored_event(event: NewEvent, seq: int, headers_json: str) -> Event:
    """Build the event that a claim would read back for ``event`` stored under ``seq``."""
    return Event(
        id=event.id,
        channel=event.channel,
        seq=seq,
        method=event.method,
        target=event.target,
        headers=event.headers,
        headers_json=headers_json,
        body=event.body,
        received_at=event.received_at,
        remote=event.remote,
        scheme=event.scheme,
        event_type=event.event_type,
        respond_until=event.respond_until,
        verification=event.verification,
    )


def _received_before(conn: sqlite3.Connection, cutoff: float) -> list[tuple[str, int]]:
    """Return the channel and seq of the oldest events, received before ``cutoff``, in seq order.

    Events arrive in seq order, so the walk stops at the first event that is
    young enough and reads only what it returns. An event stamped later than
    its successors, after the clock was set back, keeps them until it expires.
    """
    expired = []
    rows = conn.execute("SELECT channel, seq, received_at FROM events ORDER BY seq")
    try:
        for channel, seq, received_at in rows:
            if received_at >= cutoff:
                break
            expired.append((channel, seq))
    finally:
        rows.close()
    return expired


def _attempt_history(earlier: list[AttemptRecord], outcomes: tuple[Outcome, ...]) -> tuple[AttemptRecord, ...]:
    """Return an event's attempts in order: the rows of ``attempts`` and the last attempt of each outcome.

    A skipped event made no attempt. Databases of earlier releases also
    kept the last attempt as a row, at the outcome's time, so an outcome
    whose attempt is already there adds nothing.
    """
    recorded = {(item.group, item.attempt, item.at) for item in earlier}
    last = [
        AttemptRecord(o.group, o.attempts, o.status, o.duration_ms, o.error, o.finished_at)
        for o in outcomes
        if o.outcome != "skipped" and (o.group, o.attempts, o.finished_at) not in recorded
    ]
    return tuple(sorted(earlier + last, key=lambda item: (item.at, item.attempt)))


def _keep_last_attempt(conn: sqlite3.Connection, event_id: str, group: str) -> None:
    """Copy the group's last attempt from its outcome into ``attempts`` before a replay removes the outcome."""
    conn.execute(
        "INSERT INTO attempts (event_id, grp, attempt, status, duration_ms, error, at)"
        " SELECT o.event_id, o.grp, o.attempts, o.status, o.duration_ms, o.error, o.finished_at FROM outcomes o"
        " WHERE o.event_id = ? AND o.grp = ? AND o.outcome != 'skipped' AND NOT EXISTS ("
        "SELECT 1 FROM attempts a WHERE a.event_id = o.event_id AND a.grp = o.grp AND a.attempt = o.attempts AND a.at = o.finished_at)",
        (event_id, group),
    )


def _first_free_seq(conn: sqlite3.Connection) -> int:
    """Return a seq above every seq stored, read by a group, or counted by AUTOINCREMENT.

    Databases of earlier releases numbered events with AUTOINCREMENT, whose
    counter remembers seqs of events deleted since.
    """
    (stored,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
    (read,) = conn.execute("SELECT COALESCE(MAX(last_seq), 0) FROM groups").fetchone()
    counted = 0
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        (counted,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return max(stored, read, counted) + 1


def _named_segments(conn: sqlite3.Connection) -> list[int]:
    return [segment for (segment,) in conn.execute("SELECT DISTINCT body_segment FROM events WHERE body_segment IS NOT NULL")]


def _row_to_event(row: tuple[Any, ...], delivery_count: int, body: bytes) -> Event:
    seq, event_id, channel, received_at, method, target, headers, _, remote, scheme, event_type, respond_until, verification = row[:13]
    return Event(
        id=event_id,
        channel=channel,
        seq=seq,
        method=method,
        target=bytes(target),
        headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in load_json(headers)),
        # The column contains the list in the frame's own encoding.
        headers_json=headers,
        body=body,
        received_at=received_at,
        remote=remote,
        scheme=scheme,
        delivery_count=delivery_count,
        event_type=event_type,
        respond_until=respond_until,
        verification=verification,
    )
