"""The double's request plumbing: routes, request context, GitLab's errors and pagination.

Handlers raise :class:`ApiError` with GitLab's status and body shape:
``{"message": ...}`` for most refusals, ``{"error": "name is missing"}`` for a
missing parameter, ``{"error": "insufficient_scope", ...}`` for a token scope.
Lists are paginated with GitLab's headers (``X-Total``, ``X-Total-Pages``,
``X-Page``, ``X-Per-Page``, ``X-Next-Page``, ``X-Prev-Page``, ``Link``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

from .model import State, Token, User

READ = ("api", "read_api")
WRITE = ("api",)
USER_READ = ("api", "read_api", "read_user")
CREATE_RUNNER = ("api", "create_runner")
ANY_TOKEN: tuple[str, ...] = ()
NO_AUTH = None


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}
        super().__init__(f"{status}: {body}")


def not_found(what: str = "") -> ApiError:
    return ApiError(404, {"message": f"404 {what} Not Found" if what else "404 Not found"})


def forbidden(message: str = "403 Forbidden") -> ApiError:
    return ApiError(403, {"message": message})


def bad_request(message: Any) -> ApiError:
    return ApiError(400, {"message": message})


def missing(*names: str) -> ApiError:
    if len(names) == 1:
        return ApiError(400, {"error": f"{names[0]} is missing"})
    return ApiError(400, {"error": f"{', '.join(names)} are missing, at least one parameter must be provided"})


def invalid(name: str) -> ApiError:
    return ApiError(400, {"error": f"{name} is invalid"})


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    """One request: who asks, with which token, and what they sent."""

    state: State
    user: User | None
    token: Token | None
    query: dict[str, list[str]]
    body: dict[str, Any]
    base_url: str
    path: str
    double: Any

    def arg(self, name: str, default: Any = None) -> Any:
        if name in self.body:
            return self.body[name]
        for key in (name, f"{name}[]"):
            if key in self.query:
                values = self.query[key]
                return values if key.endswith("[]") else values[0]
        return default

    def require(self, *names: str) -> list[Any]:
        absent = [n for n in names if self.arg(n) in (None, "")]
        if absent:
            raise missing(*absent)
        return [self.arg(n) for n in names]

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        value = self.arg(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"true", "1", "yes"}:
            return True
        if str(value).lower() in {"false", "0", "no"}:
            return False
        raise invalid(name)

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise invalid(name) from None

    @property
    def me(self) -> User:
        assert self.user is not None
        return self.user

    def require_admin(self) -> None:
        if not self.me.is_admin:
            raise forbidden()


Handler = Callable[..., Any]


class Router:
    """Routes as ``METHOD /path/{param}`` patterns; params arrive URL-decoded."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], tuple[str, ...] | None, Handler]] = []

    def route(self, method: str, pattern: str, scopes: tuple[str, ...] | None = READ) -> Callable[[Handler], Handler]:
        regex = re.compile("^/api/v4" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(func: Handler) -> Handler:
            self.routes.append((method, regex, scopes, func))
            return func

        return register

    def match(self, method: str, raw_path: str) -> tuple[Handler, tuple[str, ...] | None, dict[str, str]]:
        allowed = False
        for verb, regex, scopes, func in self.routes:
            found = regex.match(raw_path)
            if found:
                if verb == method:
                    return func, scopes, {k: unquote(v) for k, v in found.groupdict().items()}
                allowed = True
        if allowed:
            raise ApiError(405, {"error": "405 Not Allowed"})
        raise ApiError(404, {"error": "404 Not Found"})


ROUTER = Router()


def paginate(ctx: Ctx, items: list[Any]) -> Response:
    """One page of ``items`` with GitLab's pagination headers."""
    per_page = min(max(ctx.integer("per_page", 20) or 20, 1), 100)
    page = max(ctx.integer("page", 1) or 1, 1)
    total = len(items)
    pages = max((total + per_page - 1) // per_page, 1)
    chunk = items[(page - 1) * per_page: page * per_page]
    headers = {"X-Total": str(total), "X-Total-Pages": str(pages), "X-Per-Page": str(per_page),
               "X-Page": str(page), "X-Next-Page": str(page + 1) if page < pages else "",
               "X-Prev-Page": str(page - 1) if page > 1 else ""}
    query = {k: v[0] for k, v in ctx.query.items() if k not in {"page", "per_page"}}

    def link(number: int, rel: str) -> str:
        params = urlencode({**query, "page": number, "per_page": per_page})
        return f'<{ctx.base_url}{ctx.path}?{params}>; rel="{rel}"'

    links = [link(1, "first"), link(pages, "last")]
    if page < pages:
        links.insert(0, link(page + 1, "next"))
    if page > 1:
        links.insert(0, link(page - 1, "prev"))
    headers["Link"] = ", ".join(links)
    return Response(200, chunk, headers)


def check_scopes(token: Token, scopes: tuple[str, ...]) -> None:
    if scopes and not set(token.scopes).intersection(scopes):
        raise ApiError(403, {"error": "insufficient_scope",
                             "error_description": "The request requires higher privileges than provided by the "
                                                  "access token.",
                             "scope": " ".join(scopes)},
                       {"WWW-Authenticate": f'Bearer realm="", error="insufficient_scope", '
                                           f'scope="{" ".join(scopes)}"'})
