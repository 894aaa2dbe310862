"""The durable spool: one folder per StudyInstanceUID, one file per instance.

Layout under ``<workdir>/spool``::

    incoming/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   receiving
    complete/<StudyUID>@<batch>/...                        handed to indexing
    quarantine/<name>/ + reason.json                       kept aside, with why
    conflicts/<StudyUID>/<SOPInstanceUID>.<sha>.dcm        same UID, other bytes

A file becomes visible only whole: written under a temporary name, fsynced,
then renamed.  Folder names come only from validated UIDs, never from other
tag values.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..naming import is_uid


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either absent or whole."""
    os.replace(_write_temp(path, data), path)


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` fsynced under a temporary name next to ``path``; return that name."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreOutcome(str, enum.Enum):
    """What happened to one received instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Batch:
    """A completed set of instances of one study, ready for indexing."""

    study_uid: str
    path: Path

    @property
    def batch_id(self) -> str:
        return self.path.name.split("@", 1)[1]


class Spool:
    """Durable per-study folders; safe to use from several threads."""

    def __init__(self, root: Path):
        self.root = root
        self.incoming = root / "incoming"
        self.complete = root / "complete"
        self.quarantine_dir = root / "quarantine"
        self.conflicts = root / "conflicts"
        for folder in (self.incoming, self.complete, self.quarantine_dir, self.conflicts):
            folder.mkdir(parents=True, exist_ok=True)
        self._publish_lock = threading.Lock()

    # -- receiving
    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoreOutcome:
        """Keep one instance durably and say whether it was new, a resend or a conflict."""
        for uid in (study_uid, series_uid, sop_uid):
            if not is_uid(uid):
                raise ValueError(f"not a valid DICOM UID: {uid[:80]!r}")
        series_dir = self.incoming / study_uid / series_uid
        target = series_dir / f"{sop_uid}.dcm"
        if target.exists():
            return self._resend(study_uid, sop_uid, target, data)
        new_dirs = not series_dir.is_dir()
        series_dir.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(target, data)
        with self._publish_lock:
            # Checked again under the lock: two associations may send one SOP at the same
            # time, and a plain replace would silently drop the first one's bytes.
            filed = not target.exists()
            if filed:
                os.replace(tmp, target)
        if not filed:
            tmp.unlink(missing_ok=True)
            return self._resend(study_uid, sop_uid, target, data)
        if new_dirs:
            fsync_dir(series_dir.parent)
        return StoreOutcome.STORED

    def _resend(self, study_uid: str, sop_uid: str, target: Path, data: bytes) -> StoreOutcome:
        if target.read_bytes() == data:
            return StoreOutcome.DUPLICATE
        self.keep_conflict(study_uid, sop_uid, data)
        return StoreOutcome.CONFLICT

    def keep_conflict(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        folder = self.conflicts / study_uid
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()[:16]
        path = folder / f"{sop_uid}.{digest}.dcm"
        if not path.exists():
            atomic_write(path, data)
        return path

    def quarantine_bytes(self, data: bytes, reason: str, info: dict[str, Any]) -> Path:
        """Keep an instance that cannot be filed (bad UIDs, undecodable) with why."""
        folder = self.quarantine_dir / f"unfiled-{time.strftime('%Y%m%d')}"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()[:24]
        path = folder / f"{digest}.dcm"
        atomic_write(path, data)
        atomic_write(folder / f"{digest}.reason.json",
                     json.dumps({"reason": reason, **info}, sort_keys=True).encode())
        return path

    # -- assembling
    def receiving_studies(self) -> list[str]:
        return sorted(p.name for p in self.incoming.iterdir() if p.is_dir() and is_uid(p.name))

    def last_change(self, study_uid: str) -> float:
        """Newest mtime under a receiving study (used after a restart)."""
        newest = 0.0
        for series_dir in (self.incoming / study_uid).iterdir():
            newest = max(newest, series_dir.stat().st_mtime)
        return newest

    def complete_study(self, study_uid: str) -> Batch:
        """Atomically hand a receiving study over to indexing as a new batch."""
        batch_id = f"{time.time_ns()}"
        target = self.complete / f"{study_uid}@{batch_id}"
        os.rename(self.incoming / study_uid, target)
        fsync_dir(self.complete)
        return Batch(study_uid, target)

    def batches(self) -> list[Batch]:
        """Completed batches not yet indexed, oldest first."""
        found = []
        for path in self.complete.iterdir():
            uid, sep, batch_id = path.name.partition("@")
            # A stray folder with a non-numeric batch id would crash the sort below.
            if sep and is_uid(uid) and batch_id.isascii() and batch_id.isdigit() and path.is_dir():
                found.append(Batch(uid, path))
        return sorted(found, key=lambda b: int(b.batch_id))

    def quarantine_batch(self, batch: Batch, reason: str) -> Path:
        target = self.quarantine_dir / batch.path.name
        os.rename(batch.path, target)
        atomic_write(target / "reason.json", json.dumps({"study": batch.study_uid, "reason": reason}).encode())
        return target
