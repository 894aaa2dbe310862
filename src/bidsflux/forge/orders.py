"""Orders: a pipeline started on demand for one session (``bidsflux pipeline run``).

The session is found in the ledger (by StudyInstanceUID or session path); its
published URLs and group come from there.  ``convert`` runs the BIDS
project's conversion pipeline and records the outcome as the worker would
(CONVERTING -> ... -> MERGED or FAILED); ``derivatives`` runs the BIDS
project's pipeline on ``dev`` with ``BIDSFLUX_PIPELINE=derivatives``, which
runs the derivative jobs the study's ``.gitlab-ci.yml`` defines
(ci-pipelines/derivatives.yml); any other name runs the pipeline of
``<group>/derivatives/<name>`` (or ``<group>/qc/<name>`` for ``qc/<name>``) on
its default branch, for a derivative project with a pipeline of its own.
Either way the final status is kept in the study's ledger details under
``pipeline:<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..errors import ForgeError, LedgerError, UsageError
from ..ledger import Ledger, StudyRecord
from ..settings import Settings
from ._gitlab import enc
from .gitlab import GitLabForge, check_path
from .pipelines import CONVERT, PipelineResult, Progress, follow, follow_conversion, session_variables, trigger
from .publish import Published

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_variables(pairs: list[str]) -> dict[str, str]:
    """``K=V`` strings as CI/CD variables; a bad name is a usage error."""
    variables = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _KEY.match(key):
            raise UsageError(f"--var {pair!r}: expected NAME=value with NAME made of letters, digits and _")
        variables[key] = value
    return variables


def find_session(ledger: Ledger, session: str) -> StudyRecord:
    record = ledger.get(session)
    if record is None:
        record = next((r for r in ledger.studies() if r.details.get("session_path") == session), None)
    if record is None:
        raise LedgerError(f"no session {session} in the ledger", hint="`bidsflux status` lists the known studies")
    return record


def published_from(record: StudyRecord) -> Published:
    details = record.details
    if not record.group_path or not details.get("bids_url"):
        raise LedgerError("the session has not been published yet", study=record.study_uid,
                          hint="wait until `bidsflux status` shows it PUBLISHED")
    return Published(session_url=str(details.get("session_url", "")), study_url=str(details.get("study_url", "")),
                     bids_url=str(details["bids_url"]), session_path=str(details.get("session_path", "")),
                     group_path=record.group_path, session_commit=str(details.get("session_commit", "")),
                     study_commit=str(details.get("study_commit", "")))


DERIVATIVES = "derivatives"


def pipeline_project(group: str, name: str) -> str:
    if name in (CONVERT, DERIVATIVES):
        return f"{group}/bids"
    return f"{group}/{name}" if name.startswith(("qc/", "derivatives/")) else f"{group}/derivatives/{name}"


def run_on_demand(settings: Settings, forge: GitLabForge, ledger: Ledger, record: StudyRecord, name: str,
                  variables: Mapping[str, str], progress: Progress) -> PipelineResult:
    """Start pipeline ``name`` for the session, follow it to the end, keep its final status in the ledger."""
    study = record.study_uid
    published = published_from(record)
    project = pipeline_project(published.group_path, name)
    check_path(project, study=study)
    if name == CONVERT:
        result = follow_conversion(settings, forge, ledger, study, published, progress,
                                   extra_variables=variables, reuse=False)
    else:
        info = forge.api.get_or_none(f"/projects/{enc(project)}", what=f"read project {project}", study=study)
        if info is None or not info.get("default_branch"):
            raise ForgeError(f"there is no pipeline {name} for this study: {project} is missing or empty",
                             study=study)
        ref = "dev" if name == DERIVATIVES else str(info["default_branch"])
        started = trigger(forge, project, ref, {**session_variables(study, published, name), **variables},
                          study=study)
        result = follow(settings, forge, project, started, study=study, progress=progress)
    ledger.merge_details(study, {f"pipeline:{name}": {"id": result.id, "status": result.status,
                                                      "url": result.web_url, "project": project,
                                                      "failed_jobs": result.failed_jobs}})
    return result
