"""Large event bodies, kept in segment files beside the SQLite database.

SQLite writes every byte twice: into its write-ahead log at commit, and
into the database file at the next checkpoint, syncing both. With 100 KB
bodies that second copy and its sync took about a third of the relay's CPU
per event (docs/benchmarks.md). So a body over :data:`EXTERNAL_BODY_BYTES`
is appended once to a segment file in ``bodies/``, and its row keeps the
segment number, offset and length instead of the bytes.

The contract with :class:`~relay_server.store.sqlite.SQLiteStore`:

* :meth:`BodyLog.append` runs inside the write batch that inserts the row,
  before its commit. A batch that rolls back leaves bytes that no row
  names; they go away with their segment.
* Appends come from one write batch at a time. :meth:`BodyLog.sync` may run
  on the store's thread while a batch appends on the event loop's thread.
* With ``synchronous=FULL`` a body is on disk before the commit of its
  row. With ``NORMAL`` the store syncs the segments before each
  checkpoint, which is when SQLite syncs its log, but rows committed while
  that sync runs, or written out early by the kernel, may reach the disk
  before their bodies. ``NORMAL`` may lose the latest events in a power
  failure anyway, so after one the store drops rows whose bodies are
  missing (see :meth:`BodyLog.missing_from`) and logs each one.
* Only the write batch finds segments unused, never the one being
  written, and the store removes them only once the deletion of their rows
  is on disk.
* A failed write leaves the segment as it was: nothing is appended after
  bytes that no row names at a wrong offset.
* Errors of the file system reach callers as
  :class:`~relay_server.errors.StoreError`.

Bodies are read back rarely: claims of recent events come from the store's
memory. So once a sync has put bytes on disk, :meth:`BodyLog.sync` drops
their pages from the page cache. A relay holding gigabytes of bodies then
does not push other files out of the cache, and new appends reuse the
freed pages. On the benchmark machine, a 100 KB append into pages the
kernel had never used cost 76 to 165 µs of system CPU, against about
20 µs with the synced pages dropped (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from relay_server.errors import StoreError

logger = logging.getLogger("hookrelay.server.store")

# Bodies up to this size stay in the database row. The size is an estimate:
# the gain was measured with 100 KB bodies only, and small bodies share
# SQLite's pages, so their second copy costs little.
EXTERNAL_BODY_BYTES = 32 * 1024
# A segment takes appends until it contains this many bytes; a single larger
# body still gets a segment of its own.
SEGMENT_BYTES = 64 * 1024 * 1024
FOLDER = "bodies"
_SUFFIX = ".body"


class BodyLog:
    """Append-only segment files of event bodies under ``folder``."""

    def __init__(self, folder: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._current = 0
        self._fd: int | None = None
        self._size = 0
        # Written since the last sync: the current segment, and finished
        # segments whose descriptors sync() closes after syncing them.
        self._dirty = False
        self._retired: list[int] = []
        self._new_names = False
        # Bytes of the current segment already synced and dropped from the page cache.
        self._dropped_to = 0

    def open(self) -> None:
        """Create the folder; the first append starts a segment after every existing one."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._current = max(self.sizes(), default=0)

    def sizes(self) -> dict[int, int]:
        """Return the size of every segment file, by segment number."""
        sizes = {}
        for path in self.folder.glob(f"*{_SUFFIX}"):
            if path.stem.isdigit():
                sizes[int(path.stem)] = path.stat().st_size
        return sizes

    def append(self, body: bytes) -> tuple[int, int]:
        """Write ``body`` at the end of the current segment; return the segment and offset.

        Raises StoreError when the write fails; the segment then ends where it did before.
        """
        if self._fd is None or (self._size > 0 and self._size + len(body) > self._segment_bytes):
            self._start_segment()
        assert self._fd is not None
        offset = self._size
        try:
            _write_at(self._fd, body, offset)
        except OSError as exc:
            self._cut_back(offset)
            raise StoreError("write", f"cannot write to body segment {self.path_of(self._current)}: {exc.strerror}") from None
        self._size += len(body)
        with self._lock:
            self._dirty = True
        return self._current, offset

    def _start_segment(self) -> None:
        number = self._current + 1
        path = self.path_of(number)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError("write", f"cannot create body segment {path}: {exc.strerror}") from None
        with self._lock:
            if self._fd is not None:
                self._retired.append(self._fd)
            self._fd = fd
            self._current = number
            self._size = 0
            self._dropped_to = 0
            self._new_names = True
        logger.debug("body segment started path=%s", path)

    def _cut_back(self, size: int) -> None:
        """Drop what a failed write left past ``size``, or move on to a new segment when that fails too."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            logger.error("body segment %s could not be cut back to %d bytes: %s; starting a new one", self._current, size, exc.strerror)
            # Nothing is written to this segment again, so no offset can go wrong.
            self._size = self._segment_bytes

    def read(self, segment: int, offset: int, length: int) -> bytes:
        """Return the body stored at ``offset`` of ``segment``; raises StoreError when it is not there.

        Each read opens the file: reads from segments are rare (claims of
        recent events come from memory), and no descriptor stays open.
        """
        path = self.path_of(segment)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                body = os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError("read", f"cannot read body segment {path}: {exc.strerror}") from None
        if len(body) != length:
            raise StoreError("read", f"body segment {path} ends before offset {offset + length}")
        return body

    def sync(self) -> None:
        """Put every body written so far on disk, and the names of new segments; raises StoreError."""
        with self._lock:
            retired, self._retired = self._retired, []
            current = self._fd if self._dirty else None
            number, start, end = self._current, self._dropped_to, self._size
            self._dirty = False
            new_names, self._new_names = self._new_names, False
        try:
            if new_names:
                _sync_folder(self.folder)
            for fd in retired:
                os.fdatasync(fd)
            if current is not None:
                os.fdatasync(current)
        except OSError as exc:
            with self._lock:
                # The next sync tries again.
                self._retired[:0] = retired
                self._dirty = self._dirty or current is not None
                self._new_names = self._new_names or new_names
            raise StoreError("sync", f"cannot sync body segments in {self.folder}: {exc.strerror}") from None
        for fd in retired:
            _drop_cached(fd, 0, 0)
            os.close(fd)
        if current is not None:
            _drop_cached(current, start, end - start)
            with self._lock:
                if self._current == number:
                    self._dropped_to = max(self._dropped_to, end)

    def unused(self, named: Iterable[int]) -> list[int]:
        """Return the segments that no row names, leaving out the one being written."""
        keep = set(named)
        if self._fd is not None:
            keep.add(self._current)
        return sorted(segment for segment in self.sizes() if segment not in keep)

    def remove(self, segments: Iterable[int]) -> None:
        """Delete ``segments``; call only with segments that :meth:`unused` returned."""
        for segment in segments:
            try:
                self.path_of(segment).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                # The next pruning pass finds it unused again.
                logger.error("body segment not removed path=%s: %s", self.path_of(segment), exc.strerror)
                continue
            logger.info("body segment removed path=%s", self.path_of(segment))

    def missing_from(self, ends: dict[int, int]) -> dict[int, int | None]:
        """Compare the end of the last body each row names with each segment's size.

        Returns the segments that are shorter than their rows need, with
        their sizes, or None for a segment file that does not exist. After a
        power failure under ``synchronous=NORMAL``, rows may have reached
        the disk without the end of their segment.
        """
        sizes = self.sizes()
        return {segment: sizes.get(segment) for segment, end in ends.items() if sizes.get(segment, -1) < end}

    def close(self) -> None:
        """Sync and close every file; call once no batch runs."""
        self.sync()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def path_of(self, segment: int) -> Path:
        return self.folder / f"{segment:08d}{_SUFFIX}"


def _write_at(fd: int, body: bytes, offset: int) -> None:
    view = memoryview(body)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _drop_cached(fd: int, offset: int, length: int) -> None:
    """Drop the synced pages of ``length`` bytes at ``offset`` (0: to the end) from the page cache."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError as exc:
        # Advice only: the pages stay cached and the kernel reclaims them later.
        logger.debug("page cache of a body segment not dropped: %s", exc.strerror)


def _sync_folder(folder: Path) -> None:
    """Sync a folder, so that the files created in it survive a power failure."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
