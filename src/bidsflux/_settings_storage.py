"""Settings of the store stage (where annexed content goes).

``BIDSFLUX_STORAGE_TYPE`` chooses the kind explicitly: ``local`` (a DataLad
RIA store on this machine, the embedded default) or ``s3`` (a git-annex S3
special remote on MinIO or any S3 server).  The S3 settings are read in
every mode but used only with ``s3``; the storage stage reports the ones an
S3 store cannot do without.  The keys are secrets: from ``NAME_FILE`` or
``/run/secrets/<name>``, never from a URL or a config file in git.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ._settings_fields import boolean, choice, path, positive_int, setting

_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|TiB)$")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def s3_endpoint(raw: str) -> str:
    """``http(s)://host[:port]``: where the S3 API answers; no path, no credentials."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host name")
    if parts.username or parts.password:
        # Keys in a URL end up in logs and in the git-annex branch: keys go in secrets only.
        raise ValueError("must not carry credentials; the keys go in secret files")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError("must be the server's root URL, without a path (the bucket comes from S3_URL_PATTERN)")
    _ = parts.port  # raises ValueError for a bad port
    return raw.strip().rstrip("/")


def public_url(raw: str) -> str:
    """Base URL anonymous readers download from; the bucket name is appended."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username or parts.password:
        raise ValueError("must be an http:// or https:// URL with a host name and no credentials")
    return raw.strip().rstrip("/")


def byte_size(raw: str) -> int:
    """A size such as ``1GiB`` or ``512MiB`` (binary units); ``0`` means off."""
    text = raw.strip()
    if text in {"0", ""}:
        return 0
    match = _SIZE.match(text)
    if not match:
        raise ValueError("must be 0 or a size such as 512MiB or 1GiB")
    value = int(match.group(1)) * _UNITS[match.group(2)]
    if value < 5 * 2**20:
        raise ValueError("must be 0 or at least 5MiB (the smallest S3 multipart part)")
    return value


def region(raw: str) -> str:
    if not re.fullmatch(r"[a-z0-9-]{1,40}", raw.strip()):
        raise ValueError("must be an S3 region name such as us-east-1")
    return raw.strip()


@dataclass(frozen=True)
class StorageSettings:
    s3_url_pattern: str = setting("S3_URL_PATTERN", "bidsflux-{ReferringPhysicianName}/{StudyDescriptionPath[1]}")
    storage_type: str = setting("BIDSFLUX_STORAGE_TYPE", "local", choice("local", "s3"))
    storage_remote: str = setting("BIDSFLUX_STORAGE_REMOTE", "bidsflux-storage")
    storage_local_path: Path | None = setting("BIDSFLUX_STORAGE_LOCAL_PATH", None, path)
    storage_jobs: int = setting("BIDSFLUX_STORAGE_JOBS", 4, positive_int)
    s3_endpoint_url: str | None = setting("BIDSFLUX_S3_ENDPOINT_URL", None, s3_endpoint)
    s3_access_key: str | None = setting("BIDSFLUX_S3_ACCESS_KEY", None, secret=True)
    s3_secret_key: str | None = setting("BIDSFLUX_S3_SECRET_KEY", None, secret=True)
    s3_region: str = setting("BIDSFLUX_S3_REGION", "us-east-1", region)
    s3_signature: str = setting("BIDSFLUX_S3_SIGNATURE", "v4", choice("v4", "v2"))
    s3_path_style: bool = setting("BIDSFLUX_S3_PATH_STYLE", True, boolean)
    s3_part_size: int = setting("BIDSFLUX_S3_PART_SIZE", 2**30, byte_size)
    s3_chunk_size: int = setting("BIDSFLUX_S3_CHUNK_SIZE", 0, byte_size)
    s3_public_url: str | None = setting("BIDSFLUX_S3_PUBLIC_URL", None, public_url)
