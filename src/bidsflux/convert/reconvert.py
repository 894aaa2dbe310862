"""Re-conversion after a heuristic or converter change: first what would change, then one review per study.

Every conversion left a record in the BIDS dataset
(``.bidsflux/conversions/<session>.json``: heuristic name and SHA-256,
converter versions, heudiconv's conversion table of series -> outputs).
:func:`plan` compares each converted session with what the heuristic now in
force would do:

- converter versions differ -> affected (every output may change);
- the heuristic's file differs -> heudiconv is asked for the new conversion
  table without converting (``-c none``) on the session's archives, and the
  session is affected only when that table differs, series by series;
- otherwise unaffected.

:func:`apply` re-converts the affected sessions of each study onto one
branch ``reconvert/<stamp>`` off ``dev``, validates it, checks it for PHI and
opens one merge request into ``dev``; a data manager merges it after review.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..settings import Settings
from . import _heudiconv, heuristics
from .job import clone_at, read_record, run_convert_job, run_phi_job, run_validate_job, session_archives


@dataclass
class SessionPlan:
    study_uid: str
    session: str
    bids_url: str
    affected: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class StudyReconversion:
    bids_url: str
    branch: str
    sessions: list[str]
    commit: str = ""
    merge_request: int | None = None
    valid: bool = False
    phi_clean: bool = False


Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def plan(settings: Settings, sessions: list[tuple[str, str, str]], scratch: Path, *,
         say: Say = _quiet) -> list[SessionPlan]:
    """What re-converting ``(study_uid, session, bids_url)`` under the current settings would change."""
    by_dataset: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for study, session, url in sessions:
        by_dataset[url].append((study, session))
    plans: list[SessionPlan] = []
    versions = _heudiconv.tool_versions()
    for n, (url, members) in enumerate(sorted(by_dataset.items())):
        folder = scratch / f"plan-{n}"
        bids = clone_at(url, folder, "dev", study=members[0][0])
        heuristic = heuristics.resolve(settings.bids_heuristic, bids, study=members[0][0])
        say(f"{url}: {len(members)} session(s) against {heuristic.describe()}")
        for study, session in sorted(members, key=lambda m: m[1]):
            plans.append(_plan_session(bids, url, study, session, heuristic, versions,
                                       "dicom-archives" in settings.phi_allow))
        shutil.rmtree(folder, ignore_errors=True)
    return plans


def _plan_session(bids: Path, url: str, study: str, session: str, heuristic: heuristics.Heuristic,
                  versions: dict[str, str], dicom_archives: bool) -> SessionPlan:
    record = read_record(bids, session)
    if record is None:
        return SessionPlan(study, session, url, True, ["no conversion record (converted before records, "
                                                       "or never converted)"])
    reasons = [f"{tool} {record.get('versions', {}).get(tool, '?')} -> {version}"
               for tool, version in sorted(versions.items()) if record.get("versions", {}).get(tool) != version]
    # Conversions recorded before the setting existed kept ReproIn's DICOM archives.
    kept = bool(record.get("dicom_archives", True))
    if kept != dicom_archives:
        reasons.append("DICOM archives in sourcedata/: " + ("kept -> dropped" if kept else "dropped -> kept"))
    if record.get("heuristic_sha256") != heuristic.sha256 or record.get("heuristic") != heuristic.name:
        archives = session_archives(bids, session, study=study)
        new = _heudiconv.plan(archives, heuristic.path, study=study, dicom_archives=dicom_archives)
        old = record.get("mapping", {})
        for series in sorted(set(old) | set(new)):
            if old.get(series) != new.get(series):
                before = ", ".join(old.get(series, [])) or "nothing"
                after = ", ".join(new.get(series, [])) or "nothing"
                reasons.append(f"series {series}: {before} -> {after}")
    return SessionPlan(study, session, url, bool(reasons), reasons)


def apply(settings: Settings, plans: list[SessionPlan], scratch: Path, *, say: Say = _quiet,
          stamp: str | None = None) -> list[StudyReconversion]:
    """Re-convert the affected sessions: one branch and one merge request into dev per BIDS dataset."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    grouped: dict[str, list[SessionPlan]] = defaultdict(list)
    for item in plans:
        if item.affected:
            grouped[item.bids_url].append(item)
    done = []
    for n, (url, items) in enumerate(sorted(grouped.items())):
        branch = f"reconvert/{stamp}"
        result = StudyReconversion(url, branch, [i.session for i in items])
        base = "dev"
        for item in items:
            say(f"{url}: re-convert {item.session} on {branch}")
            outcome = run_convert_job(settings, bids_url=url, session=item.session, study_uid=item.study_uid,
                                      job_dir=scratch / f"apply-{n}", branch=branch, base=base, target="dev")
            base = branch  # the next session goes on top of this one
            result.commit, result.merge_request = outcome.commit, outcome.merge_request
        study = items[0].study_uid
        validation = run_validate_job(settings, bids_url=url, session=items[0].session, study_uid=study,
                                      sessions=[item.session for item in items],
                                      commit=result.commit, job_dir=scratch / f"apply-{n}",
                                      out_dir=_reports(scratch, n), merge_request=result.merge_request)
        phi = run_phi_job(settings, bids_url=url, session=items[0].session, study_uid=study, commit=result.commit,
                          job_dir=scratch / f"apply-{n}", out_dir=_reports(scratch, n),
                          merge_request=result.merge_request)
        result.valid, result.phi_clean = validation.passed, phi.passed
        say(f"{url}: {branch} at {result.commit[:12]}: {validation.summary}; PHI check: {phi.summary}")
        done.append(result)
    return done


def _reports(scratch: Path, n: int) -> Path:
    folder = scratch / f"reports-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_plans(path: Path, plans: list[SessionPlan]) -> None:
    path.write_text(json.dumps([asdict(p) for p in plans], indent=2, sort_keys=True) + "\n")

