"""The conversion job: what the ``convert`` CI job and the local runner both run.

Given the BIDS dataset's URL and a session, in a fresh job folder:

1. clone the BIDS dataset, branch ``convert/<session>`` off ``dev``;
2. bring ``sourcedata/dicoms`` (the study superdataset) up to date and get
   the session's series archives from the store;
3. run heudiconv (the study's heuristic, ReproIn by default) + dcm2niix;
4. commit, recording heuristic and converter versions;
5. validate with the BIDS validator;
6. copy the new content to the store and verify it there;
7. push the branch; when valid and auto-merge is on, merge into ``dev`` and
   push that too.

The outcome is written as JSON for whoever runs the job (the local runner
reads it into the ledger; in GitLab CI it is an artifact).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import _datalad, storage
from .._proc import git
from ..errors import ConvertError
from ..settings import Settings
from . import _heudiconv
from ._validator import validate

log = logging.getLogger(__name__)


@dataclass
class ConvertOutcome:
    study_uid: str
    session: str
    branch: str
    commit: str
    valid: bool
    errors: int
    warnings: int
    summary: str
    merged: bool
    merge_commit: str | None
    nifti_files: int
    stored_keys: int
    versions: dict[str, str]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def _step(name: str) -> None:
    # Progress for whoever watches the job log (GitLab's job page, the demo).
    print(f"[convert] {name}", flush=True)


def run_convert_job(settings: Settings, *, bids_url: str, session: str, study_uid: str,
                    job_dir: Path) -> ConvertOutcome:
    bids = job_dir / "bids"
    branch = f"convert/{session}"
    _step(f"clone {bids_url}")
    _datalad.clone(bids_url, bids, study=study_uid, error=ConvertError)
    git("checkout", "--quiet", "-B", branch, "origin/dev", cwd=bids, error=ConvertError, study=study_uid)

    _step("update sourcedata/dicoms and get the session's archives")
    dicoms = bids / "sourcedata" / "dicoms"
    _datalad.get(bids, ["sourcedata/dicoms"], study=study_uid, no_data=True, error=ConvertError)
    git("fetch", "--quiet", "origin", cwd=dicoms, error=ConvertError, study=study_uid)
    git("checkout", "--quiet", "-B", "main", "origin/main", cwd=dicoms, error=ConvertError, study=study_uid)
    if not (dicoms / ".gitmodules").exists() or session not in git(
            "config", "-f", ".gitmodules", "--get-regexp", r"submodule\..*\.path", cwd=dicoms,
            error=ConvertError, study=study_uid).split():
        raise ConvertError(f"session {session} is not registered in the study superdataset", study=study_uid)
    _datalad.get(dicoms, [session], study=study_uid, error=ConvertError)
    archives = sorted((dicoms / session).glob("*.tar"))
    if not archives:
        raise ConvertError(f"session {session} has no series archives", study=study_uid)

    versions = _heudiconv.tool_versions()
    _step(f"heudiconv ({settings.bids_heuristic}) on {len(archives)} series")
    _heudiconv.convert(archives, bids, settings.bids_heuristic, study=study_uid)
    super_commit = git("rev-parse", "HEAD", cwd=dicoms, error=ConvertError, study=study_uid)
    message = (
        f"[bids-flux] Convert session {session}\n\n"
        f"study: {study_uid}\nheuristic: {settings.bids_heuristic}\n"
        + "".join(f"{tool}: {version}\n" for tool, version in sorted(versions.items()))
        + f"sourcedata/dicoms: {super_commit}\n"
    )
    _datalad.save(bids, message, study=study_uid, error=ConvertError)
    commit = git("rev-parse", "HEAD", cwd=bids, error=ConvertError, study=study_uid)
    nifti = len(list(bids.glob("sub-*/**/*.nii.gz")))

    _step("validate")
    validation = validate(bids, study=study_uid)
    print(f"[convert] BIDS validator: {validation.summary()}", flush=True)
    (job_dir / "bids-validator.json").write_text(json.dumps(validation.report, indent=1))

    _step("store content")
    stored = storage.push(settings, bids, study=study_uid)
    _step(f"push {branch}")
    # A re-run replaces the branch: it always starts again from dev.
    _datalad.push(bids, "origin", study=study_uid, error=ConvertError, force=True)

    merged, merge_commit = False, None
    if validation.valid and settings.bids_auto_merge:
        _step(f"merge {branch} into dev")
        git("checkout", "--quiet", "dev", cwd=bids, error=ConvertError, study=study_uid)
        git("merge", "--quiet", "--no-ff", "-m", f"[bids-flux] Merge {branch} into dev", branch,
            cwd=bids, error=ConvertError, study=study_uid)
        _datalad.push(bids, "origin", study=study_uid, error=ConvertError)
        merged, merge_commit = True, git("rev-parse", "HEAD", cwd=bids, error=ConvertError, study=study_uid)
    return ConvertOutcome(
        study_uid=study_uid, session=session, branch=branch, commit=commit, valid=validation.valid,
        errors=validation.errors, warnings=validation.warnings, summary=validation.summary(),
        merged=merged, merge_commit=merge_commit, nifti_files=nifti, stored_keys=stored.keys,
        versions=versions,
    )
