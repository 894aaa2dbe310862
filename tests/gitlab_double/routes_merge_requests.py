"""Merge requests and their notes, read (and commented on) through the REST API.

They are opened by pushes with push options (:mod:`.merge_requests`), not by
``POST /projects/:id/merge_requests``, which the double does not model.
"""

from __future__ import annotations

from typing import Any

from .api import READ, ROUTER, WRITE, ApiError, Ctx, Response, invalid, missing, not_found, paginate
from .model import REPORTER, MergeRequest, Note
from .routes_projects import visible_project
from .views import merge_request_view, note_view

STATES = {"opened", "closed", "locked", "merged", "all"}


def _merge_request(ctx: Ctx, pid: str, iid: str) -> MergeRequest:
    project = visible_project(ctx, pid, REPORTER)
    if not iid.isdigit():
        raise invalid("merge_request_iid")
    found = next((mr for mr in project.merge_requests if mr.iid == int(iid)), None)
    if found is None:
        raise not_found()
    return found


def _sorted(ctx: Ctx, items: list[Any], key: str) -> list[Any]:
    sort = ctx.arg("sort") or "desc"
    if sort not in {"asc", "desc"}:
        raise ApiError(400, {"error": "sort does not have a valid value"})
    return sorted(items, key=lambda item: (getattr(item, key), item.id), reverse=sort == "desc")


@ROUTER.route("GET", "/projects/{pid}/merge_requests", READ)
def list_merge_requests(ctx: Ctx, pid: str) -> Any:
    project = visible_project(ctx, pid, REPORTER)
    state = ctx.arg("state") or "all"
    if state not in STATES:
        raise ApiError(400, {"error": "state does not have a valid value"})
    found = [mr for mr in project.merge_requests if state == "all" or mr.state == state]
    for key in ("source_branch", "target_branch"):
        wanted = ctx.arg(key)
        if wanted:
            found = [mr for mr in found if getattr(mr, key) == wanted]
    return paginate(ctx, [merge_request_view(ctx.state, mr, ctx.base_url) for mr in _sorted(ctx, found, "created_at")])


@ROUTER.route("GET", "/projects/{pid}/merge_requests/{iid}", READ)
def get_merge_request(ctx: Ctx, pid: str, iid: str) -> Any:
    return merge_request_view(ctx.state, _merge_request(ctx, pid, iid), ctx.base_url)


@ROUTER.route("GET", "/projects/{pid}/merge_requests/{iid}/notes", READ)
def list_notes(ctx: Ctx, pid: str, iid: str) -> Any:
    mr = _merge_request(ctx, pid, iid)
    return paginate(ctx, [note_view(ctx.state, mr, n, ctx.base_url) for n in _sorted(ctx, mr.notes, "created_at")])


@ROUTER.route("POST", "/projects/{pid}/merge_requests/{iid}/notes", WRITE)
def create_note(ctx: Ctx, pid: str, iid: str) -> Any:
    mr = _merge_request(ctx, pid, iid)
    body = ctx.arg("body")
    if body is None:
        raise missing("body")
    if not str(body).strip():
        raise ApiError(400, {"message": {"note": ["can't be blank"]}})
    note = Note(ctx.state.next_id(), str(body), ctx.me.id)
    mr.notes.append(note)
    mr.touch()
    return Response(201, note_view(ctx.state, mr, note, ctx.base_url))
