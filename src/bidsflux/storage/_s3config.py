"""S3 store configuration: checked settings, where a dataset's objects go, what child tools get.

A session's objects go to ``<bucket>/<rest>/<StudyInstanceUID>/``, where
``<bucket>/<rest>`` is ``S3_URL_PATTERN`` expanded over the study's tags
(sanitised for S3 by :mod:`bidsflux.naming`).  Other datasets of the group
(the BIDS dataset) go beside their first session: ``<bucket>/<rest>/<name>/``.

The location is decided when the tags are at hand (indexing) and written to
``.git/bidsflux/storage-location.json`` in the dataset, so that storing can
run later, after a restart, or while S3 is down, without the tags.  Once the
special remote exists its own record in the git-annex branch is the truth.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import StorageError
from ..naming import expand, is_uid, sanitize
from ..settings import Settings

PLAN_FILE = Path(".git") / "bidsflux" / "storage-location.json"
ALLOWED_IPS = "annex.security.allowed-ip-addresses"


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ends with "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class S3Config:
    """The S3 settings, checked once per call; secrets stay out of ``repr``."""

    remote: str
    endpoint: str
    scheme: str
    host: str
    port: int
    region: str
    signature: str
    path_style: bool
    part_size: int
    chunk_size: int
    public_url: str | None
    access_key: str = ""
    secret_key: str = ""

    def __repr__(self) -> str:
        return f"S3Config(endpoint={self.endpoint!r}, remote={self.remote!r}, keys=***)"

    def annex_env(self) -> dict[str, str]:
        """What git-annex reads its S3 keys from: only ever a child's environment."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def mask(self, text: str) -> str:
        for value in (self.secret_key, self.access_key):
            if value and len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def git_options(self) -> list[str]:
        """``git -c`` options every git-annex call that talks to the store needs.

        git-annex refuses private and loopback addresses unless allowed; only
        the configured endpoint's own addresses are allowed, nothing wider.
        """
        addresses = allowed_addresses(self.host)
        return ["-c", f"{ALLOWED_IPS}={' '.join(addresses)}"] if addresses else []

    def remote_params(self, location: Location) -> list[str]:
        params = [
            "type=S3", "encryption=none", "autoenable=true",
            f"host={self.host}", f"port={self.port}", f"protocol={self.scheme}",
            f"signature={self.signature}", f"region={self.region}",
            f"bucket={location.bucket}", f"fileprefix={location.prefix}",
        ]
        if self.path_style:
            params.append("requeststyle=path")
        if self.part_size:
            params.append(f"partsize={format_size(self.part_size)}")
        if self.chunk_size:
            params.append(f"chunk={format_size(self.chunk_size)}")
        if self.public_url:
            params.append(f"publicurl={self.public_url}/{location.bucket}/")
        return params


def format_size(value: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B"


def allowed_addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []  # unresolvable now: the call itself will fail and say so
    return sorted({str(info[4][0]) for info in infos})


def s3_config(settings: Settings, *, study: str | None) -> S3Config:
    """The S3 settings an S3 store needs, all problems reported at once (a permanent error)."""
    missing = [name for name, value in (("BIDSFLUX_S3_ENDPOINT_URL", settings.s3_endpoint_url),
                                        ("BIDSFLUX_S3_ACCESS_KEY", settings.s3_access_key),
                                        ("BIDSFLUX_S3_SECRET_KEY", settings.s3_secret_key)) if not value]
    if missing:
        raise StorageError(f"BIDSFLUX_STORAGE_TYPE=s3 needs {', '.join(missing)}", study=study,
                           hint="set them in the environment, .env, NAME_FILE or /run/secrets")
    parts = urlsplit(str(settings.s3_endpoint_url))
    scheme = parts.scheme
    return S3Config(
        remote=settings.storage_remote, endpoint=str(settings.s3_endpoint_url), scheme=scheme,
        host=str(parts.hostname), port=parts.port or (443 if scheme == "https" else 80),
        region=settings.s3_region, signature=settings.s3_signature, path_style=settings.s3_path_style,
        part_size=settings.s3_part_size, chunk_size=settings.s3_chunk_size, public_url=settings.s3_public_url,
        access_key=str(settings.s3_access_key), secret_key=str(settings.s3_secret_key),
    )


def session_location(settings: Settings, tags: Mapping[str, Any], study: str, *,
                     pattern: str | None = None) -> Location:
    """``pattern`` (default ``S3_URL_PATTERN``) over the tags, plus the StudyInstanceUID; NamingError when invalid."""
    bucket, _, rest = expand(pattern or settings.s3_url_pattern, tags, "s3", study=study).partition("/")
    uid = study if is_uid(study) else sanitize(study, "s3")
    if not uid:
        raise StorageError(f"no usable StudyInstanceUID for the S3 prefix: {study!r}", study=study)
    return Location(bucket, f"{rest}/{uid}/" if rest else f"{uid}/")


def sibling_location(location: Location, name: str) -> Location:
    """Beside ``location``: the same bucket and parent prefix, last element ``name``."""
    parent = location.prefix.rstrip("/").rpartition("/")[0]
    leaf = sanitize(name, "s3") or "dataset"
    return Location(location.bucket, f"{parent}/{leaf}/" if parent else f"{leaf}/")


def write_plan(dataset: Path, location: Location) -> None:
    """Record the decided location in the dataset's .git (atomically, fsynced)."""
    target = dataset / PLAN_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_suffix(".tmp")
    with open(temp, "w") as fh:
        json.dump({"bucket": location.bucket, "prefix": location.prefix}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, target)


def read_plan(dataset: Path) -> Location | None:
    path = dataset / PLAN_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Location(str(data["bucket"]), str(data["prefix"]))
