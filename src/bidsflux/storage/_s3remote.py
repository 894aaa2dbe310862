"""The ``s3`` store: a git-annex S3 special remote, checked against the bucket itself.

git-annex sends the content (parallel jobs, multipart above the part size);
what is in the bucket is then listed with boto3 and every key's object (or
chunk objects) must be there with the right size.  The keys reach git-annex
only through a child process's environment; the copy git-annex caches on
``initremote``/``enableremote`` is removed at once.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._proc import run
from ..errors import StorageError
from ..settings import Settings
from . import _annex
from ._s3 import S3Client
from ._s3config import Location, S3Config, read_plan, s3_config, session_location, sibling_location, write_plan

# git-annex's words for a store that did not answer, or answered "try later".
_TRANSIENT = re.compile(
    r"ConnectionFailure|Connection refused|ConnectionTimeout|ResponseTimeout|NoResponseDataReceived|"
    r"IncompleteHeaders|ConnectionClosed|InvalidChunkHeaders|[Rr]esource vanished|timed out|"
    r"Network is unreachable|No route to host|statusCode = 5\d\d|SlowDown|ServiceUnavailable")
_PERMANENT = re.compile(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|ConnectionRestricted|"
                        r"statusCode = 40[0-9]")


def transient_failure(stderr: str) -> bool:
    """True when git-annex's error says the store did not answer (worth retrying as it is)."""
    return bool(_TRANSIENT.search(stderr)) and not _PERMANENT.search(stderr)


class S3Store:
    def __init__(self, settings: Settings, *, study: str | None):
        self.settings = settings
        self.study = study
        self.cfg: S3Config = s3_config(settings, study=study)
        self.name = self.cfg.remote
        self._client: S3Client | None = None
        self._git_options = self.cfg.git_options()  # resolves the endpoint's name once per store

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = S3Client(self.cfg, study=self.study)
        return self._client

    @property
    def url(self) -> str:
        return self.cfg.endpoint

    def _run_annex(self, args: list[str], dataset: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``git annex ARGS`` with the keys in its environment; errors masked here."""
        proc = run(["git", *self._git_options, "annex", *args], cwd=dataset, env=self.cfg.annex_env(),
                   check=False)
        if check and proc.returncode != 0:
            tail = self.cfg.mask((proc.stderr or proc.stdout or "").strip())[-600:]
            raise StorageError(f"`git annex {args[0]}` failed with exit code {proc.returncode}: {tail}",
                               study=self.study, transient=transient_failure(tail))
        return proc

    # -- where
    def plan(self, dataset: Path, tags: Mapping[str, Any], pattern: str | None = None) -> None:
        """Decide a session's location from its tags, unless the remote already fixed it.

        An amendment of a session whose remote exists keeps its location, even
        if the routing rule's pattern changed since: its objects are there.
        """
        if _annex.find_remote(dataset, self.name, study=self.study) is None:
            write_plan(dataset, session_location(self.settings, tags, str(self.study), pattern=pattern))

    def location(self, dataset: Path) -> Location | None:
        """Where ``dataset``'s objects are: its remote's record, else its plan."""
        remote = _annex.find_remote(dataset, self.name, study=self.study)
        if remote is not None:
            return Location(remote.get("bucket"), remote.get("fileprefix"))
        return read_plan(dataset)

    def _new_location(self, dataset: Path, tags: Mapping[str, Any] | None, like: Path | None) -> Location:
        if tags is not None:
            return session_location(self.settings, tags, str(self.study))
        planned = read_plan(dataset)
        if planned is not None:
            return planned
        if like is not None:
            beside = self.location(like)
            if beside is not None:
                return sibling_location(beside, dataset.name)
        raise StorageError(f"the S3 location of {dataset} is not decided", study=self.study,
                           hint="storage.plan() with the study's tags must run first (at indexing)")

    # -- the remote
    def ensure(self, dataset: Path, *, tags: Mapping[str, Any] | None = None, like: Path | None = None) -> None:
        if _annex.enabled_uuid(dataset, self.name):
            return
        if _annex.find_remote(dataset, self.name, study=self.study) is not None:
            self._run_annex(["enableremote", self.name], dataset)  # a clone: its branch knows the remote
        else:
            location = self._new_location(dataset, tags, like)
            self.client.ensure_bucket(location.bucket)
            self._run_annex(["initremote", self.name, *self.cfg.remote_params(location)], dataset)
        _annex.forget_cached_credentials(dataset, _annex.enabled_uuid(dataset, self.name))

    def confirm(self, dataset: Path) -> None:
        """Check that the remote points at the configured endpoint; pass the verified-remote gate."""
        remote = _annex.find_remote(dataset, self.name, study=self.study)
        if remote is None:
            raise StorageError(f"dataset has no storage remote {self.name}", study=self.study)
        self._check_endpoint(remote.fields)
        out = self._run_annex(["verifyremote", self.name], dataset).stdout
        match = re.search(rf"verifyremote {re.escape(self.name)} --safe (\S+)", out)
        if match is not None:  # a clone that autoenabled it: confirm now that the location is known good
            self._run_annex(["verifyremote", self.name, "--safe", match.group(1)], dataset)

    def _check_endpoint(self, fields: Mapping[str, str]) -> None:
        # git-annex's own defaults when a field is absent: http, port 80 (https when the port is 443).
        protocol = fields.get("protocol") or ("https" if fields.get("port") == "443" else "http")
        port = fields.get("port") or ("443" if protocol == "https" else "80")
        seen = (fields.get("type"), fields.get("host"), port, protocol)
        wanted = ("S3", self.cfg.host, str(self.cfg.port), self.cfg.scheme)
        if seen != wanted:
            shown = f"{seen[3]}://{seen[1]}:{seen[2]}" if seen[0] == "S3" else f"a {seen[0]} remote"
            raise StorageError(f"storage remote {self.name} points at {shown}, not at {self.cfg.endpoint}",
                               study=self.study,
                               hint=f"if the store moved: git annex enableremote {self.name} host=... port=...")

    # -- content
    def copy(self, dataset: Path, jobs: int) -> str | None:
        proc = self._run_annex(["copy", "--to", self.name, f"-J{jobs}", "--fast", "--quiet"], dataset, check=False)
        return None if proc.returncode == 0 else self.cfg.mask((proc.stderr or proc.stdout).strip())[-600:]

    def _expected(self, dataset: Path, keys: list[str], remote: _annex.RemoteConfig) -> dict[str, list[dict[str, int]]]:
        """For each key, the object layouts that would hold it (chunked or whole), names with prefix."""
        prefix = remote.get("fileprefix")
        layouts = _annex.chunk_layouts(dataset, keys, remote.uuid, study=self.study) if remote.get("chunk") else {}
        expected = {}
        for key in keys:
            size = _annex.key_size(key, study=self.study)
            options = [{prefix + key: size}]
            for chunk in layouts.get(key, []):
                options.insert(0, {prefix + name: n for name, n in _annex.chunk_objects(key, size, chunk).items()})
            expected[key] = options
        return expected

    def check(self, dataset: Path, keys: list[str]) -> dict[str, str]:
        """What is wrong with each key in the bucket ("missing", "short ..."); empty when all are there."""
        remote = _annex.find_remote(dataset, self.name, study=self.study)
        if remote is None:
            raise StorageError(f"dataset has no storage remote {self.name}", study=self.study)
        listing = self.client.sizes(remote.get("bucket"), remote.get("fileprefix"))
        problems = {}
        for key, options in self._expected(dataset, keys, remote).items():
            if any(all(listing.get(name) == size for name, size in option.items()) for option in options):
                continue
            wrong = [(name, listing[name], size) for name, size in options[0].items()
                     if name in listing and listing[name] != size]
            problems[key] = (f"short ({wrong[0][1]} of {wrong[0][2]} bytes)" if wrong else "missing")
        return problems

    def discard(self, dataset: Path, problems: Mapping[str, str]) -> None:
        """Delete short objects and tell git-annex the bucket lacks these keys, so they are sent again."""
        remote = _annex.find_remote(dataset, self.name, study=self.study)
        assert remote is not None  # check() ran first
        bucket = remote.get("bucket")
        listing = self.client.sizes(bucket, remote.get("fileprefix"))
        bad = [name for key, options in self._expected(dataset, list(problems), remote).items()
               for option in options for name, size in option.items() if name in listing and listing[name] != size]
        self.client.delete(bucket, sorted(set(bad)))
        _annex.mark_absent(dataset, list(problems), remote.uuid, study=self.study)

    def failure(self, dataset: Path, message: str, copy_error: str | None) -> StorageError:
        """The final error: transient when the store does not answer or git-annex could not reach it."""
        location = self.location(dataset)
        detail = f"; git-annex said: {copy_error[-300:]}" if copy_error else ""
        transient = bool(copy_error) and transient_failure(str(copy_error))
        if not transient and location is not None:
            self.client.probe(location.bucket)  # raises a transient error if the store stopped answering
        return StorageError(f"{message} in {location}{detail}", study=self.study, transient=transient,
                            hint=None if transient else "`bidsflux retry` sends them again")
