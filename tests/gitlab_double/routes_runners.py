"""Runners as GitLab 16+ makes them: ``POST /user/runners`` returns a ``glrt-`` authentication token.

The deprecated registration-token flow (``POST /runners`` with a registration
token) is deliberately absent: a client that still uses it gets a 404/405.
"""

from __future__ import annotations

import secrets
from typing import Any

from .api import (CREATE_RUNNER, NO_AUTH, READ, ROUTER, WRITE, ApiError, Ctx, Response, forbidden, not_found,
                  paginate)
from .model import MAINTAINER, OWNER, Runner
from .views import runner_view

TYPES = {"instance_type", "group_type", "project_type"}


def _tags(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(t).strip() for t in items if str(t).strip()]


def _apply(ctx: Ctx, runner: Runner) -> None:
    if ctx.arg("tag_list") is not None:
        runner.tag_list = _tags(ctx.arg("tag_list"))
    runner.run_untagged = bool(ctx.boolean("run_untagged", runner.run_untagged))
    runner.locked = bool(ctx.boolean("locked", runner.locked))
    runner.paused = bool(ctx.boolean("paused", runner.paused))
    runner.description = str(ctx.arg("description", runner.description) or "")
    runner.maximum_timeout = ctx.integer("maximum_timeout", runner.maximum_timeout)
    access = str(ctx.arg("access_level") or runner.access_level)
    if access not in {"not_protected", "ref_protected"}:
        raise ApiError(400, {"error": "access_level does not have a valid value"})
    runner.access_level = access
    if not runner.tag_list and not runner.run_untagged:
        raise ApiError(400, {"message": {"tags_list": ["can not be empty when runner is not allowed to pick "
                                                       "untagged jobs"]}})


@ROUTER.route("POST", "/user/runners", CREATE_RUNNER)
def create_runner(ctx: Ctx) -> Any:
    kind = str(ctx.require("runner_type")[0])
    if kind not in TYPES:
        raise ApiError(400, {"error": "runner_type does not have a valid value"})
    group_id = project_id = None
    if kind == "instance_type" and not ctx.me.is_admin:
        raise forbidden()
    if kind == "group_type":
        ctx.require("group_id")
        group_id = ctx.integer("group_id")
        group = ctx.state.groups.get(group_id or -1)
        if group is None or ctx.state.group_level(ctx.me, group) < OWNER:
            raise forbidden()
    if kind == "project_type":
        ctx.require("project_id")
        project_id = ctx.integer("project_id")
        project = ctx.state.projects.get(project_id or -1)
        if project is None or ctx.state.project_level(ctx.me, project) < MAINTAINER:
            raise forbidden()
    runner = Runner(ctx.state.next_id(), kind, "", [], True, False, False, "not_protected", None,
                    "glrt-" + secrets.token_urlsafe(15), group_id, project_id)
    _apply(ctx, runner)
    ctx.state.runners[runner.id] = runner
    return Response(201, {"id": runner.id, "token": runner.token, "token_expires_at": None})


@ROUTER.route("GET", "/runners/all", READ)
def all_runners(ctx: Ctx) -> Any:
    ctx.require_admin()
    found = sorted(ctx.state.runners.values(), key=lambda r: r.id)
    kind = ctx.arg("type")
    if kind:
        found = [r for r in found if r.runner_type == kind]
    tags = _tags(ctx.arg("tag_list"))
    if tags:
        found = [r for r in found if set(tags) <= set(r.tag_list)]
    return paginate(ctx, [runner_view(r) for r in found])


def _runner(ctx: Ctx, rid: str) -> Runner:
    runner = ctx.state.runners.get(int(rid)) if rid.isdigit() else None
    if runner is None:
        raise not_found("Runner")
    if not ctx.me.is_admin:
        raise forbidden()
    return runner


@ROUTER.route("GET", "/runners/{rid}", READ)
def get_runner(ctx: Ctx, rid: str) -> Any:
    return runner_view(_runner(ctx, rid), full=True)


@ROUTER.route("PUT", "/runners/{rid}", WRITE)
def update_runner(ctx: Ctx, rid: str) -> Any:
    runner = _runner(ctx, rid)
    _apply(ctx, runner)
    return runner_view(runner, full=True)


@ROUTER.route("DELETE", "/runners/{rid}", WRITE)
def delete_runner(ctx: Ctx, rid: str) -> Any:
    runner = _runner(ctx, rid)
    del ctx.state.runners[runner.id]
    return Response(204, None)


@ROUTER.route("POST", "/runners/{rid}/reset_authentication_token", WRITE)
def reset_token(ctx: Ctx, rid: str) -> Any:
    runner = _runner(ctx, rid)
    runner.token = "glrt-" + secrets.token_urlsafe(15)
    return Response(201, {"token": runner.token, "token_expires_at": None})


@ROUTER.route("POST", "/runners/verify", NO_AUTH)
def verify(ctx: Ctx) -> Any:
    token = str(ctx.require("token")[0])
    runner = next((r for r in ctx.state.runners.values() if r.token == token), None)
    if runner is None:
        raise forbidden()
    return {"id": runner.id, "token": runner.token, "token_expires_at": None}
