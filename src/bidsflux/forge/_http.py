"""The embedded forge's web server: ``git http-backend`` behind basic auth.

Reads (clone, fetch) are open, as for an internal or public GitLab project;
pushes need the forge token as the basic-auth password.  Only smart HTTP is
served; paths are checked to stay inside the forge folder.
"""

from __future__ import annotations

import base64
import hmac
import logging
import subprocess
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .._proc import tool_env
from ..errors import ForgeError

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _ForgeHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("forge %s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._serve()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._serve()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), self.server.token.encode())

    def _send_simple(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self) -> None:
        split = urlsplit(self.path)
        path_info = unquote(split.path)
        if ".." in path_info.split("/") or ".git" not in path_info:
            self._send_simple(404, "not found\n")
            return
        body = self._read_body()
        is_push = "git-receive-pack" in path_info or "service=git-receive-pack" in split.query
        if is_push and not self._authorised():
            self._send_simple(401, "authentication required\n",
                              {"WWW-Authenticate": 'Basic realm="bids-flux forge"'})
            return
        env = tool_env({
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path_info,
            "QUERY_STRING": split.query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "bids-flux" if is_push else "",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_HTTP_MAX_REQUEST_BUFFER": "1000M",
        })
        status, headers, payload = http_backend(env, body)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def http_backend(env: Mapping[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run ``git http-backend`` as a CGI with ``env`` and the request ``body``: status, headers, payload."""
    proc = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=dict(env), check=False)
    head, sep, payload = proc.stdout.partition(b"\r\n\r\n")
    if not sep:
        head, _, payload = proc.stdout.partition(b"\n\n")
    status, headers = 200, []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            headers.append((name, value.strip()))
    return status, headers, payload


class _ForgeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, token: str):
        self.root = root
        self.token = token
        super().__init__(address, _Handler)


class ForgeServer:
    """Serves every bare repository under ``root`` over smart HTTP."""

    def __init__(self, root: Path, token: str, host: str = "127.0.0.1", port: int = 0):
        root.mkdir(parents=True, exist_ok=True)
        try:
            self._httpd = _ForgeHTTPServer((host, port), root, token)
        except OSError as exc:
            raise ForgeError(f"cannot serve the forge on {host}:{port}: {exc.strerror}",
                             hint="pick a free port with BIDSFLUX_FORGE_PORT") from exc
        address, self.port = self._httpd.server_address[:2]
        self.host = address if isinstance(address, str) else bytes(address).decode()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="forge-http", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ForgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
