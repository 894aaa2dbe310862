"""Users, personal access tokens, application settings and the version, as GitLab serves them."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Any

from .api import (ANY_TOKEN, READ, ROUTER, USER_READ, WRITE, ApiError, Ctx, Response, bad_request, missing,
                  not_found, paginate)
from .model import SCOPES, Token, User
from .views import token_view, user_view

_USERNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_TOKEN_DAYS = 365


@ROUTER.route("GET", "/version", ANY_TOKEN)
def version(ctx: Ctx) -> Any:
    return {"version": "17.6.0-ee", "revision": "double"}


@ROUTER.route("GET", "/user", USER_READ)
def current_user(ctx: Ctx) -> Any:
    return user_view(ctx.me, ctx.base_url, full=True)


@ROUTER.route("GET", "/users", READ)
def list_users(ctx: Ctx) -> Any:
    users = sorted(ctx.state.users.values(), key=lambda u: u.id)
    username = ctx.arg("username")
    if username:
        users = [u for u in users if u.username.lower() == str(username).lower()]
    return paginate(ctx, [user_view(u, ctx.base_url, full=ctx.me.is_admin) for u in users])


def _user(ctx: Ctx, uid: str) -> User:
    user = ctx.state.users.get(int(uid)) if uid.isdigit() else None
    if user is None:
        raise not_found("User")
    return user


@ROUTER.route("GET", "/users/{uid}", READ)
def get_user(ctx: Ctx, uid: str) -> Any:
    return user_view(_user(ctx, uid), ctx.base_url, full=ctx.me.is_admin)


@ROUTER.route("POST", "/users", WRITE)
def create_user(ctx: Ctx) -> Any:
    ctx.require_admin()
    absent = [n for n in ("email", "name", "username") if not ctx.arg(n)]
    if absent:
        raise ApiError(400, {"error": ", ".join(f"{n} is missing" for n in absent)})
    if not any(ctx.arg(n) for n in ("password", "reset_password", "force_random_password")):
        raise missing("password", "reset_password", "force_random_password")
    username, email = str(ctx.arg("username")), str(ctx.arg("email"))
    if not _USERNAME.match(username) or username.lower().endswith((".git", ".atom")):
        raise bad_request({"username": ["can contain only letters, digits, '_', '-' and '.'. Cannot start with "
                                        "'-' or end in '.', '.git' or '.atom'."]})
    if ctx.state.user_by_name(username):
        raise ApiError(409, {"message": "Username has already been taken"})
    if any(u.email.lower() == email.lower() for u in ctx.state.users.values()):
        raise ApiError(409, {"message": "Email has already been taken"})
    user = User(ctx.state.next_id(), username, str(ctx.arg("name")), email, is_admin=bool(ctx.boolean("admin")),
                can_create_group=bool(ctx.boolean("can_create_group", True)),
                projects_limit=ctx.integer("projects_limit", 100000) or 0)
    ctx.state.users[user.id] = user
    return Response(201, user_view(user, ctx.base_url, full=True))


@ROUTER.route("PUT", "/users/{uid}", WRITE)
def update_user(ctx: Ctx, uid: str) -> Any:
    ctx.require_admin()
    user = _user(ctx, uid)
    if ctx.arg("can_create_group") is not None:
        user.can_create_group = bool(ctx.boolean("can_create_group"))
    if ctx.arg("projects_limit") is not None:
        user.projects_limit = ctx.integer("projects_limit") or 0
    if ctx.arg("name"):
        user.name = str(ctx.arg("name"))
    return user_view(user, ctx.base_url, full=True)


def _expiry(ctx: Ctx) -> str:
    raw = ctx.arg("expires_at")
    today = dt.date.today()
    if raw in (None, ""):
        return (today + dt.timedelta(days=MAX_TOKEN_DAYS)).isoformat()
    try:
        day = dt.date.fromisoformat(str(raw))
    except ValueError:
        raise ApiError(400, {"error": "expires_at is invalid"}) from None
    if day <= today:
        raise ApiError(422, {"message": "Expiration date must be in the future"})
    if day > today + dt.timedelta(days=MAX_TOKEN_DAYS):
        limit = (today + dt.timedelta(days=MAX_TOKEN_DAYS)).isoformat()
        raise ApiError(422, {"message": f"Expiration date must be before {limit}"})
    return day.isoformat()


def new_token(ctx: Ctx, user: User, name: str, scopes: list[str], expires_at: str) -> Token:
    token = Token(ctx.state.next_id(), user.id, name, scopes, "glpat-" + secrets.token_urlsafe(15), expires_at)
    ctx.state.tokens[token.id] = token
    return token


@ROUTER.route("POST", "/users/{uid}/personal_access_tokens", WRITE)
def create_user_token(ctx: Ctx, uid: str) -> Any:
    ctx.require_admin()
    user = _user(ctx, uid)
    name, scopes = ctx.require("name", "scopes")
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    if not scopes or any(s not in SCOPES for s in scopes):
        raise ApiError(400, {"error": "scopes does not have a valid value"})
    token = new_token(ctx, user, str(name), scopes, _expiry(ctx))
    return Response(201, token_view(token, with_token=True))


@ROUTER.route("GET", "/personal_access_tokens/self", ANY_TOKEN)
def token_self(ctx: Ctx) -> Any:
    assert ctx.token is not None
    return token_view(ctx.token)


@ROUTER.route("GET", "/personal_access_tokens", READ)
def list_tokens(ctx: Ctx) -> Any:
    tokens = sorted(ctx.state.tokens.values(), key=lambda t: t.id)
    if not ctx.me.is_admin:
        tokens = [t for t in tokens if t.user_id == ctx.me.id]
    user_id = ctx.integer("user_id")
    if user_id is not None:
        tokens = [t for t in tokens if t.user_id == user_id]
    state = ctx.arg("state")
    if state in {"active", "inactive"}:
        tokens = [t for t in tokens if t.active == (state == "active")]
    return paginate(ctx, [token_view(t) for t in tokens])


def _own_token(ctx: Ctx, tid: str) -> Token:
    token = ctx.state.tokens.get(int(tid)) if tid.isdigit() else None
    if token is None or (token.user_id != ctx.me.id and not ctx.me.is_admin):
        raise not_found()
    return token


@ROUTER.route("GET", "/personal_access_tokens/{tid}", READ)
def get_token(ctx: Ctx, tid: str) -> Any:
    return token_view(_own_token(ctx, tid))


@ROUTER.route("DELETE", "/personal_access_tokens/{tid}", WRITE)
def revoke_token(ctx: Ctx, tid: str) -> Any:
    token = _own_token(ctx, tid)
    if token.revoked:
        raise bad_request("400 Bad request - Token already revoked")
    token.revoked = True
    return Response(204, None)


@ROUTER.route("POST", "/personal_access_tokens/{tid}/rotate", WRITE)
def rotate_token(ctx: Ctx, tid: str) -> Any:
    token = _own_token(ctx, tid)
    if not token.active:
        raise bad_request("400 Bad request - Token is revoked or expired")
    token.revoked = True
    rotated = new_token(ctx, ctx.state.users[token.user_id], token.name, list(token.scopes), _expiry(ctx))
    return token_view(rotated, with_token=True)


@ROUTER.route("GET", "/application/settings", READ)
def get_settings(ctx: Ctx) -> Any:
    ctx.require_admin()
    return dict(ctx.state.settings)


@ROUTER.route("PUT", "/application/settings", WRITE)
def put_settings(ctx: Ctx) -> Any:
    ctx.require_admin()
    if "custom_project_templates_group_id" in ctx.body or ctx.arg("custom_project_templates_group_id"):
        gid = ctx.integer("custom_project_templates_group_id")
        if gid is not None and gid not in ctx.state.groups:
            raise bad_request({"custom_project_templates_group_id": ["must be an existing group"]})
        ctx.state.settings["custom_project_templates_group_id"] = gid
    return dict(ctx.state.settings)
