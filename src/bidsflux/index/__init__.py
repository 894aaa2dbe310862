"""Stage 3, index: one DataLad dataset per session, one archive per series.

``index_batch`` turns a completed spool batch into a commit of the session
dataset: a deterministic tar per series (annexed, SHA256E) and
``manifest.json`` (in git).  An identical resend changes nothing; new or
changed series become an amendment commit that says what changed; a resent
instance with other bytes is a conflict, kept aside and counted.

The archive is read once: its SHA-256 is computed while it is written and
handed to git-annex as the key (``setkey`` + ``fromkey``), instead of letting
``git annex add`` hash it again.  Counts are compared at this hop: instances
in the batch must equal instances added + duplicates + conflicts, and every
archive must hold the instances the manifest says.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _datalad, faults
from .._fs import remove_tree
from .._locks import dataset_lock
from ..errors import IndexingError
from ..naming import expand, is_uid, sanitize
from ..settings import Settings
from ._dicom import read_series_info, read_tags
from ._tar import COMPRESSIONS, build_archive, read_members
from .manifest import MANIFEST_NAME, Manifest, SeriesEntry, describe_changes, hash_uids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionNames:
    """Where a study goes, expanded from its tags and sanitised."""

    group_path: str
    session_path: str

    def dataset_dir(self, settings: Settings) -> Path:
        return settings.datasets_dir / self.group_path / "sourcedata" / "dicoms" / self.session_path


@dataclass
class IndexResult:
    study_uid: str
    names: SessionNames
    dataset: Path
    manifest: Manifest
    changes: list[str]
    commit: str
    conflicts: list[tuple[str, Path]] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    defaulted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def apply_tag_defaults(tags: dict[str, Any], defaults: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Fill missing or empty tags from the site's explicit defaults; say which were filled."""
    filled = dict(tags)
    used = []
    for name, value in defaults.items():
        if not str(filled.get(name) or "").strip():
            filled[name] = value
            used.append(name)
    return filled, used


def session_names(settings: Settings, tags: dict[str, Any], study_uid: str,
                  group_template: str | None = None) -> SessionNames:
    """Expand the group and session templates; NamingError sends the study to quarantine."""
    return SessionNames(
        group_path=expand(group_template or settings.group_template, tags, "gitlab", study=study_uid),
        session_path=expand(settings.session_template, tags, "filename", study=study_uid),
    )


def _series_files(batch_dir: Path) -> dict[Path, list[Path]]:
    result = {}
    for series_dir in sorted(p for p in batch_dir.iterdir() if p.is_dir()):
        files = sorted(series_dir.glob("*.dcm"))
        if files:
            result[series_dir] = files
    return result


def _archive_name(info: dict[str, Any], taken: set[str], series_uid: str, suffix: str) -> str:
    number = info.get("SeriesNumber")
    description = sanitize(str(info.get("SeriesDescription") or info.get("ProtocolName") or ""), "filename")
    stem = f"{int(number):03d}" if isinstance(number, int) else "000"
    stem = f"{stem}-{description}" if description else stem
    if stem + suffix in taken:
        stem = f"{stem}-{series_uid.rsplit('.', 1)[-1][-12:]}"
    return stem + suffix


def index_batch(settings: Settings, study_uid: str, batch_dir: Path,
                group_template: str | None = None) -> IndexResult:
    """Index one completed batch into its session dataset (idempotent)."""
    series_files = _series_files(batch_dir)
    if not series_files:
        raise IndexingError("the batch holds no instances", study=study_uid)
    raw_tags = read_tags(next(iter(series_files.values()))[0])
    if str(raw_tags.get("StudyInstanceUID")) != study_uid or not is_uid(study_uid):
        raise IndexingError("the spool folder and the instances disagree on the StudyInstanceUID",
                            study=study_uid)
    tags, defaulted = apply_tag_defaults(raw_tags, settings.tag_defaults)
    names = session_names(settings, tags, study_uid, group_template)
    dataset = names.dataset_dir(settings)
    with dataset_lock(settings.workdir / "locks", dataset):
        result = _index_locked(settings, study_uid, dataset, names, series_files)
    result.tags, result.defaulted = tags, defaulted
    return result


def _index_locked(settings: Settings, study_uid: str, dataset: Path, names: SessionNames,
                  series_files: dict[Path, list[Path]]) -> IndexResult:
    scratch = settings.workdir / "tmp" / f"index-{uuid.uuid4().hex}"
    scratch.mkdir(parents=True)
    # Two lanes: archives are built here while git-annex work (creating the
    # dataset, moving finished archives into the annex) runs beside it, so the
    # fixed costs hide behind the data.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="annex") as lane:
        try:
            return _index_into(settings, study_uid, dataset, names, series_files, scratch, lane)
        finally:
            lane.shutdown(wait=True)
            remove_tree(scratch)  # archives left here were moved into the annex, or are unneeded


def _index_into(settings: Settings, study_uid: str, dataset: Path, names: SessionNames,
                series_files: dict[Path, list[Path]], scratch: Path, lane: ThreadPoolExecutor) -> IndexResult:
    fresh = not (dataset / ".datalad" / "config").exists()
    creating: Future[bool] = lane.submit(
        _datalad.ensure_dataset, dataset, description=f"bids-flux session {study_uid}",
        gitattributes=_datalad.SESSION_GITATTRIBUTES, study=study_uid,
    )
    if not fresh:
        creating.result()
        _datalad.recover_worktree(dataset)
    suffix = COMPRESSIONS[settings.archive_compression]
    old = Manifest.load(dataset, study_uid) if not fresh else Manifest(study_uid)
    new = Manifest(study_uid, dict(old.series))
    conflicts: list[tuple[str, Path]] = []
    moving: list[Future[None]] = []
    to_link: list[tuple[str, str]] = []
    batch_instances = added = duplicates = 0
    taken = {entry.archive for entry in old.series.values()}
    for series_dir, files in series_files.items():
        info = read_series_info(files[0])
        series_uid = str(info["SeriesInstanceUID"] or series_dir.name)
        members: dict[str, Path | bytes] = {f.name: f for f in files}
        batch_instances += len(files)
        previous = old.series.get(series_uid)
        series_added = len(files)
        if previous is not None:
            _datalad.get(dataset, [previous.archive], study=study_uid)
            for name, data in read_members(dataset / previous.archive).items():
                incoming = members.get(name)
                if incoming is None:
                    members[name] = data
                    continue
                series_added -= 1
                if isinstance(incoming, Path) and incoming.read_bytes() != data:
                    # The archived instance stays; the different resend is kept aside.
                    conflicts.append((name, incoming))
                    members[name] = data
                else:
                    duplicates += 1
            archive_name = previous.archive
        else:
            archive_name = _archive_name(info, taken, series_uid, suffix)
            taken.add(archive_name)
        # No fsync here: until the store has verified the archive, the spool batch
        # (fsynced on receipt) is the durable copy, and it is kept until then.
        archive = build_archive(members, scratch / f"{uuid.uuid4().hex}{suffix}",
                                compression=settings.archive_compression, fsync=False)
        expected = (previous.instances if previous else 0) + series_added
        if archive.members != expected:
            raise IndexingError(f"count mismatch in {archive_name}: expected {expected} instances, "
                                f"archived {archive.members}", study=study_uid)
        if previous is None or archive.annex_key != previous.annex_key:
            moving.append(lane.submit(_datalad.annex_setkey, dataset, archive.annex_key, archive.path,
                                      study=study_uid))
            to_link.append((archive.annex_key, archive_name))
        added += series_added
        new.series[series_uid] = SeriesEntry(
            series_uid=series_uid,
            number=info["SeriesNumber"] if isinstance(info["SeriesNumber"], int) else None,
            description=str(info["SeriesDescription"] or ""),
            modality=str(info["Modality"] or ""),
            sop_class_uid=str(info["SOPClassUID"] or ""),
            instances=archive.members,
            sop_uids_sha256=hash_uids([name.rsplit(".", 1)[0] for name in members]),
            archive=archive_name,
            annex_key=archive.annex_key,
            bytes=archive.size,
        )
    created = creating.result()
    for future in moving:
        future.result()
    if added + duplicates + len(conflicts) != batch_instances:
        raise IndexingError(
            f"count mismatch: {batch_instances} instances received, {added} archived, {duplicates} "
            f"duplicates, {len(conflicts)} conflicts", study=study_uid,
        )
    _datalad.annex_link(dataset, to_link, study=study_uid)
    faults.point("index.after_archive")
    changes = describe_changes(old, new)
    (dataset / MANIFEST_NAME).write_text(new.to_json())
    if changes or created or _datalad.is_dirty(dataset, study=study_uid):
        title = "Index session" if not old.series else "Amend session"
        message = f"[bids-flux] {title} {study_uid}\n\n" + "\n".join(changes or ["(no change in series)"]) + "\n"
        _datalad.commit_staged(dataset, message, [MANIFEST_NAME, ".gitattributes"], study=study_uid)
    faults.point("index.after_commit")
    _check_keys(dataset, new, study_uid)
    return IndexResult(study_uid, names, dataset, new, changes, _datalad.head(dataset, study=study_uid),
                       conflicts)


def _check_keys(dataset: Path, manifest: Manifest, study_uid: str) -> None:
    """The committed pointers must be exactly the archives the manifest describes."""
    archives = [entry.archive for entry in manifest.series.values()]
    keys = _datalad.lookup_keys(dataset, archives, study=study_uid)
    for entry in manifest.series.values():
        if keys.get(entry.archive) != entry.annex_key:
            raise IndexingError(
                f"archive {entry.archive} has annex key {keys.get(entry.archive)} but the manifest says "
                f"{entry.annex_key}", study=study_uid,
            )


ensure_dataset = _datalad.ensure_dataset
save_dataset = _datalad.save
get_content = _datalad.get
dataset_id = _datalad.dataset_id

__all__ = ["IndexResult", "Manifest", "SessionNames", "apply_tag_defaults", "dataset_id", "ensure_dataset",
           "get_content", "index_batch", "save_dataset", "session_names"]
