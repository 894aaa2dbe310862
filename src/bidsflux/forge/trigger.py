"""The study superdataset's job (``ci-pipelines/study.yml``): start the bids pipeline per new session.

A push to the superdataset's ``main`` registers or updates sessions (their
gitlinks).  For each session whose gitlink the push changed, the conversion
pipeline of ``<group>/bids`` starts on ``dev`` with the session's variables:

- on GitLab, through the pipeline trigger API with the job's own
  ``CI_JOB_TOKEN``, so GitLab links it as this pipeline's downstream (the
  BIDS project must allow the study project in its job token allowlist);
- on the local forge, by running the bids pipeline with the local runner.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._proc import git
from ..errors import ForgeError
from ..settings import Settings
from ._gitlab import enc

_ZERO = "0" * 40
_REGISTER = re.compile(r"^\[bids-flux\] Register session (\S+)")


@dataclass
class TriggerOutcome:
    sessions: list[dict[str, str]] = field(default_factory=list)
    pipelines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.get("status") in ("created", "success", "pending", "running") for p in self.pipelines)

    def summary(self) -> str:
        if not self.sessions:
            return "the push registered no session"
        return "; ".join(f"{p['session']}: {p['status']}" for p in self.pipelines)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")


def changed_sessions(dataset: Path, before: str | None, after: str) -> dict[str, str]:
    """{session path: its new gitlink commit} for the sessions ``before..after`` added or moved."""
    if not before or before == _ZERO:
        listing = git("ls-tree", "-r", after, cwd=dataset, error=ForgeError)
        return {line.split("\t", 1)[1]: line.split()[2] for line in listing.splitlines() if line.startswith("160000")}
    raw = git("diff", "--raw", "--no-renames", before, after, cwd=dataset, error=ForgeError)
    found = {}
    for line in raw.splitlines():
        meta, _, path = line.partition("\t")
        fields = meta.split()
        if len(fields) >= 5 and fields[1] == "160000" and fields[4] in ("A", "M"):
            found[path] = fields[3]
    return found


def study_uid_of(dataset: Path, after: str, session: str) -> str:
    """The StudyInstanceUID the registering commit names (bids-flux writes it), else the session path."""
    subject = git("log", "-1", "--format=%s", after, "--", session, cwd=dataset, error=ForgeError)
    match = _REGISTER.match(subject)
    return match.group(1) if match else session


def default_bids_url(dataset: Path) -> str:
    """The BIDS dataset beside the superdataset: ``<group>/bids`` for ``<group>/sourcedata/dicoms/study``."""
    suffix = "/sourcedata/dicoms/study"
    server, project = os.environ.get("CI_SERVER_URL"), os.environ.get("CI_PROJECT_PATH", "")
    if server and project.endswith(suffix):
        url = f"{server.rstrip('/')}/{project}.git"
    else:
        parts = urllib.parse.urlsplit(git("remote", "get-url", "origin", cwd=dataset, error=ForgeError))
        # A runner's origin carries its job token as user info: never keep it.
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if not url.removesuffix(".git").endswith(suffix):
        raise ForgeError("the checkout is not a study superdataset (…/sourcedata/dicoms/study)",
                         hint="give --bids-url")
    return url.removesuffix(".git")[: -len(suffix)] + "/bids.git"


def trigger_sessions(settings: Settings, dataset: Path, *, before: str | None, after: str,
                     bids_url: str | None) -> TriggerOutcome:
    outcome = TriggerOutcome()
    sessions = changed_sessions(dataset, before, after)
    if not sessions:
        print("[trigger] the push registered no session", flush=True)
        return outcome
    bids_url = bids_url or default_bids_url(dataset)
    head = git("rev-parse", after, cwd=dataset, error=ForgeError)
    for session, commit in sorted(sessions.items()):
        study = study_uid_of(dataset, after, session)
        variables = {"BIDSFLUX_PIPELINE": "convert", "BIDSFLUX_STUDY_UID": study, "BIDSFLUX_SESSION": session,
                     "BIDSFLUX_SESSION_COMMIT": commit, "BIDSFLUX_STUDY_COMMIT": head, "BIDSFLUX_BIDS_URL": bids_url}
        outcome.sessions.append(variables)
        print(f"[trigger] session {session} (study {study}): bids pipeline on dev", flush=True)
        if settings.forge_type == "gitlab":
            started = _gitlab_trigger(bids_url, variables, study=study)
            outcome.pipelines.append({"session": session, "status": started.get("status", "created"),
                                      "id": started.get("id"), "web_url": started.get("web_url")})
        else:
            outcome.pipelines.append({"session": session, **_local_run(settings, variables, study=study)})
    return outcome


def _gitlab_trigger(bids_url: str, variables: dict[str, str], *, study: str) -> dict[str, Any]:
    api = os.environ.get("CI_API_V4_URL")
    token = os.environ.get("CI_JOB_TOKEN")
    if not api or not token:
        raise ForgeError("starting the bids pipeline needs CI_API_V4_URL and CI_JOB_TOKEN (run it as a CI job)",
                         study=study)
    project = urllib.parse.urlparse(bids_url).path.strip("/").removesuffix(".git")
    form = {"token": token, "ref": "dev", **{f"variables[{k}]": v for k, v in variables.items()}}
    request = urllib.request.Request(f"{api.rstrip('/')}/projects/{enc(project)}/trigger/pipeline",
                                     data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        raise ForgeError(f"GitLab refused to start the pipeline of {project}: HTTP {exc.code}", study=study,
                         hint="add the study project to the BIDS project's CI job token allowlist") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ForgeError(f"GitLab is unreachable: {exc}", study=study, transient=True) from None


def _local_run(settings: Settings, variables: dict[str, str], *, study: str) -> dict[str, Any]:
    from ..runner import run_pipeline

    token = os.environ.get("BIDSFLUX_FORGE_TOKEN", "")
    run = run_pipeline(settings, token, "bids", variables, study=study, on_line=lambda line: print(line, flush=True))
    return {"status": "success" if run.ok else "failed", "jobs": run.status}
