"""The receive journal: how an instance becomes durable with one flush of pre-written blocks.

Each association appends every received instance, whole and checksummed, to
its own journal segment (``spool/journal/seg-*.wal``) and calls
``fdatasync`` before the sender hears "success".  Segments are pre-zeroed
(or recycled), so the write changes no file-system metadata and the flush
is one device write, with no journal commit of the file system; with
``O_DIRECT`` it does not even pass through the page cache.  Only then is
the instance filed under its study folder, without a flush of its own.

A checkpoint (periodic, and before a study is handed on) flushes the file
system once for every instance filed since the last one (``syncfs``: the
honest batching of fsync), records in ``checkpoint.json`` how far each
segment is filed, and recycles segments that are wholly filed.  After a
crash, :meth:`Journal.replay` files again every record past the
checkpoint; a record whose checksum fails was never acknowledged.

Record layout (4096-byte aligned, for ``O_DIRECT``)::

    [0:48]   header: magic, version, segment, offset, payload and meta lengths, CRCs
    [48:..]  meta (JSON: study, series, sop, calling AE, peer)
    [4096:]  the file: File Meta Information + data set as received, padded to 4096
"""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._threads import start

log = logging.getLogger(__name__)

BLOCK = 4096
MAGIC = b"BFJ1"
_HEADER = struct.Struct("<4sHHQQQIIII")  # magic, version, 0, segment, offset, payload, meta len, crcs x3
SEGMENT_BYTES = 64 << 20
CHECKPOINT_BYTES = 1 << 30  # a checkpoint once this much is journaled, or once receiving pauses
CHECKPOINT_IDLE = 2.0
RECORD_MAX = 4 << 20  # larger instances bypass the journal: their own fsyncs are amortised over their size
DIRECT_MIN = 128 << 10  # records this large skip the page cache (O_DIRECT): half the flush time measured
_ZEROS = bytes(1 << 20)

_syncfs: Callable[[int], int] | None
try:
    _syncfs = ctypes.CDLL(None, use_errno=True).syncfs
except (OSError, AttributeError):  # not Linux: flush every file system instead
    _syncfs = None


def sync_filesystem(path: Path) -> None:
    """Flush the file system holding ``path`` (every dirty file on it) to stable storage."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def _round(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class Writer:
    """One association's segment and its aligned buffer (the arena) for the record being received."""

    def __init__(self, journal: Journal, capacity: int = RECORD_MAX):
        self.journal = journal
        self.arena = mmap.mmap(-1, BLOCK + _round(capacity))
        self.capacity = capacity
        self.seq = 0
        self.fd = -1  # buffered: small records, and the flush
        self.dfd = -1  # O_DIRECT (where the file system allows it): large records
        self.pos = 0  # where the next record goes
        self.filed = 0  # every record before this offset is filed
        self.stuck = False  # a record could not be filed: the checkpoint stays behind it until a restart
        self.size = 0

    def append(self, meta: dict[str, Any], payload_length: int) -> int:
        """Make the record in the arena (payload already at BLOCK) durable; return its end offset."""
        meta_raw = json.dumps(meta, separators=(",", ":")).encode()
        if len(meta_raw) > BLOCK - _HEADER.size:
            raise ValueError("journal record meta too long")
        view = memoryview(self.arena)
        payload = view[BLOCK:BLOCK + payload_length]
        length = BLOCK + _round(payload_length)
        view[BLOCK + payload_length:length] = bytes(length - BLOCK - payload_length)
        if self.fd < 0 or self.pos + length > self.size:
            self.journal.rotate(self)
        fields = (MAGIC, 1, 0, self.seq, self.pos, payload_length, len(meta_raw), zlib.crc32(payload),
                  zlib.crc32(meta_raw))
        head = _HEADER.pack(*fields, 0)
        head = _HEADER.pack(*fields, zlib.crc32(head[:-4]))
        view[:BLOCK] = head + meta_raw + bytes(BLOCK - len(head) - len(meta_raw))
        self.journal.write(self, view[:length], self.pos)
        os.fdatasync(self.fd)
        self.pos += length
        self.journal.appended(length)
        return self.pos

    def close(self) -> None:
        self.journal.release(self)
        self.arena.close()


class Journal:
    """Segments, their pool, checkpoints and replay for one spool."""

    def __init__(self, folder: Path, sync_root: Path, *, segment_bytes: int = SEGMENT_BYTES, spare: int = 2):
        self.folder = folder
        self.sync_root = sync_root
        self.segment_bytes = segment_bytes
        self.spare = spare
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._writers: set[Writer] = set()
        self._closed: dict[int, tuple[int, int]] = {}  # segment no longer written -> (filed up to, end)
        self._persisted: dict[int, int] | None = None
        self._direct = hasattr(os, "O_DIRECT")
        # Every sequence number still written in a file (or the checkpoint) is used up: a recycled
        # segment's stale records carry their old number, which must never match its new one.
        used = [_seq(p) for p in folder.glob("*.wal")] + list(self.saved()) + [self._saved_next() - 1, 0]
        self._next = 1 + max(used)
        self._zeroing = threading.Event()
        self._stop = threading.Event()
        self._pending_bytes = 0  # journaled since the last checkpoint
        self._last_append = 0.0
        self._thread: threading.Thread | None = None

    # -- segments
    def path(self, seq: int) -> Path:
        return self.folder / f"seg-{seq:016d}.wal"

    def rotate(self, writer: Writer) -> None:
        """Give ``writer`` a fresh segment (closing its current one)."""
        with self._lock:
            if writer.fd >= 0:
                _close(writer)
                self._closed[writer.seq] = (writer.filed, writer.pos)
            seq, self._next = self._next, self._next + 1
            free = sorted(self.folder.glob("free-*.wal"))
            path = self.path(seq)
            if free:
                os.rename(free[0], path)  # pre-zeroed or recycled: writing it changes no metadata
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    os.posix_fallocate(fd, 0, self.segment_bytes)
                finally:
                    os.close(fd)
            self._writers.add(writer)
        writer.seq, writer.pos, writer.filed, writer.stuck = seq, 0, 0, False
        writer.size = path.stat().st_size
        writer.fd = os.open(path, os.O_WRONLY)
        writer.dfd = -1
        if self._direct:
            try:
                writer.dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self._direct = False  # e.g. tmpfs: buffered writes only, still flushed before the answer
        self._zeroing.set()

    def write(self, writer: Writer, data: memoryview, offset: int) -> None:
        fd = writer.dfd if writer.dfd >= 0 and len(data) >= DIRECT_MIN else writer.fd
        try:
            written = os.pwrite(fd, data, offset)
        except OSError as exc:
            if fd != writer.dfd or exc.errno != 22:
                raise
            self._direct = False  # O_DIRECT refused after all: buffered from now on
            os.close(writer.dfd)
            writer.dfd = -1
            fd, written = writer.fd, os.pwrite(writer.fd, data, offset)
        if written != len(data):
            os.pwrite(fd, data[written:], offset + written)

    def writer(self) -> Writer:
        return Writer(self)

    @property
    def next_seq(self) -> int:
        return self._next

    def appended(self, length: int) -> None:
        self._pending_bytes += length  # a lost update under a race only delays a checkpoint
        self._last_append = time.monotonic()
        if self._pending_bytes >= CHECKPOINT_BYTES:
            self._zeroing.set()

    def release(self, writer: Writer) -> None:
        with self._lock:
            if writer.fd >= 0:
                _close(writer)
                self._closed[writer.seq] = (writer.filed, writer.pos)
            self._writers.discard(writer)

    # -- checkpoints
    def checkpoint(self) -> None:
        """Flush everything filed so far; then forget (recycle) what no replay will need."""
        with self._checkpoint_lock:
            with self._lock:
                keep = {w.seq: w.filed for w in self._writers if w.fd >= 0}
                done = [seq for seq, (filed, end) in self._closed.items() if filed == end]
                keep.update({seq: filed for seq, (filed, end) in self._closed.items() if filed != end})
                next_seq = self._next
            if keep == self._persisted and not done:
                return
            self._pending_bytes = 0
            sync_filesystem(self.sync_root)
            atomic_json(self.folder / "checkpoint.json",
                         {"next": next_seq, "filed": {str(k): v for k, v in keep.items()}})
            self._persisted = keep
            for seq in done:
                path = self.path(seq)
                if path.exists():
                    self.recycle(path)
                with self._lock:
                    self._closed.pop(seq, None)

    def recycle(self, path: Path) -> None:
        # Keep as many written segments as a checkpoint interval consumes: reusing them costs no
        # zero-filling and no metadata change.
        free = len(list(self.folder.glob("free-*.wal")))
        if free < max(self.spare, CHECKPOINT_BYTES // self.segment_bytes) and \
                path.stat().st_size == self.segment_bytes:
            os.rename(path, self.folder / f"free-{_seq(path):016d}.wal")
        else:
            path.unlink()

    def saved(self) -> dict[int, int]:
        try:
            raw = json.loads((self.folder / "checkpoint.json").read_text())
            return {int(k): int(v) for k, v in raw.get("filed", {}).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _saved_next(self) -> int:
        try:
            return int(json.loads((self.folder / "checkpoint.json").read_text()).get("next", 1))
        except (OSError, ValueError, AttributeError, TypeError):
            return 1

    # -- background: periodic checkpoints, pre-zeroed spare segments
    def start(self, interval: float = 0.5) -> None:
        if self._thread is None:
            self._thread = start(self._background, "journal-checkpoint", interval)

    def stop(self) -> None:
        self._stop.set()
        self._zeroing.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.checkpoint()

    def _background(self, interval: float) -> None:
        # Checkpoints wait for a pause in receiving (or for a lot of journal): a file-system flush
        # stalls file creation while it runs, which would slow the senders down.
        while not self._stop.is_set():
            try:
                idle = time.monotonic() - self._last_append >= CHECKPOINT_IDLE
                if idle or self._pending_bytes >= CHECKPOINT_BYTES:
                    self.checkpoint()
                if idle:
                    self._fill_spares()
            except OSError as exc:
                log.error("journal checkpoint failed (retrying): %s", exc)
            self._zeroing.wait(interval)
            self._zeroing.clear()

    def _fill_spares(self) -> None:
        while len(list(self.folder.glob("free-*.wal"))) < self.spare and not self._stop.is_set():
            tmp = self.folder / f".zero-{os.getpid()}-{threading.get_ident()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                for _ in range(self.segment_bytes // len(_ZEROS)):
                    os.write(fd, _ZEROS)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                seq, self._next = self._next, self._next + 1
            os.rename(tmp, self.folder / f"free-{seq:016d}.wal")

def _close(writer: Writer) -> None:
    os.close(writer.fd)
    if writer.dfd >= 0:
        os.close(writer.dfd)
    writer.fd = writer.dfd = -1


def _seq(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def atomic_json(path: Path, data: dict[str, Any]) -> None:
    from ._files import atomic_write, fsync_dir

    atomic_write(path, json.dumps(data, sort_keys=True).encode())
    fsync_dir(path.parent)
