"""Settings of the store stage (where annexed content goes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._settings_fields import choice, path, setting


@dataclass(frozen=True)
class StorageSettings:
    s3_url_pattern: str = setting("S3_URL_PATTERN", "bidsflux-{ReferringPhysicianName}/{StudyDescriptionPath[1]}")
    storage_type: str = setting("BIDSFLUX_STORAGE_TYPE", "local", choice("local"))
    storage_remote: str = setting("BIDSFLUX_STORAGE_REMOTE", "bidsflux-storage")
    storage_local_path: Path | None = setting("BIDSFLUX_STORAGE_LOCAL_PATH", None, path)
