"""Filing one instance under its study folder: new, identical resend, or conflict.

Shared by the three ways an instance reaches its folder: the journal's fast
path (filed right after the answer, made durable by the next checkpoint),
the direct path for instances too large for the journal (fsynced before the
answer), and replay after a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ._files import atomic_write, fsync_dir, write_temp
from ._part10 import NotPart10, read_part10


def data_set_of(data: bytes | memoryview) -> bytes:
    """A stored file's data set (what the sender encoded), without the File Meta Information."""
    raw = bytes(data)
    try:
        return raw[read_part10(raw[:65536]).data_offset:]
    except NotPart10:
        return raw


def conflict_reason(sop_uid: str, received: bytes, existing: bytes) -> str:
    return (f"SOPInstanceUID {sop_uid} resent with different bytes ({len(received)} bytes, sha256 "
            f"{hashlib.sha256(received).hexdigest()[:16]}; kept: {len(existing)} bytes, sha256 "
            f"{hashlib.sha256(existing).hexdigest()[:16]})")


def keep_conflict(conflicts: Path, tmp_dir: Path, study_uid: str, sop_uid: str, data: bytes | memoryview,
                  info: dict[str, Any]) -> Path:
    """Keep ``data`` (a whole file) durably aside as another version of an instance, with why."""
    digest = hashlib.sha256(data_set_of(data)).hexdigest()[:16]
    folder = conflicts / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_uid}.{digest}.dcm"
    if not path.exists():
        atomic_write(folder / f"{sop_uid}.{digest}.json",
                     json.dumps({"study": study_uid, "sop": sop_uid, "at": time.time(), **info},
                                sort_keys=True).encode())
        temp = write_temp(tmp_dir, data, sync=True)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
        fsync_dir(folder)
    return path


def file_replayed(incoming: Path, conflicts: Path, tmp_dir: Path, meta: dict[str, Any], payload: bytes) -> str:
    """File a journal record again after a crash; returns what happened (for the log)."""
    study, series, sop = meta["study"], meta["series"], meta["sop"]
    target = incoming / study / series / f"{sop}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        existing = None
    if existing == payload:
        return "present"
    if existing is None or payload.startswith(existing):
        # Missing, or cut short by the crash (a file system with ordered data shows a prefix).
        os.replace(write_temp(tmp_dir, payload, sync=False), target)
        return "refiled"
    if data_set_of(existing) == data_set_of(payload):
        return "present"
    info = {k: v for k, v in meta.items() if k not in ("study", "sop")}
    keep_conflict(conflicts, tmp_dir, study, sop, payload,
                  {**info, "reason": conflict_reason(sop, data_set_of(payload), data_set_of(existing))
                   + "; found replaying the journal after a restart"})
    return "conflict"
