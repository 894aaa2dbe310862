"""How the double's records look on the wire (the fields of GitLab's REST entities that matter)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .model import (LEVEL_NAMES, Group, Job, MergeRequest, Note, Pipeline, Project, Protection, Runner, State, Token,
                    User, Variable)


def user_view(user: User, base: str, *, full: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": user.id, "username": user.username, "name": user.name, "state": user.state,
                            "locked": False, "avatar_url": None, "web_url": f"{base}/{user.username}"}
    if full:
        data.update({"email": user.email, "is_admin": user.is_admin, "can_create_group": user.can_create_group,
                     "projects_limit": user.projects_limit, "created_at": user.created_at, "bot": False})
    return data


def member_view(user: User, level: int, base: str) -> dict[str, Any]:
    return {**user_view(user, base), "access_level": level, "expires_at": None}


def token_view(token: Token, *, with_token: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": token.id, "name": token.name, "revoked": token.revoked,
                            "created_at": token.created_at, "scopes": list(token.scopes), "user_id": token.user_id,
                            "active": token.active, "expires_at": token.expires_at, "last_used_at": None,
                            "description": None}
    if with_token:
        data["token"] = token.token
    return data


def group_view(state: State, group: Group, base: str) -> dict[str, Any]:
    full_path = state.group_full_path(group)
    return {"id": group.id, "name": group.name, "path": group.path, "full_path": full_path,
            "full_name": " / ".join(g.name for g in reversed(state.ancestors(group))),
            "parent_id": group.parent_id, "visibility": group.visibility, "description": group.description,
            "web_url": f"{base}/groups/{full_path}", "created_at": group.created_at,
            "custom_project_templates_group_id": group.custom_project_templates_group_id}


def project_view(state: State, project: Project, base: str) -> dict[str, Any]:
    group = state.groups[project.namespace_id]
    full = state.project_full_path(project)
    host = urlsplit(base).hostname
    return {"id": project.id, "name": project.name, "path": project.path, "path_with_namespace": full,
            "name_with_namespace": f"{group_view(state, group, base)['full_name']} / {project.name}",
            "namespace": {"id": group.id, "name": group.name, "path": group.path, "kind": "group",
                          "full_path": state.group_full_path(group), "parent_id": group.parent_id},
            "visibility": project.visibility, "default_branch": project.default_branch,
            "empty_repo": project.default_branch is None, "created_at": project.created_at,
            "http_url_to_repo": f"{base}/{full}.git", "ssh_url_to_repo": f"git@{host}:{full}.git",
            "web_url": f"{base}/{full}", "archived": False}


def variable_view(var: Variable) -> dict[str, Any]:
    return {"key": var.key, "value": var.value, "variable_type": var.variable_type, "protected": var.protected,
            "masked": var.masked, "raw": var.raw, "environment_scope": var.environment_scope,
            "description": var.description}


def _levels(level: int) -> list[dict[str, Any]]:
    return [{"id": level, "access_level": level, "access_level_description": LEVEL_NAMES.get(level, str(level)),
             "user_id": None, "group_id": None}]


def protection_view(rule: Protection) -> dict[str, Any]:
    return {"id": rule.id, "name": rule.name, "push_access_levels": _levels(rule.push_access_level),
            "merge_access_levels": _levels(rule.merge_access_level),
            "unprotect_access_levels": _levels(rule.unprotect_access_level),
            "allow_force_push": rule.allow_force_push, "code_owner_approval_required": False}


def pipeline_view(state: State, pipeline: Pipeline, base: str) -> dict[str, Any]:
    project = state.projects[pipeline.project_id]
    user = state.users[pipeline.user_id]
    return {"id": pipeline.id, "iid": pipeline.iid, "project_id": pipeline.project_id, "sha": pipeline.sha,
            "ref": pipeline.ref, "status": pipeline.status, "source": pipeline.source,
            "created_at": pipeline.created_at, "updated_at": pipeline.updated_at,
            "finished_at": pipeline.finished_at, "tag": False, "yaml_errors": None,
            "user": user_view(user, base),
            "web_url": f"{base}/{state.project_full_path(project)}/-/pipelines/{pipeline.id}"}


def job_view(state: State, pipeline: Pipeline, job: Job, base: str) -> dict[str, Any]:
    project = state.projects[pipeline.project_id]
    return {"id": job.id, "name": job.name, "stage": job.stage, "status": job.status, "ref": pipeline.ref,
            "pipeline": {"id": pipeline.id, "project_id": pipeline.project_id, "ref": pipeline.ref,
                         "sha": pipeline.sha, "status": pipeline.status},
            "web_url": f"{base}/{state.project_full_path(project)}/-/jobs/{job.id}"}


def runner_view(runner: Runner, *, full: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"id": runner.id, "description": runner.description, "ip_address": None,
                            "active": not runner.paused, "paused": runner.paused,
                            "is_shared": runner.runner_type == "instance_type", "runner_type": runner.runner_type,
                            "name": None, "online": False, "status": "never_contacted"}
    if full:
        data.update({"tag_list": list(runner.tag_list), "run_untagged": runner.run_untagged,
                     "locked": runner.locked, "access_level": runner.access_level,
                     "maximum_timeout": runner.maximum_timeout, "contacted_at": None, "projects": [], "groups": []})
    return data


def merge_request_view(state: State, mr: MergeRequest, base: str) -> dict[str, Any]:
    project = state.projects[mr.project_id]
    full = state.project_full_path(project)
    author = user_view(state.users[mr.author_id], base)
    return {"id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title,
            "description": mr.description, "state": mr.state, "created_at": mr.created_at,
            "updated_at": mr.updated_at, "merged_by": None, "merge_user": None, "merged_at": mr.merged_at,
            "closed_by": None, "closed_at": mr.closed_at, "target_branch": mr.target_branch,
            "source_branch": mr.source_branch, "user_notes_count": sum(not n.system for n in mr.notes),
            "author": author, "assignees": [author], "assignee": author, "reviewers": [],
            "source_project_id": mr.project_id, "target_project_id": mr.project_id, "labels": [], "draft": False,
            "work_in_progress": False, "merge_when_pipeline_succeeds": False,
            "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable" if mr.state == "opened" else "not_open",
            "sha": mr.sha, "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": None,
            "should_remove_source_branch": None, "force_remove_source_branch": mr.force_remove_source_branch,
            "squash": False, "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}",
                                            "full": f"{full}!{mr.iid}"},
            "web_url": f"{base}/{full}/-/merge_requests/{mr.iid}"}


def note_view(state: State, mr: MergeRequest, note: Note, base: str) -> dict[str, Any]:
    return {"id": note.id, "type": None, "body": note.body, "author": user_view(state.users[note.author_id], base),
            "created_at": note.created_at, "updated_at": note.created_at, "system": note.system,
            "noteable_id": mr.id, "noteable_type": "MergeRequest", "noteable_iid": mr.iid,
            "project_id": mr.project_id, "resolvable": False, "confidential": False, "internal": False}
