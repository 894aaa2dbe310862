"""Projects (plain or from custom templates), branches, protected branches, pipelines and jobs."""

from __future__ import annotations

import re
from typing import Any

from .api import READ, ROUTER, WRITE, ApiError, Ctx, Response, bad_request, forbidden, missing, not_found, paginate
from .model import DEVELOPER, MAINTAINER, REPORTER, Group, Project, Protection
from .routes_groups import VISIBILITY, path_problem
from .views import job_view, pipeline_view, project_view, protection_view, variable_view

ACCESS_LEVELS = {0, 30, 40, 60}
_KEY = re.compile(r"^[A-Za-z0-9_]{1,255}$")


def visible_project(ctx: Ctx, ref: str, level: int = 0) -> Project:
    project = ctx.state.project_by_ref(ref)
    if project is None or not ctx.state.can_see_project(ctx.me, project):
        raise not_found("Project")
    if level and ctx.state.project_level(ctx.me, project) < level:
        raise forbidden()
    return project


def _template(ctx: Ctx, namespace: Group) -> Project | None:
    """The template project asked for, checked as GitLab's CreateFromTemplateService does."""
    if not ctx.boolean("use_custom_template", False):
        if ctx.arg("template_name") or ctx.arg("template_project_id"):
            raise bad_request({"template_name": ["is unknown or invalid (no built-in templates in this double)"]})
        return None
    source_id = ctx.integer("group_with_project_templates_id")
    if source_id is not None:
        configured = any(g.custom_project_templates_group_id == source_id for g in ctx.state.groups.values())
        source = ctx.state.groups.get(source_id) if configured else None
    else:
        instance = ctx.state.settings.get("custom_project_templates_group_id")
        source = ctx.state.groups.get(instance) if instance is not None else None
    wanted_id, wanted_name = ctx.integer("template_project_id"), ctx.arg("template_name")
    if wanted_id is None and not wanted_name:
        raise missing("template_name", "template_project_id")
    candidates = [p for p in ctx.state.projects.values() if source is not None and p.namespace_id == source.id
                  and ctx.state.can_see_project(ctx.me, p)]
    template = next((p for p in candidates if (wanted_id is not None and p.id == wanted_id)
                     or (wanted_id is None and p.path == wanted_name)), None)
    if template is None:
        raise bad_request({"template_name": [f"'{wanted_name or wanted_id}' is unknown or invalid"]})
    if source_id is not None and source is not None:
        owner = ctx.state.groups[source.parent_id] if source.parent_id is not None else source
        if owner not in ctx.state.ancestors(namespace):
            raise bad_request({"namespace": ["is out of the hierarchy of the Group owning the template"]})
    return template


@ROUTER.route("POST", "/projects", WRITE)
def create_project(ctx: Ctx) -> Any:
    name, path = ctx.arg("name"), ctx.arg("path")
    if not name and not path:
        raise missing("name", "path")
    path, name = str(path or name), str(name or path)
    ns_id = ctx.integer("namespace_id")
    if ns_id is None:
        raise bad_request("namespace_id: personal namespaces are not modelled by this double")
    group = ctx.state.groups.get(ns_id)
    if group is None or not ctx.state.can_see_group(ctx.me, group):
        raise not_found("Namespace")
    if ctx.state.group_level(ctx.me, group) < DEVELOPER:
        raise forbidden()
    visibility = str(ctx.arg("visibility") or "private")
    if visibility not in VISIBILITY:
        raise ApiError(400, {"error": "visibility does not have a valid value"})
    errors: dict[str, list[str]] = {}
    problem = path_problem(path, top_level=False)
    if problem:
        errors["path"] = [problem]
    if any(p.namespace_id == ns_id and p.path.lower() == path.lower() for p in ctx.state.projects.values()):
        errors["name"] = ["has already been taken"]
        errors["path"] = ["has already been taken"]
    if VISIBILITY.index(visibility) > VISIBILITY.index(group.visibility):
        errors["visibility_level"] = [f"{visibility} is not allowed in a {group.visibility} group."]
    if errors:
        raise bad_request(errors)
    template = _template(ctx, group)
    project = Project(ctx.state.next_id(), name, path, ns_id, visibility)
    ctx.state.projects[project.id] = project
    ctx.double.init_repo(project, template)
    return Response(201, project_view(ctx.state, project, ctx.base_url))


@ROUTER.route("GET", "/projects/{pid}", READ)
def get_project(ctx: Ctx, pid: str) -> Any:
    return project_view(ctx.state, visible_project(ctx, pid), ctx.base_url)


@ROUTER.route("PUT", "/projects/{pid}", WRITE)
def update_project(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, MAINTAINER)
    branch = ctx.arg("default_branch")
    if branch is not None:
        if str(branch) not in ctx.double.branches(project):
            raise bad_request({"base": [f"Could not change HEAD: branch '{branch}' does not exist"]})
        ctx.double.set_head(project, str(branch))
    return project_view(ctx.state, project, ctx.base_url)


@ROUTER.route("GET", "/projects/{pid}/repository/branches", READ)
def list_branches(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    return paginate(ctx, [_branch(ctx, project, name, sha) for name, sha in ctx.double.branches(project).items()])


@ROUTER.route("GET", "/projects/{pid}/repository/branches/{branch}", READ)
def get_branch(ctx: Ctx, pid: str, branch: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    sha = ctx.double.branches(project).get(branch)
    if sha is None:
        raise not_found("Branch")
    return _branch(ctx, project, branch, sha)


@ROUTER.route("GET", "/projects/{pid}/repository/merge_base", READ)
def merge_base(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    refs = ctx.arg("refs") or []
    refs = [refs] if isinstance(refs, str) else list(refs)
    if len(refs) < 2:
        raise bad_request("Provide at least 2 refs")
    sha = ctx.double.merge_base(project, refs)
    if sha is None:
        raise bad_request(f"Could not find merge base for {refs}")
    return {"id": sha, "short_id": sha[:8]}


def _branch(ctx: Ctx, project: Project, name: str, sha: str) -> dict[str, Any]:
    return {"name": name, "commit": {"id": sha, "short_id": sha[:8]}, "default": name == project.default_branch,
            "protected": ctx.double.protection_for(project, name) is not None, "merged": False}


# -- protected branches
@ROUTER.route("GET", "/projects/{pid}/protected_branches", READ)
def list_protected(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, DEVELOPER)
    return paginate(ctx, [protection_view(r) for r in project.protected.values()])


@ROUTER.route("GET", "/projects/{pid}/protected_branches/{name}", READ)
def get_protected(ctx: Ctx, pid: str, name: str) -> Any:
    project = visible_project(ctx, pid, DEVELOPER)
    if name not in project.protected:
        raise not_found()
    return protection_view(project.protected[name])


@ROUTER.route("POST", "/projects/{pid}/protected_branches", WRITE)
def protect(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, MAINTAINER)
    name = str(ctx.require("name")[0])
    levels: dict[str, int] = {}
    for key in ("push_access_level", "merge_access_level", "unprotect_access_level"):
        level = ctx.integer(key, MAINTAINER)
        if level not in ACCESS_LEVELS:
            raise ApiError(400, {"error": f"{key} does not have a valid value"})
        levels[key] = int(level)
    if name in project.protected:
        raise ApiError(409, {"message": f"Protected branch '{name}' already exists"})
    rule = Protection(ctx.state.next_id(), name, levels["push_access_level"], levels["merge_access_level"],
                      levels["unprotect_access_level"], bool(ctx.boolean("allow_force_push", False)))
    project.protected[name] = rule
    return Response(201, protection_view(rule))


@ROUTER.route("PATCH", "/projects/{pid}/protected_branches/{name}", WRITE)
def update_protected(ctx: Ctx, pid: str, name: str) -> Any:
    """GitLab 15.6+: change a protection in place (only ``allow_force_push`` is modelled)."""
    project = visible_project(ctx, pid, MAINTAINER)
    if name not in project.protected:
        raise not_found()
    rule = project.protected[name]
    force = ctx.boolean("allow_force_push", None)
    if force is not None:
        rule.allow_force_push = bool(force)
    return protection_view(rule)


@ROUTER.route("DELETE", "/projects/{pid}/protected_branches/{name}", WRITE)
def unprotect(ctx: Ctx, pid: str, name: str) -> Any:
    project = visible_project(ctx, pid, MAINTAINER)
    if project.protected.pop(name, None) is None:
        raise not_found()
    return Response(204, None)


# -- pipelines
@ROUTER.route("POST", "/projects/{pid}/pipeline", WRITE)
def create_pipeline(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, DEVELOPER)
    ref = str(ctx.require("ref")[0])
    sha = ctx.double.branches(project).get(ref)
    if sha is None:
        raise bad_request({"base": ["Reference not found"]})
    rule = ctx.double.protection_for(project, ref)
    level = ctx.state.project_level(ctx.me, project)
    if rule is not None and level < min(rule.push_access_level or 99, rule.merge_access_level or 99):
        raise bad_request({"base": [f"You do not have sufficient permission to run a pipeline on '{ref}'."]})
    variables = ctx.arg("variables") or []
    if not isinstance(variables, list) or any(not isinstance(v, dict) or not _KEY.match(str(v.get("key", "")))
                                              for v in variables):
        raise ApiError(400, {"error": "variables is invalid"})
    pipeline = ctx.double.start_pipeline(project, ref, sha, "api", ctx.me,
                                         [{"key": str(v["key"]), "value": str(v.get("value", "")),
                                           "variable_type": str(v.get("variable_type", "env_var"))}
                                          for v in variables])
    if pipeline is None:
        raise bad_request({"base": ["Missing CI config file"]})
    return Response(201, pipeline_view(ctx.state, pipeline, ctx.base_url))


@ROUTER.route("GET", "/projects/{pid}/pipelines", READ)
def list_pipelines(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    found = list(project.pipelines)
    for key in ("ref", "status", "source", "sha"):
        wanted = ctx.arg(key)
        if wanted:
            found = [p for p in found if getattr(p, key) == wanted]
    found.sort(key=lambda p: p.id, reverse=(ctx.arg("sort") or "desc") == "desc")
    return paginate(ctx, [pipeline_view(ctx.state, p, ctx.base_url) for p in found])


def _pipeline(ctx: Ctx, pid: str, plid: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    pipeline = next((p for p in project.pipelines if str(p.id) == plid), None)
    if pipeline is None:
        raise not_found()
    return pipeline


@ROUTER.route("GET", "/projects/{pid}/pipelines/{plid}", READ)
def get_pipeline(ctx: Ctx, pid: str, plid: str) -> Any:
    pipeline = _pipeline(ctx, pid, plid)
    if pipeline.script:  # a test's scripted progress: one step per read
        pipeline.set_status(pipeline.script.pop(0))
    return pipeline_view(ctx.state, pipeline, ctx.base_url)


@ROUTER.route("GET", "/projects/{pid}/pipelines/{plid}/variables", READ)
def pipeline_variables(ctx: Ctx, pid: str, plid: str) -> Any:
    pipeline = _pipeline(ctx, pid, plid)
    return paginate(ctx, [{"key": v["key"], "value": v["value"], "variable_type": v["variable_type"]}
                          for v in pipeline.variables])


@ROUTER.route("GET", "/projects/{pid}/pipelines/{plid}/jobs", READ)
def pipeline_jobs(ctx: Ctx, pid: str, plid: str) -> Any:
    pipeline = _pipeline(ctx, pid, plid)
    return paginate(ctx, [job_view(ctx.state, pipeline, job, ctx.base_url) for job in pipeline.jobs])


@ROUTER.route("GET", "/projects/{pid}/variables", READ)
def project_variables(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, MAINTAINER)
    return paginate(ctx, [variable_view(v) for v in project.variables.values()])
