"""Stage 6 on GitLab: a session's conversion pipeline, triggered, followed, recorded.

After publishing, the worker calls :func:`follow_conversion`: it starts the
BIDS project's pipeline on ``dev`` with the session's variables (or finds the
one already started for this version of the session, after a restart), polls
it with backoff until it ends, and records the outcome in the ledger:
CONVERTING, then CONVERTED -> VALIDATED -> MERGED when the pipeline succeeded
and ``convert/<session>`` reached ``dev`` (VALIDATED alone while it awaits a
review), or FAILED with the failed jobs named.  GitLab being unreachable is a
transient error: the worker retries, and following resumes the same pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ForgeError
from ..ledger import Ledger, State
from ..settings import Settings
from ._gitlab import enc
from .gitlab import GitLabForge
from .publish import Published

Progress = Callable[[str, str], None]
FINISHED = frozenset({"success", "failed", "canceled", "skipped", "manual"})
FAILED = frozenset({"failed", "canceled", "skipped"})
CONVERT = "convert"


@dataclass(frozen=True)
class PipelineResult:
    project: str
    id: int
    status: str
    web_url: str
    failed_jobs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def summary(self) -> str:
        jobs = f" (failed jobs: {', '.join(self.failed_jobs)})" if self.failed_jobs else ""
        return f"pipeline #{self.id} of {self.project}: {self.status}{jobs}; {self.web_url}"


def _quiet(study: str, message: str) -> None:
    pass


def session_variables(study_uid: str, published: Published, pipeline: str = CONVERT) -> dict[str, str]:
    """The CI/CD variables that tell a pipeline which session to work on."""
    return {"BIDSFLUX_PIPELINE": pipeline, "BIDSFLUX_STUDY_UID": study_uid,
            "BIDSFLUX_SESSION": published.session_path, "BIDSFLUX_SESSION_COMMIT": published.session_commit,
            "BIDSFLUX_STUDY_COMMIT": published.study_commit, "BIDSFLUX_BIDS_URL": published.bids_url}


def trigger(forge: GitLabForge, project: str, ref: str, variables: Mapping[str, str], *,
            study: str | None) -> dict[str, Any]:
    data = {"ref": ref, "variables": [{"key": k, "value": v, "variable_type": "env_var"}
                                      for k, v in variables.items()]}
    return forge.api.post(f"/projects/{enc(project)}/pipeline", data, what=f"start a pipeline on {project} {ref}",
                          study=study)


def find_started(forge: GitLabForge, project: str, ref: str, variables: Mapping[str, str], *,
                 study: str | None) -> dict[str, Any] | None:
    """A recent API-started pipeline with these variables (a restart after triggering, before recording)."""
    for candidate in forge.api.first_page(f"/projects/{enc(project)}/pipelines", what=f"list pipelines of {project}",
                                          study=study, ref=ref, source="api", order_by="id", sort="desc"):
        found = {v["key"]: v["value"] for v in forge.api.list_all(
            f"/projects/{enc(project)}/pipelines/{candidate['id']}/variables",
            what=f"read variables of pipeline #{candidate['id']}", study=study)}
        if all(found.get(k) == v for k, v in variables.items()):
            return candidate
    return None


def follow(settings: Settings, forge: GitLabForge, project: str, pipeline: dict[str, Any], *, study: str,
           progress: Progress = _quiet, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> PipelineResult:
    """Poll the pipeline, backing off, until it ends; transient ForgeError when it outlasts the timeout."""
    interval = settings.pipeline_poll
    deadline = clock() + settings.pipeline_timeout
    where = f"/projects/{enc(project)}/pipelines/{pipeline['id']}"
    last = None
    while True:
        if pipeline["status"] != last:
            last = pipeline["status"]
            progress(study, f"pipeline #{pipeline['id']} {last}: {pipeline.get('web_url', '')}")
        if pipeline["status"] in FINISHED:
            break
        if clock() + interval > deadline:
            raise ForgeError(f"pipeline #{pipeline['id']} of {project} is still {last} after "
                             f"{settings.pipeline_timeout:.0f}s", study=study, transient=True,
                             hint="following resumes on the next attempt")
        sleep(interval)
        interval = min(interval * 1.5, settings.pipeline_poll_max)
        pipeline = forge.api.get(where, what=f"read pipeline #{pipeline['id']}", study=study)
    failed: list[str] = []
    if pipeline["status"] in FAILED:
        failed = [job["name"] for job in forge.api.list_all(f"{where}/jobs", what=f"list jobs of #{pipeline['id']}",
                                                        study=study) if job.get("status") == "failed"]
    return PipelineResult(project, int(pipeline["id"]), pipeline["status"], str(pipeline.get("web_url", "")), failed)


def follow_conversion(settings: Settings, forge: GitLabForge, ledger: Ledger, study_uid: str, published: Published,
                      progress: Progress = _quiet, *, extra_variables: Mapping[str, str] | None = None,
                      reuse: bool = True, sleep: Callable[[float], None] = time.sleep) -> PipelineResult:
    """Start (or find) the session's conversion pipeline, follow it to the end, record the outcome."""
    project = f"{published.group_path}/bids"
    variables = {**session_variables(study_uid, published), **(extra_variables or {})}
    pipeline = _resume(forge, ledger, study_uid, project, published, variables) if reuse else None
    if pipeline is None:
        pipeline = trigger(forge, project, "dev", variables, study=study_uid)
    ledger.transition(study_uid, State.CONVERTING, details={
        "pipeline_id": pipeline["id"], "pipeline_url": pipeline.get("web_url"), "pipeline_project": project,
        "pipeline_key": published.study_commit, "pipeline_status": pipeline["status"]})
    result = follow(settings, forge, project, pipeline, study=study_uid, progress=progress, sleep=sleep)
    record_conversion(settings, forge, ledger, study_uid, published, result)
    progress(study_uid, result.summary())
    return result


def _resume(forge: GitLabForge, ledger: Ledger, study_uid: str, project: str, published: Published,
            variables: Mapping[str, str]) -> dict[str, Any] | None:
    record = ledger.get(study_uid)
    details = record.details if record else {}
    if (details.get("pipeline_key") == published.study_commit and details.get("pipeline_project") == project
            and details.get("pipeline_id")):
        return forge.api.get(f"/projects/{enc(project)}/pipelines/{details['pipeline_id']}",
                             what=f"read pipeline #{details['pipeline_id']}", study=study_uid)
    return find_started(forge, project, "dev", variables, study=study_uid)


def record_conversion(settings: Settings, forge: GitLabForge, ledger: Ledger, study_uid: str, published: Published,
                      result: PipelineResult) -> State:
    """Write the pipeline's outcome into the ledger; returns the state reached."""
    details: dict[str, Any] = {"pipeline_id": result.id, "pipeline_status": result.status,
                               "pipeline_url": result.web_url}
    if result.status in FAILED:
        ledger.transition(study_uid, State.FAILED, error=f"conversion {result.summary()}", details=details,
                          counts={"pipeline_id": result.id})
        return State.FAILED
    branch = f"convert/{published.session_path}"
    where = f"/projects/{enc(result.project)}/repository"
    converted = forge.api.get_or_none(f"{where}/branches/{enc(branch)}", what=f"read branch {branch}",
                                      study=study_uid)
    if converted is None:
        ledger.transition(study_uid, State.FAILED, details=details, counts={"pipeline_id": result.id},
                          error=f"conversion {result.summary()}, but {branch} does not exist")
        return State.FAILED
    commit = converted["commit"]["id"]
    ledger.transition(study_uid, State.CONVERTED, counts={"pipeline_id": result.id, "commit": commit},
                      details={**details, "branch": branch})
    ledger.transition(study_uid, State.VALIDATED, counts={"pipeline_id": result.id}, details=details)
    base = forge.api.get_or_none(f"{where}/merge_base", what=f"compare {branch} with dev", study=study_uid,
                                 **{"refs[]": ["dev", branch]})
    if base is None or base.get("id") != commit:
        return State.VALIDATED  # awaits a review (auto-merge off, or a manual job)
    merge_commit = forge.api.get(f"{where}/branches/dev", what="read branch dev", study=study_uid)["commit"]["id"]
    ledger.transition(study_uid, State.MERGED, counts={"merge_commit": merge_commit},
                      details={"merge_commit": merge_commit})
    return State.MERGED
