"""The durable spool: one folder per StudyInstanceUID, one file per instance.

Layout under ``<workdir>/spool``::

    journal/seg-*.wal, checkpoint.json                     the receive journal (see ``_journal``)
    tmp/recv-*                                             being written (never counted)
    incoming/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   received
    complete/<StudyUID>@<batch>/...  + route.json, batch.json   handed to indexing
    quarantine/unfiled-<day>/<sha>.dcm + <sha>.<n>.reason.json   an instance that cannot be filed, with why
    quarantine/<StudyUID>@<batch>/ + reason.json           a batch kept aside, with why
    conflicts/<StudyUID>/<SOPInstanceUID>.<sha>.dcm + .json   same UID, other bytes

An instance is durable before the sender hears "success": as a flushed
journal record (the fast path; filed into its folder right after, made
durable there by the next checkpoint), or, when too large for the journal,
as a file fsynced and linked into its fsynced folder.  A study is handed on
only after a checkpoint, so every file in a batch is on disk.  Folder and
file names come only from validated UIDs, never from other tag values.  A
per-study lock makes filing and completing a study mutually exclusive, so an
instance is either in the batch that was handed on or in the next one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..naming import is_uid
from ._filing import file_replayed
from ._files import Incoming, atomic_write, fsync_dir
from ._journal import SEGMENT_BYTES, Journal
from ._receiving import Receiving, StoreOutcome
from ._replay import replay

__all__ = ["Batch", "Incoming", "Spool", "StoreOutcome", "atomic_write", "fsync_dir"]

log = logging.getLogger(__name__)
STALE_IMPORT = 24 * 3600  # an unfinished import staging folder this old is left-over from a crash


@dataclass(frozen=True)
class Batch:
    """A completed set of instances of one study, ready for indexing."""

    study_uid: str
    path: Path

    @property
    def batch_id(self) -> str:
        return self.path.name.split("@", 1)[1]


class Spool(Receiving):
    """Durable per-study folders; safe to use from several threads."""

    def __init__(self, root: Path, *, journal_segment_bytes: int = SEGMENT_BYTES, journal_spare: int = 2,
                 recover: bool = True):
        self.root = root
        self.incoming = root / "incoming"
        self.complete = root / "complete"
        self.quarantine_dir = root / "quarantine"
        self.conflicts = root / "conflicts"
        self.tmp = root / "tmp"
        for folder in (self.incoming, self.complete, self.quarantine_dir, self.conflicts, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(root / "journal", root, segment_bytes=journal_segment_bytes, spare=journal_spare)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._owner: int | None = None
        self.recovered = self.recover() if recover and self._own() else 0

    def _own(self) -> bool:
        """Become the spool's receiving owner (one process at a time may receive and recover)."""
        fd = os.open(self.root / ".receiver.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.warning("another process receives into %s: not recovering its journal", self.root)
            return False
        self._owner = fd
        return True

    def close(self) -> None:
        """Give up ownership (the lock); the spool's files stay as they are."""
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    # -- start-up
    def recover(self) -> int:
        """Finish what a crash left half-done; returns how many journal records were filed again.

        Temporary files were never acknowledged (the sender resends them); an
        import staging folder is an import that did not finish and is run
        again from its source; journal records past the last checkpoint were
        acknowledged and are filed again (identical files are left alone).
        """
        now = time.time()
        for entry in self.tmp.iterdir():
            stale_import = entry.name.startswith("import-") and now - entry.stat().st_mtime > STALE_IMPORT
            if entry.name.startswith("recv-") or stale_import:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
        replayed = replay(self.journal, self._file_replayed)
        if replayed:
            log.info("filed %d journal record(s) again after a restart", replayed)
        return replayed

    def _file_replayed(self, meta: dict[str, Any], payload: bytes) -> None:
        if all(is_uid(str(meta.get(key, ""))) for key in ("study", "series", "sop")):
            file_replayed(self.incoming, self.conflicts, self.tmp, meta, payload)

    @contextmanager
    def study_lock(self, study_uid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(study_uid, threading.Lock())
        with lock:
            yield

    # -- state the endpoint's back-pressure looks at
    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def backlog(self) -> int:
        """Completed batches waiting for indexing."""
        with os.scandir(self.complete) as entries:
            return sum(1 for entry in entries if "@" in entry.name)

    # -- assembling
    def receiving_studies(self) -> list[str]:
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir() and is_uid(p.name))

    def last_change(self, study_uid: str) -> float:
        """Newest mtime under a receiving study (used after a restart)."""
        newest = 0.0
        for series_dir in (self.incoming / study_uid).iterdir():
            newest = max(newest, series_dir.stat().st_mtime)
        return newest

    def complete_study(self, study_uid: str,
                       add_files: Callable[[Path], dict[str, bytes]] | None = None) -> Batch:
        """Atomically hand a receiving study over to indexing as a new batch.

        A journal checkpoint first makes every file filed so far durable.
        ``add_files(folder)`` runs under the study's lock, so what it counts
        is exactly what the batch holds; the files it returns (route.json,
        batch.json) are in the batch before it becomes visible.
        """
        with self.study_lock(study_uid):
            self.journal.checkpoint()
            source = self.incoming / study_uid
            for name, data in (add_files(source) if add_files else {}).items():
                atomic_write(source / name, data)
            fsync_dir(source)
            target = self.complete / f"{study_uid}@{time.time_ns()}"
            os.rename(source, target)
        fsync_dir(self.complete)
        fsync_dir(self.incoming)
        return Batch(study_uid, target)

    def publish_staged(self, study_uid: str, staged: Path) -> Batch:
        """Hand a fully written and fsynced folder (an import) over to indexing as one batch."""
        target = self.complete / f"{study_uid}@{time.time_ns()}"
        fsync_dir(staged)
        os.rename(staged, target)
        fsync_dir(self.complete)
        return Batch(study_uid, target)

    def batches(self) -> list[Batch]:
        """Completed batches not yet indexed: highest route priority first, then oldest first."""
        found = []
        for path in self.complete.iterdir():
            uid, sep, batch_id = path.name.partition("@")
            # A stray folder with a non-numeric batch id would crash the sort below.
            if sep and is_uid(uid) and batch_id.isascii() and batch_id.isdigit() and path.is_dir():
                found.append((-_priority(path), int(batch_id), Batch(uid, path)))
        return [batch for _, _, batch in sorted(found, key=lambda item: item[:2])]

    def quarantine_batch(self, batch: Batch, reason: str) -> Path:
        target = self.quarantine_dir / batch.path.name
        os.rename(batch.path, target)
        atomic_write(target / "reason.json", json.dumps({"study": batch.study_uid, "reason": reason}).encode())
        return target


def _priority(batch_dir: Path) -> int:
    try:
        value = json.loads((batch_dir / "route.json").read_text()).get("priority", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
