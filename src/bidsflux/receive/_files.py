"""Durable file writing: the temporary file an instance lands in, fsync, atomic publication.

An instance is written under a temporary name in ``spool/tmp`` while it is
received, fsynced once whole, and only then linked into its study folder;
the folder is fsynced before the sender hears "success".  A crash therefore
leaves either nothing or a whole, durable file under its final name:
temporary files are never counted and are cleared at start-up.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ._journal import BLOCK, Writer

SPILL = 1 << 20  # data sets up to this size stay in memory until they are whole
HEAD = 4 << 20  # how much of a spilled data set is kept in memory for reading its header


def write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write every chunk, in order, whatever ``writev`` manages per call."""
    total = sum(len(c) for c in chunks)
    written = os.writev(fd, chunks) if chunks else 0
    if written == total:
        return
    rest = memoryview(b"".join(bytes(c) for c in chunks))[written:]
    while rest:
        rest = rest[os.write(fd, rest):]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either absent or whole (the folder is not fsynced)."""
    os.replace(write_temp(path.parent, memoryview(data), sync=True, prefix=".tmp-"), path)


def write_temp(tmp_dir: Path, data: bytes | memoryview, *, sync: bool, prefix: str = "recv-") -> Path:
    """A new file in ``tmp_dir`` holding ``data`` (flushed when ``sync``); nothing is left behind on failure."""
    path = tmp_dir / f"{prefix}{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        write_all(fd, [data])
        if sync:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


class Incoming:
    """One instance being received: File Meta Information, then the data set as it arrives.

    With a journal writer, the bytes go straight into its aligned arena and
    the instance becomes durable as one journal record.  Without one (or once
    the instance outgrows the arena) small data sets are kept in memory and
    large ones are spilled to their temporary file as they arrive, so memory
    stays bounded whatever the instance's size.
    """

    def __init__(self, tmp_dir: Path, meta: bytes = b"", writer: Writer | None = None):
        self.meta = meta
        self.size = 0  # data set bytes received
        self._tmp_dir = tmp_dir
        self._path: Path | None = None  # named only if the instance needs a file of its own
        self.writer = writer
        self._chunks: list[bytes | memoryview] = []
        self._buffered = 0
        self._fd: int | None = None
        self._head = b""
        self.synced = False
        if writer is not None and len(meta) <= writer.capacity:
            writer.arena[BLOCK:BLOCK + len(meta)] = meta
            self._length = len(meta)  # bytes of the file in the arena
        else:
            self.writer = None
            self._chunks, self._buffered = ([meta] if meta else []), len(meta)

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = self._tmp_dir / f"recv-{uuid.uuid4().hex}"
        return self._path

    @property
    def journaled(self) -> bool:
        return self.writer is not None

    def write(self, data: bytes | memoryview) -> None:
        """Add the next fragment (copied or written now: the caller may reuse its buffer)."""
        writer = self.writer
        if writer is not None:
            if self._length + len(data) <= writer.capacity:
                writer.arena[BLOCK + self._length:BLOCK + self._length + len(data)] = data
                self._length += len(data)
                self.size += len(data)
                return
            # Outgrew the arena: from here on it is an instance with its own file.
            self._chunks, self._buffered = [writer.arena[BLOCK:BLOCK + self._length]], self._length
            self.writer = None
        self.size += len(data)
        if self._fd is None and self._buffered + len(data) <= SPILL:
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            return
        if self._fd is None:
            self._head = (b"".join(bytes(c) for c in self._chunks)[len(self.meta):] + bytes(data[:HEAD]))[:HEAD]
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        write_all(self._fd, [*self._chunks, data])
        self._chunks, self._buffered = [], 0

    def file_bytes(self) -> memoryview:
        """The whole file as it will be stored (journaled instances only; release the view after use)."""
        assert self.writer is not None
        return memoryview(self.writer.arena)[BLOCK:BLOCK + self._length]

    def head(self, limit: int = HEAD) -> bytes:
        """The start of the data set (all of it, unless it was spilled)."""
        if self.writer is not None:
            start = BLOCK + len(self.meta)
            return self.writer.arena[start:start + min(limit, self.size)]
        if self._fd is None and not self.synced:
            return b"".join(bytes(c) for c in self._chunks)[len(self.meta):][:limit]
        return self._head[:limit]

    def sync(self) -> None:
        """Make the whole file durable under its temporary name (instances outside the journal)."""
        if self.synced:
            return
        if self.writer is not None:  # a journaled instance that must be filed the slow way after all
            self._chunks, self._buffered = [bytes(self.writer.arena[BLOCK:BLOCK + self._length])], self._length
            self.writer = None
        if self._fd is None:
            self._head = b"".join(bytes(c) for c in self._chunks)[len(self.meta):][:HEAD]
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        if self._chunks:
            write_all(self._fd, self._chunks)
            self._chunks = []
        os.fdatasync(self._fd)  # data and size; the name is made durable by the folder's fsync
        os.close(self._fd)
        self._fd = None
        self.synced = True

    def data_set(self) -> bytes:
        """The data set as received (read back from disk once synced)."""
        if self.writer is not None:
            return self.writer.arena[BLOCK + len(self.meta):BLOCK + self._length]
        if not self.synced:
            return b"".join(bytes(c) for c in self._chunks)[len(self.meta):]
        with open(self.path, "rb") as handle:
            handle.seek(len(self.meta))
            return handle.read()

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._chunks = []
        self.writer = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
