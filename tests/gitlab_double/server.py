"""The double's HTTP side: the REST API under ``/api/v4`` and git over smart HTTP beside it.

API requests authenticate as GitLab's do (``PRIVATE-TOKEN`` or ``Authorization:
Bearer``), then the route's scopes are checked (403 ``insufficient_scope``).
Git requests authenticate with HTTP Basic (any user name, a token as the
password) and need ``read_repository``/``write_repository`` (or ``api``).
Every API request is answered under the state's lock, so handlers see one
consistent state; ``git http-backend`` runs outside it.  Its post-receive hook
calls back ``POST /api/v4/internal/post_receive`` (GitLab's internal API, with
the double's shared secret), which is neither routed nor recorded as a
client's request.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from bidsflux.forge._http import http_backend

from .api import ROUTER, ApiError, Ctx, Response, check_scopes
from .model import DEVELOPER, REPORTER

GIT_READ = ("api", "read_repository", "write_repository")
GIT_WRITE = ("api", "write_repository")
_GIT_PATH = re.compile(r"^/(?P<project>.+?)\.git(?P<rest>/.*)?$")
INTERNAL = "/api/v4/internal"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in (headers.items() if isinstance(headers, dict) else headers):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        body = self._body()
        if split.path == f"{INTERNAL}/post_receive" and self.command == "POST":
            self._post_receive(body)
        elif split.path.startswith("/api/v4/"):
            response = self._api(split.path, split.query, body)
            payload = b"" if response.status == 204 else json.dumps(response.body).encode()
            self._send(response.status, payload, {"Content-Type": "application/json", **response.headers})
        elif _GIT_PATH.match(unquote(split.path)):
            self._git(split.path, split.query, body)
        else:
            self._send(404, b"Not Found\n", {"Content-Type": "text/plain"})

    # -- REST API
    def _api(self, raw_path: str, query: str, raw_body: bytes) -> Response:
        double = self.server.double
        state = double.state
        with state.lock:
            try:
                if state.fail_next:
                    status = state.fail_next.pop(0)
                    raise ApiError(status, {"message": f"{status} Service Unavailable"})
                response = self._route(raw_path, query, raw_body)
            except ApiError as exc:
                response = Response(exc.status, exc.body, exc.headers)
            state.requests.append((self.command, raw_path, response.status))
            return response

    def _route(self, raw_path: str, query: str, raw_body: bytes) -> Response:
        state = self.server.double.state
        func, scopes, params = ROUTER.match(self.command, raw_path)
        user = token = None
        if scopes is not None:
            value = self.headers.get("PRIVATE-TOKEN") or ""
            auth = self.headers.get("Authorization", "")
            if not value and auth.startswith("Bearer "):
                value = auth[len("Bearer "):]
            token = state.token_by_value(value) if value else None
            if token is None:
                raise ApiError(401, {"message": "401 Unauthorized"})
            if not token.active:
                raise ApiError(401, {"error": "invalid_token",
                                     "error_description": "Token was revoked. You have to re-authorize from the user."})
            user = state.users[token.user_id]
            if user.state != "active":
                raise ApiError(403, {"message": "403 Forbidden - Your account has been blocked."})
            check_scopes(token, scopes)
        body: dict[str, Any] = {}
        if raw_body:
            if "json" in self.headers.get("Content-Type", ""):
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    raise ApiError(400, {"error": "The provided content-type 'application/json' is not supported "
                                                  "or the body is not valid JSON"}) from None
            else:
                body = {k: v[0] for k, v in parse_qs(raw_body.decode(), keep_blank_values=True).items()}
        ctx = Ctx(state, user, token, parse_qs(query, keep_blank_values=True), body,
                  f"http://{self.headers.get('Host')}", raw_path, self.server.double)
        result = func(ctx, **params)
        return result if isinstance(result, Response) else Response(200, result)

    # -- what the repositories' hooks call
    def _own_address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host if isinstance(host, str) else bytes(host).decode()}:{port}"

    def _post_receive(self, raw_body: bytes) -> None:
        double = self.server.double
        if self.headers.get("Gitlab-Shared-Secret") != double.internal_secret:
            self._send(401, b'{"message": "401 Unauthorized"}', {"Content-Type": "application/json"})
            return
        request = json.loads(raw_body)
        with double.state.lock:
            project = double.state.projects[int(request["gl_repository"].removeprefix("project-"))]
            user = double.state.users[int(request["identifier"].removeprefix("user-"))]
            messages = double.post_receive(project, user, list(request["changes"]), list(request["push_options"]),
                                           f"http://{self.headers.get('Host')}")
        payload = json.dumps({"messages": messages, "reference_counter_decreased": True}).encode()
        self._send(200, payload, {"Content-Type": "application/json"})

    # -- git over smart HTTP
    def _git(self, raw_path: str, query: str, body: bytes) -> None:
        double = self.server.double
        state = double.state
        match = _GIT_PATH.match(unquote(raw_path))
        assert match is not None
        rest = match["rest"] or "/"
        is_push = rest == "/git-receive-pack" or "service=git-receive-pack" in query
        with state.lock:
            project = state.project_by_ref(match["project"]) if not match["project"].isdigit() else None
            token = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    _, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    password = ""
                token = state.token_by_value(password)
            if token is None or not token.active:
                if header or is_push or project is None or project.visibility != "public":
                    self._send(401, b"HTTP Basic: Access denied\n",
                               {"WWW-Authenticate": 'Basic realm="GitLab"', "Content-Type": "text/plain"})
                    return
            user = state.users[token.user_id] if token else None
            if project is None or (user is not None and not state.can_see_project(user, project)):
                self._send(404, b"The project you were looking for could not be found or you don't have "
                                b"permission to view it.\n", {"Content-Type": "text/plain"})
                return
            if token is not None and not set(token.scopes).intersection(GIT_WRITE if is_push else GIT_READ):
                self._send(403, b"HTTP Basic: Access denied. The token lacks the scope for this git access.\n",
                           {"Content-Type": "text/plain"})
                return
            level = state.project_level(user, project) if user else 0
            if (is_push and level < DEVELOPER) or (project.visibility == "private" and level < REPORTER):
                self._send(403, b"You are not allowed to push code to this project.\n", {"Content-Type": "text/plain"})
                return
            rules = [{"name": r.name, "push_access_level": r.push_access_level,
                      "allow_force_push": r.allow_force_push} for r in project.protected.values()]
            before = double.branches(project) if rest == "/git-receive-pack" else None
        env = {"PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(double.repos), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": f"/{project.id}.git{rest}", "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_ADDR": self.client_address[0], "REMOTE_USER": user.username if user else "",
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_HTTP_MAX_REQUEST_BUFFER": "1000M", "DOUBLE_LEVEL": str(level),
               "DOUBLE_PROTECTED": json.dumps(rules), "GL_REPOSITORY": f"project-{project.id}",
               "GL_ID": f"user-{user.id}" if user else "", "DOUBLE_SECRET": double.internal_secret,
               "DOUBLE_INTERNAL_API": f"http://{self._own_address()}{INTERNAL}"}
        status, headers, payload = http_backend(env, body)
        if before is not None and user is not None:
            with state.lock:
                double.after_push(project, before, double.branches(project), user)
        self._send(status, payload, headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    double: Any


class DoubleServer:
    """Serves a GitLabDouble on an ephemeral loopback port."""

    def __init__(self, double: Any, host: str = "127.0.0.1", port: int = 0):
        self.double = double
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.double = double
        address, self.port = self._httpd.server_address[:2]
        self.host = address if isinstance(address, str) else bytes(address).decode()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gitlab-double", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
