"""A study folder written by another receiver, put into the spool as completed batches.

For sites that keep their receiver: dcmtk ``storescp --exec-on-eostudy``
and mercure modules call ``bidsflux index STUDY_DIR`` (or ``bidsflux
mercure-module``), and the study then goes exactly the way of one received
natively: the same batch layout, ``route.json`` and ``batch.json``, the same
ledger record, then the ``serve`` worker.  Those receivers do not fsync, so
the files are linked (or copied) into a staging folder, flushed with one
``syncfs``, and only then handed on; the source is removed after that, if
asked.  Files that are not DICOM, or cannot be filed, are reported per item
and kept in quarantine; nothing is dropped.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ledger import Ledger
from ..naming import is_uid
from ..receive import Batch, HeaderError, NotPart10, Spool, read_header, read_part10
from ..receive._filing import data_set_of
from ..receive._journal import sync_filesystem
from ..routing import Rules
from ._record import batch_files, count_series, is_amendment, record_completion
from ._tags import read_tags, series_description

log = logging.getLogger(__name__)
_HEAD = 1 << 20
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
SKIPPED_NAMES = {"task.json", ".processing", "reason.json", "route.json", "batch.json", "DICOMDIR"}


@dataclass
class ImportResult:
    """What became of one folder: its batches, and every file that was skipped or kept aside."""

    batches: list[Batch] = field(default_factory=list)
    instances: int = 0
    duplicates: int = 0
    conflicts: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why): not DICOM, left in place
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, why): DICOM we cannot file


def _identify(path: Path) -> tuple[str, str, str, str]:
    """(study, series, SOP instance, calling AE from the file meta) of a Part 10 file, from its header."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        meta = read_part10(head)
        data = head[meta.data_offset:]
        try:
            header = read_header(data, meta.transfer_syntax, complete=len(head) < _HEAD)
        except HeaderError:
            if len(head) < _HEAD:
                raise
            handle.seek(meta.data_offset)
            header = read_header(handle.read(), meta.transfer_syntax, complete=True)
    for label, value in (("StudyInstanceUID", header.study_uid), ("SeriesInstanceUID", header.series_uid),
                         ("SOPInstanceUID", header.sop_instance_uid)):
        if not is_uid(value):
            raise HeaderError(f"{label} {value[:80]!r} is not a valid DICOM UID")
    return header.study_uid, header.series_uid, header.sop_instance_uid, meta.source_aet


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def _place(source: Path, target: Path, *, link: bool) -> None:
    if not link:  # the source stays: a copy, so that a later write to it cannot change the spool's
        shutil.copyfile(source, target)
        return
    try:
        os.link(source, target)  # same file system: no copy; the flush below covers it
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)


def _files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and name not in SKIPPED_NAMES and path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def import_folder(spool: Spool, ledger: Ledger, rules: Rules, folder: Path, *, source: str,
                  calling_aet: str | None = None, peer: str | None = None, remove: bool = False,
                  note: dict[str, Any] | None = None) -> ImportResult:
    """Import every DICOM file under ``folder`` as one completed batch per study."""
    result = ImportResult()
    staging = spool.tmp / f"import-{uuid.uuid4().hex}"
    studies: dict[str, Path] = {}
    senders: dict[str, str] = {}  # the calling AE each receiver wrote into the file meta
    imported: list[Path] = []
    try:
        for path in _files(folder):
            try:
                study, series, sop, source_aet = _identify(path)
            except NotPart10 as exc:
                if not _has_preamble(path):
                    result.skipped.append((str(path), str(exc)))
                    continue
                why: str | None = f"broken file meta information: {exc}"
            except (HeaderError, OSError) as exc:
                why = str(exc)
            else:
                why = None
            if why is not None:
                kept = spool.quarantine_bytes(path.read_bytes(), f"cannot file {path.name}: {why}", {
                    "source": source, "file": str(path)[:300], "calling_aet": calling_aet, "peer": peer})
                result.quarantined.append((str(path), str(kept)))
                imported.append(path)
                continue
            senders.setdefault(study, source_aet)
            target = studies.setdefault(study, staging / study) / series / f"{sop}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                if data_set_of(target.read_bytes()) == data_set_of(path.read_bytes()):
                    result.duplicates += 1
                else:
                    spool.keep_conflict(study, sop, path.read_bytes(),
                                        f"SOPInstanceUID {sop} twice in {source} folder with different bytes")
                    result.conflicts += 1
            else:
                _place(path, target, link=remove)
                result.instances += 1
            imported.append(path)
        # One flush for every file placed (they came from a receiver that does not fsync).
        sync_filesystem(spool.root)
        for study, study_dir in studies.items():
            sender = calling_aet or (senders.get(study) if _AET.match(senders.get(study) or "") else None)
            result.batches.append(_hand_on(spool, ledger, rules, study, study_dir, source=source,
                                           calling_aet=sender, peer=peer, note=note or {}))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if remove:
        for path in imported:
            path.unlink(missing_ok=True)
    return result


def _hand_on(spool: Spool, ledger: Ledger, rules: Rules, study: str, study_dir: Path, *, source: str,
             calling_aet: str | None, peer: str | None, note: dict[str, Any]) -> Batch:
    first = next(iter(sorted(study_dir.glob("*/*.dcm"))))
    route = rules.route(read_tags(first))
    descriptions = {d.name: series_description(d) for d in study_dir.iterdir() if d.is_dir()}
    series = count_series(study_dir, descriptions)
    reason = f"imported from {source}"
    association = {"source": source, "calling_aet": calling_aet, "peer": peer, **note}
    for name, data in batch_files(study, route, reason, series, amendment=is_amendment(ledger.get(study)),
                                  source=source, associations=[association]).items():
        (study_dir / name).write_bytes(data)
        with open(study_dir / name, "rb+") as handle:
            os.fsync(handle.fileno())
    batch = spool.publish_staged(study, study_dir)
    record_completion(ledger, study, batch.batch_id, route=route, reason=reason, series=series,
                      associations=[association], source=source, calling_aet=calling_aet, peer=peer,
                      first_arrival=None)
    log.info("imported %d instances in %d series from %s (route %s)", sum(c.instances for c in series.values()),
             len(series), source, route.rule, extra={"study_uid": study})
    return batch
