"""The GitLab forge: nested groups, projects from templates, the bids bot, protected branches.

Per study group (the expanded ``GITLAB_INDEXER_GROUP_TEMPLATE``) it makes sure,
idempotently and with the ``dicom_bot`` token:

- every group of the path exists (private by default), created by dicom_bot,
  which GitLab then makes their owner;
- ``bids_bot`` is a Maintainer of the study group (CI pushes conversions);
- the study group's CI/CD variables exist (created when missing, never
  overwritten: a study team may have tuned them in GitLab);
- each project of the layout exists, created from the site's project template
  for its kind when ``BIDSFLUX_GITLAB_TEMPLATE_GROUP`` is set;
- the BIDS project's ``base``, ``dev`` and ``convert/*`` are protected.

Pushes go over HTTPS with the bot's token through the credential helper, or
over SSH with a key file (``BIDSFLUX_GITLAB_PUSH=ssh``).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import NamingError, SettingsError
from ..settings import Settings
from . import Project, credential_env
from ._git import adopt_template_history, ensure_remote, ls_remote, push_refs
from ._gitlab import GitLabAPIError, GitLabClient, enc

log = logging.getLogger(__name__)

MAINTAINER = 40
# Branch protection per project kind: pushes and merges by Maintainers only
# (bids_bot, and dicom_bot as the groups' owner), with whether force pushes are
# allowed: never on base and dev; on convert/* yes, because a re-run of a
# session's conversion rebuilds its branch from dev.
PROTECTED = {"bids": (("base", False), ("dev", False), ("convert/*", True))}
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def project_kind(path: str) -> tuple[str | None, str]:
    """(kind, study group) of a project path of the layout; kind None for any other project."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[-3:-1] == ["sourcedata", "dicoms"]:
        return ("study" if parts[-1] == "study" else "session"), "/".join(parts[:-3])
    if len(parts) >= 2 and parts[-1] == "bids":
        return "bids", "/".join(parts[:-1])
    if len(parts) >= 3 and parts[-2] in {"derivatives", "qc"}:
        return parts[-2], "/".join(parts[:-2])
    return None, "/".join(parts[:-1])


def check_path(path: str, *, study: str | None) -> list[str]:
    """The path's segments, each valid as a GitLab path; NamingError (quarantine) otherwise."""
    segments = path.split("/")
    for segment in segments:
        if not _SEGMENT.match(segment) or segment.lower().endswith((".git", ".atom")) or ".." in segment:
            raise NamingError(f"{segment!r} in {path!r} is not a valid GitLab path segment", study=study)
    return segments


class GitLabForge:
    """Projects on GitLab, reached with the dicom_bot token (``GITLAB_DICOM_BOT_TOKEN``)."""

    kind = "gitlab"

    def __init__(self, settings: Settings, client: GitLabClient | None = None):
        problems = []
        if not settings.gitlab_url:
            problems.append("CI_SERVER_URL: required when BIDSFLUX_FORGE_TYPE=gitlab")
        if not settings.gitlab_dicom_bot_token:
            problems.append("GITLAB_DICOM_BOT_TOKEN: required when BIDSFLUX_FORGE_TYPE=gitlab "
                            "(`bidsflux deploy init` issues it)")
        if settings.gitlab_push == "ssh" and settings.gitlab_ssh_key is None:
            problems.append("BIDSFLUX_GITLAB_SSH_KEY: required when BIDSFLUX_GITLAB_PUSH=ssh")
        if problems:
            raise SettingsError(problems)
        assert settings.gitlab_url and settings.gitlab_dicom_bot_token
        self.settings = settings
        self.base_url = settings.gitlab_url
        self.token = settings.gitlab_dicom_bot_token
        self.api = client or GitLabClient(settings.gitlab_url, self.token, who=settings.gitlab_bot_username,
                                          retries=settings.gitlab_retries, timeout=settings.gitlab_timeout)
        self._checked = False
        self._groups: dict[str, dict[str, Any]] = {}
        self._projects: dict[str, dict[str, Any]] = {}
        self._prepared: set[str] = set()
        self._templates: dict[str, dict[str, Any]] | None = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}.git"

    def preflight(self, *, study: str | None = None) -> None:
        """Check once that the token carries the scope the forge needs (``api``)."""
        if not self._checked:
            self.api.check_scopes([("api",)], study=study)
            self._checked = True

    # -- groups
    def ensure_group(self, path: str, *, study: str | None = None) -> dict[str, Any]:
        """Every group of ``path`` (``a/b/c``), created where missing; returns the last."""
        segments = check_path(path, study=study)
        parent: dict[str, Any] | None = None
        for depth in range(1, len(segments) + 1):
            full = "/".join(segments[:depth])
            group = self._groups.get(full.lower()) or self.api.get_or_none(
                f"/groups/{enc(full)}", what=f"read group {full}", study=study)
            if group is None:
                group = self._create_group(segments[depth - 1], full, parent, study=study)
            self._groups[full.lower()] = group
            parent = group
        assert parent is not None
        return parent

    def _create_group(self, name: str, full: str, parent: dict[str, Any] | None, *,
                      study: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"name": name, "path": name, "visibility": self.settings.gitlab_visibility}
        if parent is not None:
            data["parent_id"] = parent["id"]
        try:
            group = self.api.post("/groups", data, what=f"create group {full}", study=study)
        except GitLabAPIError as exc:
            if exc.status == 400 and "taken" in str(exc):
                # Made meanwhile by another worker: use it.
                return self.api.get(f"/groups/{enc(full)}", what=f"read group {full}", study=study)
            if exc.status == 400 and "path" in str(exc):
                # GitLab refuses the name itself (a reserved word, ...): quarantine, never a default place.
                raise NamingError(f"GitLab refuses the group path {full!r}: {exc}", study=study) from exc
            raise
        log.info("created GitLab group %s", full, extra={"study_uid": study})
        return group

    def prepare_study_group(self, path: str, *, study: str | None = None) -> None:
        """bids_bot as Maintainer and the CI/CD variables, once per study group and process."""
        if path.lower() in self._prepared:
            return
        group = self.ensure_group(path, study=study)
        self._ensure_maintainer(group, self.settings.gitlab_bids_bot_username, study=study)
        wanted = {
            "BIDSFLUX_STUDY_GROUP": path,
            "BIDSFLUX_HEURISTIC": self.settings.bids_heuristic,
            "BIDSFLUX_AUTO_MERGE": "true" if self.settings.bids_auto_merge else "false",
        }
        existing = {v["key"] for v in self.api.list_all(f"/groups/{group['id']}/variables",
                                                     what=f"list the CI/CD variables of {path}", study=study)}
        for key, value in wanted.items():
            if key not in existing:
                self.api.post(f"/groups/{group['id']}/variables",
                              {"key": key, "value": value, "protected": False, "masked": False, "raw": True},
                              what=f"set CI/CD variable {key} of {path}", study=study)
        self._prepared.add(path.lower())

    def _ensure_maintainer(self, group: dict[str, Any], username: str, *, study: str | None) -> None:
        users = self.api.list_all("/users", what=f"look up user {username}", study=study, username=username)
        if not users:
            raise GitLabAPIError(f"GitLab has no user {username}", study=study,
                                 hint="run `bidsflux deploy init` to create the bots")
        uid = users[0]["id"]
        where = f"/groups/{group['id']}/members"
        member = self.api.get_or_none(f"{where}/all/{uid}", what=f"read {username}'s role", study=study)
        if member is not None and int(member.get("access_level", 0)) >= MAINTAINER:
            return
        what = f"make {username} Maintainer of {group['full_path']}"
        try:
            self.api.post(where, {"user_id": uid, "access_level": MAINTAINER}, what=what, study=study)
        except GitLabAPIError as exc:
            if exc.status != 409:
                raise
            self.api.put(f"{where}/{uid}", {"access_level": MAINTAINER}, what=what, study=study)

    # -- projects
    def ensure_project(self, path: str, *, default_branch: str = "main", study: str | None = None) -> Project:
        """The project at ``path`` (and its groups), created where missing; idempotent."""
        self.preflight(study=study)
        project = self._projects.get(path.lower())
        if project is None:
            check_path(path, study=study)
            kind, study_group = project_kind(path)
            if kind is not None and study_group:
                self.prepare_study_group(study_group, study=study)
            namespace, _, name = path.rpartition("/")
            if not namespace:
                raise NamingError(f"project {path!r} needs a group", study=study)
            group = self.ensure_group(namespace, study=study)
            project = self.api.get_or_none(f"/projects/{enc(path)}", what=f"read project {path}", study=study)
            if project is None:
                project = self._create_project(name, path, group, kind, study=study)
            for branch, force in PROTECTED.get(kind or "", ()):
                self._protect(project, branch, force, study=study)
            self._projects[path.lower()] = project
        push_url = project["ssh_url_to_repo"] if self.settings.gitlab_push == "ssh" else ""
        return Project(path, project["http_url_to_repo"], push_url)

    def _create_project(self, name: str, path: str, group: dict[str, Any], kind: str | None, *,
                        study: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"name": name, "path": name, "namespace_id": group["id"],
                                "visibility": self.settings.gitlab_visibility}
        data.update(self._template_params(kind, group, study=study))
        try:
            project = self.api.post("/projects", data, what=f"create project {path}", study=study)
        except GitLabAPIError as exc:
            if exc.status == 400 and "taken" in str(exc):
                return self.api.get(f"/projects/{enc(path)}", what=f"read project {path}", study=study)
            raise
        log.info("created GitLab project %s%s", path, " from its template" if "template_project_id" in data else "",
                 extra={"study_uid": study})
        return project

    def _template_params(self, kind: str | None, group: dict[str, Any], *, study: str | None) -> dict[str, Any]:
        """Parameters that create a project from the site's template for ``kind``, if there is one."""
        templates_path = self.settings.gitlab_template_group
        if not templates_path or kind is None:
            return {}
        if self._templates is None:
            templates_group = self.api.get(f"/groups/{enc(templates_path)}", what=f"read group {templates_path}",
                                           study=study)
            self._templates = {"": templates_group}
            for item in self.api.list_all(f"/groups/{templates_group['id']}/projects",
                                      what=f"list the project templates in {templates_path}", study=study):
                self._templates[item["path"]] = item
        template = self._templates.get(kind)
        if template is None:
            log.warning("no project template %s in %s; creating a plain project", kind, templates_path,
                        extra={"study_uid": study})
            return {}
        params: dict[str, Any] = {"use_custom_template": True, "template_project_id": template["id"]}
        owner = templates_path.rpartition("/")[0].lower()
        full = str(group["full_path"]).lower()
        if owner and (full == owner or full.startswith(owner + "/")):
            # Group-level templates serve only the hierarchy of the group that owns them;
            # elsewhere the same group must be the instance's template group.
            params["group_with_project_templates_id"] = self._templates[""]["id"]
        return params

    def _protect(self, project: dict[str, Any], branch: str, force: bool, *, study: str | None) -> None:
        where = f"/projects/{project['id']}/protected_branches"
        existing = self.api.get_or_none(f"{where}/{enc(branch)}", what=f"read protection of {branch}", study=study)
        if existing:
            if bool(existing.get("allow_force_push")) != force:  # protected by an earlier version: align it
                self.api.patch(f"{where}/{enc(branch)}", {"allow_force_push": force},
                               what=f"set force pushes on {branch} in {project['path_with_namespace']}",
                               study=study)
            return
        try:
            self.api.post(where, {"name": branch, "push_access_level": MAINTAINER,
                                  "merge_access_level": MAINTAINER, "allow_force_push": force},
                          what=f"protect {branch} in {project['path_with_namespace']}", study=study)
        except GitLabAPIError as exc:
            if exc.status != 409:  # 409: protected meanwhile, as wanted
                raise

    def set_default_branch(self, path: str, branch: str, *, study: str | None = None) -> None:
        project = self._projects.get(path.lower()) or self.api.get(
            f"/projects/{enc(path)}", what=f"read project {path}", study=study)
        if project.get("default_branch") != branch:
            project = self.api.put(f"/projects/{project['id']}", {"default_branch": branch},
                                   what=f"make {branch} the default branch of {path}", study=study)
            self._projects[path.lower()] = project

    # -- git
    def git_env(self) -> dict[str, str]:
        """How git authenticates: the token through the credential helper, or an SSH key."""
        if self.settings.gitlab_push == "ssh":
            assert self.settings.gitlab_ssh_key is not None
            command = ["ssh", "-i", str(self.settings.gitlab_ssh_key), "-o", "IdentitiesOnly=yes",
                       "-o", "BatchMode=yes"]
            if self.settings.gitlab_ssh_known_hosts is not None:
                command += ["-o", f"UserKnownHostsFile={self.settings.gitlab_ssh_known_hosts}",
                            "-o", "StrictHostKeyChecking=yes"]
            return {"GIT_SSH_COMMAND": shlex.join(command)}
        return credential_env(self.token, self.settings.gitlab_bot_username)

    def push(self, dataset: Path, project: Project, refs: Sequence[str], *, study: str | None = None,
             remote: str = "forge") -> None:
        """Push ``refs``; a new project's template commits are merged in first."""
        ensure_remote(dataset, remote, project.push_url or project.url, study=study)
        env = self.git_env()
        heads = ls_remote(remote, env, cwd=dataset, study=study)
        for ref in refs:
            adopt_template_history(dataset, remote, ref, heads.get(ref), env, study=study, what=project.path)
        push_refs(dataset, remote, refs, env, study=study, what=project.path)

    def remote_branches(self, project: Project, *, study: str | None = None) -> dict[str, str]:
        return ls_remote(project.push_url or project.url, self.git_env(), study=study)
