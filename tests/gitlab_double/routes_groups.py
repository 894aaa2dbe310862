"""Groups (nested), their members and CI/CD variables, and instance CI/CD variables."""

from __future__ import annotations

import re
from typing import Any

from .api import READ, ROUTER, WRITE, ApiError, Ctx, Response, bad_request, forbidden, not_found, paginate
from .model import MAINTAINER, OWNER, RESERVED_TOP_LEVEL, Group, Variable
from .views import group_view, member_view, project_view, variable_view

PATH_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?$")
PATH_RULE = ("can contain only letters, digits, '_', '-' and '.'. Cannot start with '-', end in '.git' or "
             "end in '.atom'")
_KEY = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_MASKABLE = re.compile(r"^[A-Za-z0-9+/=@:.~_-]{8,}$")
VISIBILITY = ["private", "internal", "public"]
LEVELS = {10, 20, 30, 40, 50}


def path_problem(path: str, *, top_level: bool) -> str | None:
    """GitLab's complaint about a namespace or project path, or None."""
    if not PATH_RE.match(path) or path.lower().endswith((".git", ".atom")):
        return PATH_RULE
    if top_level and path.lower() in RESERVED_TOP_LEVEL:
        return f"{path} is a reserved name"
    return None


def visible_group(ctx: Ctx, ref: str) -> Group:
    group = ctx.state.group_by_ref(ref)
    if group is None or not ctx.state.can_see_group(ctx.me, group):
        raise not_found("Group")
    return group


def _at_least(ctx: Ctx, group: Group, level: int) -> None:
    if ctx.state.group_level(ctx.me, group) < level:
        raise forbidden()


@ROUTER.route("GET", "/groups", READ)
def list_groups(ctx: Ctx) -> Any:
    groups = [g for g in sorted(ctx.state.groups.values(), key=lambda g: g.id)
              if ctx.state.can_see_group(ctx.me, g)]
    search = str(ctx.arg("search") or "").lower()
    if search:
        groups = [g for g in groups if search in g.path.lower() or search in g.name.lower()]
    return paginate(ctx, [group_view(ctx.state, g, ctx.base_url) for g in groups])


@ROUTER.route("POST", "/groups", WRITE)
def create_group(ctx: Ctx) -> Any:
    name, path = ctx.require("name", "path")
    name, path = str(name), str(path)
    parent_id = ctx.integer("parent_id")
    visibility = str(ctx.arg("visibility") or "private")
    if visibility not in VISIBILITY:
        raise ApiError(400, {"error": "visibility does not have a valid value"})
    parent = None
    if parent_id is None:
        if not (ctx.me.is_admin or ctx.me.can_create_group):
            raise forbidden()
    else:
        parent = ctx.state.groups.get(parent_id)
        if parent is None or not ctx.state.can_see_group(ctx.me, parent):
            raise not_found("Parent Group")
        _at_least(ctx, parent, MAINTAINER)
    errors: dict[str, list[str]] = {}
    problem = path_problem(path, top_level=parent is None)
    if problem:
        errors["path"] = [problem]
    siblings = [g for g in ctx.state.groups.values() if g.parent_id == parent_id]
    if any(g.path.lower() == path.lower() for g in siblings):
        errors["path"] = ["has already been taken"]
    if parent is not None and VISIBILITY.index(visibility) > VISIBILITY.index(parent.visibility):
        errors["visibility_level"] = [f"{visibility} is not allowed since the parent group has a "
                                      f"{parent.visibility} visibility."]
    if errors:
        shown = ", ".join(f":{key}=>{value!r}".replace("'", '"') for key, value in errors.items())
        raise bad_request(f"Failed to save group {{{shown}}}")
    group = Group(ctx.state.next_id(), name, path, parent_id, visibility, str(ctx.arg("description") or ""))
    group.members[ctx.me.id] = OWNER  # GitLab makes the creator the owner of the new group
    ctx.state.groups[group.id] = group
    return Response(201, group_view(ctx.state, group, ctx.base_url))


@ROUTER.route("GET", "/groups/{gid}", READ)
def get_group(ctx: Ctx, gid: str) -> Any:
    return group_view(ctx.state, visible_group(ctx, gid), ctx.base_url)


@ROUTER.route("PUT", "/groups/{gid}", WRITE)
def update_group(ctx: Ctx, gid: str) -> Any:
    group = visible_group(ctx, gid)
    _at_least(ctx, group, OWNER)
    if "custom_project_templates_group_id" in ctx.body:
        tid = ctx.integer("custom_project_templates_group_id")
        target = ctx.state.groups.get(tid) if tid is not None else None
        if tid is not None and (target is None or target is group or group not in ctx.state.ancestors(target)):
            raise bad_request({"custom_project_templates_group_id": ["must be a subgroup of this group"]})
        group.custom_project_templates_group_id = tid
    if ctx.arg("description") is not None:
        group.description = str(ctx.arg("description"))
    return group_view(ctx.state, group, ctx.base_url)


@ROUTER.route("GET", "/groups/{gid}/subgroups", READ)
def subgroups(ctx: Ctx, gid: str) -> Any:
    group = visible_group(ctx, gid)
    found = [g for g in sorted(ctx.state.groups.values(), key=lambda g: g.id)
             if g.parent_id == group.id and ctx.state.can_see_group(ctx.me, g)]
    return paginate(ctx, [group_view(ctx.state, g, ctx.base_url) for g in found])


@ROUTER.route("GET", "/groups/{gid}/projects", READ)
def group_projects(ctx: Ctx, gid: str) -> Any:
    group = visible_group(ctx, gid)
    deep = bool(ctx.boolean("include_subgroups", False))
    found = [p for p in sorted(ctx.state.projects.values(), key=lambda p: p.id)
             if (p.namespace_id == group.id
                 or (deep and group in ctx.state.ancestors(ctx.state.groups[p.namespace_id])))
             and ctx.state.can_see_project(ctx.me, p)]
    return paginate(ctx, [project_view(ctx.state, p, ctx.base_url) for p in found])


# -- members
def _member_user(ctx: Ctx, uid: Any) -> Any:
    user = ctx.state.users.get(int(uid)) if str(uid).isdigit() else None
    if user is None:
        raise not_found("User")
    return user


@ROUTER.route("GET", "/groups/{gid}/members", READ)
def list_members(ctx: Ctx, gid: str) -> Any:
    group = visible_group(ctx, gid)
    members = [member_view(ctx.state.users[uid], level, ctx.base_url) for uid, level in sorted(group.members.items())]
    return paginate(ctx, members)


@ROUTER.route("GET", "/groups/{gid}/members/all/{uid}", READ)
def effective_member(ctx: Ctx, gid: str, uid: str) -> Any:
    group = visible_group(ctx, gid)
    user = _member_user(ctx, uid)
    level = max((g.members.get(user.id, 0) for g in ctx.state.ancestors(group)), default=0)
    if not level:
        raise not_found("Member")
    return member_view(user, level, ctx.base_url)


@ROUTER.route("GET", "/groups/{gid}/members/{uid}", READ)
def direct_member(ctx: Ctx, gid: str, uid: str) -> Any:
    group = visible_group(ctx, gid)
    user = _member_user(ctx, uid)
    if user.id not in group.members:
        raise not_found("Member")
    return member_view(user, group.members[user.id], ctx.base_url)


def _grantable(ctx: Ctx, group: Group) -> int:
    level = ctx.integer("access_level")
    if level not in LEVELS:
        raise ApiError(400, {"error": "access_level does not have a valid value"})
    mine = ctx.state.group_level(ctx.me, group)
    if mine < MAINTAINER or (level == OWNER and mine < OWNER):
        raise forbidden()
    return level


@ROUTER.route("POST", "/groups/{gid}/members", WRITE)
def add_member(ctx: Ctx, gid: str) -> Any:
    group = visible_group(ctx, gid)
    ctx.require("user_id", "access_level")
    level = _grantable(ctx, group)
    user = _member_user(ctx, ctx.arg("user_id"))
    if user.id in group.members:
        raise ApiError(409, {"message": "Member already exists"})
    group.members[user.id] = level
    return Response(201, member_view(user, level, ctx.base_url))


@ROUTER.route("PUT", "/groups/{gid}/members/{uid}", WRITE)
def change_member(ctx: Ctx, gid: str, uid: str) -> Any:
    group = visible_group(ctx, gid)
    user = _member_user(ctx, uid)
    if user.id not in group.members:
        raise not_found("Member")
    ctx.require("access_level")
    group.members[user.id] = _grantable(ctx, group)
    return member_view(user, group.members[user.id], ctx.base_url)


# -- CI/CD variables (group and instance)
def _write_variable(ctx: Ctx, store: dict[str, Variable], key: str, *, creating: bool) -> Any:
    if creating and key in store:
        raise bad_request({"key": [f"({key}) has already been taken"]})
    if not _KEY.match(key):
        raise bad_request({"key": ["can contain only letters, digits and '_'."]})
    var = store.get(key) or Variable(key, "")
    value = ctx.arg("value", None if creating else var.value)
    if value is None:
        raise ApiError(400, {"error": "value is missing"})
    masked = bool(ctx.boolean("masked", var.masked))
    if masked and not _MASKABLE.match(str(value)):
        raise bad_request({"value": ["is invalid"]})
    kind = str(ctx.arg("variable_type") or var.variable_type)
    if kind not in {"env_var", "file"}:
        raise ApiError(400, {"error": "variable_type does not have a valid value"})
    var.value, var.masked, var.variable_type = str(value), masked, kind
    var.protected = bool(ctx.boolean("protected", var.protected))
    var.raw = bool(ctx.boolean("raw", var.raw))
    var.description = ctx.arg("description", var.description)
    store[key] = var
    return Response(201 if creating else 200, variable_view(var))


def _variables_of(ctx: Ctx, gid: str) -> dict[str, Variable]:
    group = visible_group(ctx, gid)
    _at_least(ctx, group, OWNER)
    return group.variables


def _instance_variables(ctx: Ctx) -> dict[str, Variable]:
    ctx.require_admin()
    store: dict[str, Variable] = ctx.double.instance_variables
    return store


def _one(store: dict[str, Variable], key: str) -> Variable:
    if key not in store:
        raise not_found("Variable")
    return store[key]


@ROUTER.route("GET", "/groups/{gid}/variables", READ)
def group_variables(ctx: Ctx, gid: str) -> Any:
    return paginate(ctx, [variable_view(v) for v in _variables_of(ctx, gid).values()])


@ROUTER.route("POST", "/groups/{gid}/variables", WRITE)
def create_group_variable(ctx: Ctx, gid: str) -> Any:
    store = _variables_of(ctx, gid)
    return _write_variable(ctx, store, str(ctx.require("key")[0]), creating=True)


@ROUTER.route("GET", "/groups/{gid}/variables/{key}", READ)
def group_variable(ctx: Ctx, gid: str, key: str) -> Any:
    return variable_view(_one(_variables_of(ctx, gid), key))


@ROUTER.route("PUT", "/groups/{gid}/variables/{key}", WRITE)
def update_group_variable(ctx: Ctx, gid: str, key: str) -> Any:
    store = _variables_of(ctx, gid)
    _one(store, key)
    return _write_variable(ctx, store, key, creating=False)


@ROUTER.route("GET", "/admin/ci/variables", READ)
def instance_variables(ctx: Ctx) -> Any:
    return paginate(ctx, [variable_view(v) for v in _instance_variables(ctx).values()])


@ROUTER.route("POST", "/admin/ci/variables", WRITE)
def create_instance_variable(ctx: Ctx) -> Any:
    store = _instance_variables(ctx)
    return _write_variable(ctx, store, str(ctx.require("key")[0]), creating=True)


@ROUTER.route("GET", "/admin/ci/variables/{key}", READ)
def instance_variable(ctx: Ctx, key: str) -> Any:
    return variable_view(_one(_instance_variables(ctx), key))


@ROUTER.route("PUT", "/admin/ci/variables/{key}", WRITE)
def update_instance_variable(ctx: Ctx, key: str) -> Any:
    store = _instance_variables(ctx)
    _one(store, key)
    return _write_variable(ctx, store, key, creating=False)
