"""The one module that talks to GitLab's REST API, through python-gitlab.

Callers name REST paths (``/groups/<id>``) and get plain dicts back; python-gitlab
does authentication, pagination (``Link``/``X-Next-Page``) and retries of
transient failures.  Every failure is translated here, at the boundary:

- unreachable, timeouts, 429 and 5xx -> ``transient=True`` (the worker retries
  later; the study waits in its last durable state);
- 403 ``insufficient_scope`` -> an error naming the scope the token lacks;
- 401 -> the token is unknown, expired or revoked;
- 400/404/409/422 -> permanent, quoting GitLab's message.

The token is never part of a message: python-gitlab sends it in a header, and
anything echoed back is masked before it reaches an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import gitlab
import requests

from ..errors import ForgeError

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


class GitLabAPIError(ForgeError):
    """GitLab refused or failed a request; ``status`` and ``scope`` say why."""

    def __init__(self, message: str, *, status: int | None = None, scope: str | None = None,
                 study: str | None = None, hint: str | None = None, transient: bool | None = None):
        self.status = status
        self.scope = scope
        super().__init__(message, study=study, hint=hint, transient=transient)


def enc(value: str | int) -> str:
    """A path or name as one URL path segment (``a/b`` -> ``a%2Fb``), as GitLab expects."""
    return quote(str(value), safe="")


def _body(exc: gitlab.exceptions.GitlabError) -> dict[str, Any]:
    raw = exc.response_body
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw or "")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _flatten(message: Any) -> str:
    # GitLab's validation messages come as {"path": ["has already been taken"]}.
    if isinstance(message, dict):
        return "; ".join(f"{key} {' '.join(map(str, value)) if isinstance(value, list) else value}"
                         for key, value in message.items())
    if isinstance(message, list):
        return "; ".join(map(str, message))
    return str(message)


class GitLabClient:
    """A token-bound handle on one GitLab instance; ``who`` names the token in messages."""

    def __init__(self, url: str, token: str, *, who: str, retries: int = 5, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.who = who
        self._token = token
        # keep_base_url: pagination links must keep the address we were given.
        self._retries = retries  # python-gitlab backs off 0.1 s, 0.2 s, 0.4 s ... between tries
        self._gl = gitlab.Gitlab(self.url, private_token=token, retry_transient_errors=True, timeout=timeout,
                                 keep_base_url=True)

    # -- requests
    def get(self, path: str, *, what: str, study: str | None = None, **query: Any) -> dict[str, Any]:
        result = self._call(what, study, lambda: self._gl.http_get(path, query_data=query,
                                                                   max_retries=self._retries))
        assert isinstance(result, dict)
        return result

    def get_or_none(self, path: str, *, what: str, study: str | None = None, **query: Any) -> dict[str, Any] | None:
        """GET, with 404 meaning "there is none" rather than an error."""
        try:
            return self.get(path, what=what, study=study, **query)
        except GitLabAPIError as exc:
            if exc.status == 404:
                return None
            raise

    def list_all(self, path: str, *, what: str, study: str | None = None, **query: Any) -> list[dict[str, Any]]:
        result = self._call(what, study, lambda: self._gl.http_list(path, query_data=query, get_all=True,
                                                                    max_retries=self._retries))
        return [dict(item) for item in result]

    def first_page(self, path: str, *, what: str, study: str | None = None, per_page: int = 20,
                   **query: Any) -> list[dict[str, Any]]:
        """Only the first page of a list: for "the most recent few", where all pages would be wasteful."""
        result = self._call(what, study, lambda: self._gl.http_list(path, query_data=query, get_all=False,
                                                                    page=1, per_page=per_page,
                                                                    max_retries=self._retries))
        return [dict(item) for item in result]

    def post(self, path: str, data: dict[str, Any] | None = None, *, what: str,
             study: str | None = None) -> dict[str, Any]:
        result = self._call(what, study, lambda: self._gl.http_post(path, post_data=data or {},
                                                                    max_retries=self._retries))
        return result if isinstance(result, dict) else {}

    def put(self, path: str, data: dict[str, Any], *, what: str, study: str | None = None) -> dict[str, Any]:
        result = self._call(what, study, lambda: self._gl.http_put(path, post_data=data,
                                                                   max_retries=self._retries))
        return result if isinstance(result, dict) else {}

    def patch(self, path: str, data: dict[str, Any], *, what: str, study: str | None = None) -> dict[str, Any]:
        result = self._call(what, study, lambda: self._gl.http_patch(path, post_data=data,
                                                                     max_retries=self._retries))
        return result if isinstance(result, dict) else {}

    def delete(self, path: str, *, what: str, study: str | None = None) -> None:
        self._call(what, study, lambda: self._gl.http_delete(path, max_retries=self._retries))

    # -- token checks
    def token_info(self, *, study: str | None = None) -> dict[str, Any] | None:
        """The token's own record (name, scopes, expiry); None where GitLab has no such endpoint."""
        return self.get_or_none("/personal_access_tokens/self", what="read its own token", study=study)

    def check_scopes(self, required: Sequence[Iterable[str]], *, study: str | None = None) -> None:
        """Raise naming the missing scope unless, for each requirement, one of its scopes is granted."""
        info = self.token_info(study=study)
        if info is None:
            log.debug("GitLab has no /personal_access_tokens/self; scopes checked per request")
            return
        granted = set(info.get("scopes") or [])
        if not info.get("active", True):
            raise GitLabAPIError(f"the {self.who} token is revoked or expired", status=401, study=study,
                                 hint=f"issue a new {self.who} token (`bidsflux deploy init --rotate`)")
        for options in required:
            options = list(options)
            if not granted.intersection(options):
                shown = options[0] if len(options) == 1 else " or ".join(options)
                raise GitLabAPIError(
                    f"the {self.who} token lacks the scope {shown} (it has: {', '.join(sorted(granted)) or 'none'})",
                    status=403, scope=options[0], study=study,
                    hint=f"issue the {self.who} token with scope {options[0]}")

    # -- error translation
    def _mask(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, what: str, study: str | None, func: Callable[[], T]) -> T:
        try:
            return func()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise GitLabAPIError(
                f"GitLab at {self.url} is unreachable while trying to {what}: {self._mask(type(exc).__name__)}",
                study=study, transient=True, hint="retried later; check that GitLab is up") from exc
        except gitlab.exceptions.GitlabError as exc:
            raise self._translate(exc, what, study) from exc

    def _translate(self, exc: gitlab.exceptions.GitlabError, what: str, study: str | None) -> GitLabAPIError:
        status = exc.response_code
        body = _body(exc)
        if status in TRANSIENT_STATUS or (status is not None and status >= 500):
            return GitLabAPIError(f"GitLab at {self.url} failed to {what} ({status})", status=status,
                                  study=study, transient=True, hint="retried later")
        if status == 403 and body.get("error") == "insufficient_scope":
            scopes = str(body.get("scope") or "").split()
            shown = " or ".join(scopes) if scopes else "a wider scope"
            return GitLabAPIError(f"the {self.who} token lacks the scope {shown} needed to {what}", status=403,
                                  scope=scopes[0] if scopes else None, study=study,
                                  hint=f"issue the {self.who} token with scope {scopes[0] if scopes else 'api'}")
        if status == 401:
            return GitLabAPIError(f"GitLab did not accept the {self.who} token (401) to {what}", status=401,
                                  study=study, hint="the token is unknown, expired or revoked: issue a new one")
        message = self._mask(_flatten(body.get("message") or body.get("error") or exc.error_message))
        if status is None:
            return GitLabAPIError(f"GitLab's answer could not be read while trying to {what}: {message}",
                                  study=study, transient=True, hint="retried later")
        if status == 403:
            return GitLabAPIError(f"{self.who} is not allowed to {what} (403: {message})", status=403, study=study,
                                  hint=f"give {self.who} the role it needs, see docs/gitlab.md")
        if status == 404:
            return GitLabAPIError(f"GitLab has no such resource, or {self.who} cannot see it, while trying to "
                                  f"{what} (404: {message})", status=404, study=study)
        return GitLabAPIError(f"GitLab refused to {what} ({status}: {message})", status=status, study=study)
