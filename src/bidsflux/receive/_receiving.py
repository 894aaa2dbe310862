"""Receiving into the spool: the three ways an instance is kept, and what a resend becomes.

A mixin of :class:`~bidsflux.receive.spool.Spool` (which provides the
folders, the journal and the per-study locks): a journaled instance is
appended to the journal (durable) and filed right after; one too large for
the journal is fsynced and linked into its fsynced folder (:meth:`commit`);
one that cannot be filed is quarantined with its reason.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..naming import is_uid
from ._filing import conflict_reason, data_set_of, keep_conflict
from ._files import Incoming, atomic_write, fsync_dir, write_all
from ._journal import Journal, Writer

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class StoreOutcome(str, enum.Enum):
    """What happened to one received instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


class Receiving:
    incoming: Path
    conflicts: Path
    quarantine_dir: Path
    tmp: Path
    journal: Journal
    study_lock: Callable[[str], AbstractContextManager[None]]

    def writer(self) -> Writer:
        """A journal writer for one association (close it when the association ends)."""
        return self.journal.writer()

    def begin(self, meta: bytes = b"", writer: Writer | None = None) -> Incoming:
        """Start receiving one instance (into the writer's arena, or towards a file under ``tmp/``)."""
        return Incoming(self.tmp, meta, writer)

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoreOutcome:
        """Keep one instance (``data`` as the whole file) durably; say if it was new, a resend or a conflict."""
        incoming = self.begin()
        incoming.write(data)
        return self.commit(incoming, study_uid, series_uid, sop_uid)

    @staticmethod
    def _check(study_uid: str, series_uid: str, sop_uid: str) -> None:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_uid(uid):
                raise ValueError(f"not a valid DICOM UID: {uid[:80]!r}")

    def append(self, incoming: Incoming, study_uid: str, series_uid: str, sop_uid: str,
               info: dict[str, Any]) -> int:
        """Make a journaled instance durable (one flushed record); file it with :meth:`file` next."""
        self._check(study_uid, series_uid, sop_uid)
        assert incoming.writer is not None
        with incoming.file_bytes() as view:
            length = len(view)
        return incoming.writer.append({"study": study_uid, "series": series_uid, "sop": sop_uid, **info}, length)

    def file(self, writer: Writer, data: bytes, study_uid: str, series_uid: str, sop_uid: str,
             info: dict[str, Any], end: int) -> StoreOutcome:
        """File a journaled instance (``data``: the whole file) under its study.

        Its durability there comes with the next checkpoint: the journal
        record is the durable copy until then.  So the file is written in
        place (no temporary name, no flush), and replay rewrites a file a
        crash cut short.  The study's lock keeps it from being handed on
        half-written.
        """
        try:
            with self.study_lock(study_uid):
                series_dir = self.incoming / study_uid / series_uid
                try:
                    fd = os.open(series_dir / f"{sop_uid}.dcm", _CREATE, 0o640)
                except FileNotFoundError:
                    series_dir.mkdir(parents=True, exist_ok=True)
                    fd = os.open(series_dir / f"{sop_uid}.dcm", _CREATE, 0o640)
                except FileExistsError:
                    fd = -1
                if fd >= 0:
                    try:
                        write_all(fd, [data])
                    finally:
                        os.close(fd)
                    _advance(writer, end)
                    return StoreOutcome.STORED
            outcome = self._resend(data, study_uid, series_uid, sop_uid, info)
            with self.study_lock(study_uid):
                _advance(writer, end)
            return outcome
        except BaseException:
            writer.stuck = True  # replayed after a restart; the checkpoint must not pass it
            raise

    def commit(self, incoming: Incoming, study_uid: str, series_uid: str, sop_uid: str,
               info: dict[str, Any] | None = None) -> StoreOutcome:
        """File an instance outside the journal durably; returns once it is on disk under its final name."""
        try:
            self._check(study_uid, series_uid, sop_uid)
            incoming.sync()
            outcome = self._link(incoming.path, study_uid, series_uid, sop_uid, sync=True)
            if outcome is None:
                outcome = self._resend(incoming.path.read_bytes(), study_uid, series_uid, sop_uid, info or {})
            return outcome
        finally:
            incoming.discard()

    def _link(self, source: Path, study_uid: str, series_uid: str, sop_uid: str, *, sync: bool,
              after: Callable[[], None] | None = None) -> StoreOutcome | None:
        """Link ``source`` into place (never over an existing file); None if one is already there."""
        to_sync: list[int] = []
        try:
            with self.study_lock(study_uid):
                series_dir = self.incoming / study_uid / series_uid
                if not series_dir.is_dir():
                    study_new = not series_dir.parent.is_dir()
                    series_dir.mkdir(parents=True, exist_ok=True)
                    if sync:
                        to_sync.append(os.open(series_dir.parent, os.O_RDONLY | os.O_DIRECTORY))
                        if study_new:
                            to_sync.append(os.open(self.incoming, os.O_RDONLY | os.O_DIRECTORY))
                if sync:
                    to_sync.append(os.open(series_dir, os.O_RDONLY | os.O_DIRECTORY))
                try:
                    os.link(source, series_dir / f"{sop_uid}.dcm")
                except FileExistsError:
                    return None
                if after is not None:
                    after()
            for fd in to_sync:
                os.fsync(fd)
            return StoreOutcome.STORED
        finally:
            for fd in to_sync:
                os.close(fd)

    def _resend(self, received_file: bytes | memoryview, study_uid: str, series_uid: str, sop_uid: str,
                info: dict[str, Any]) -> StoreOutcome:
        existing = data_set_of((self.incoming / study_uid / series_uid / f"{sop_uid}.dcm").read_bytes())
        received = data_set_of(received_file)
        if existing == received:
            return StoreOutcome.DUPLICATE
        keep_conflict(self.conflicts, self.tmp, study_uid, sop_uid, received_file,
                      {"series": series_uid, "reason": conflict_reason(sop_uid, received, existing), **info})
        return StoreOutcome.CONFLICT

    def keep_conflict(self, study_uid: str, sop_uid: str, data: bytes, reason: str | None = None) -> Path:
        """Keep ``data`` aside as a conflicting version of an instance (with why, for the ledger)."""
        return keep_conflict(self.conflicts, self.tmp, study_uid, sop_uid, data, {
            "reason": reason or f"SOPInstanceUID {sop_uid} arrived again with different bytes"})

    def quarantine(self, incoming: Incoming | None, data: bytes | None, reason: str,
                   info: dict[str, Any]) -> Path:
        """Keep an instance that cannot be filed (bad UIDs, unreadable) with why; nothing is dropped."""
        try:
            if incoming is not None and incoming.journaled:
                with incoming.file_bytes() as view:
                    content = data_set_of(view)
            else:
                content = data_set_of(incoming.data_set() if incoming is not None else data or b"")
            digest = hashlib.sha256(content).hexdigest()[:24]
            folder = self.quarantine_dir / f"unfiled-{time.strftime('%Y%m%d')}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{digest}.dcm"
            # One reason file per rejection (the same bytes may be refused twice, for two reasons).
            atomic_write(folder / f"{digest}.{time.time_ns()}.reason.json", json.dumps({"reason": reason, **info},
                                                                     sort_keys=True).encode())
            if not path.exists():
                atomic_write(path, content)
            fsync_dir(folder)
            return path
        finally:
            if incoming is not None:
                incoming.discard()

    def quarantine_bytes(self, data: bytes, reason: str, info: dict[str, Any]) -> Path:
        return self.quarantine(None, data, reason, info)



def _advance(writer: Writer, end: int) -> None:
    if not writer.stuck:
        writer.filed = end
