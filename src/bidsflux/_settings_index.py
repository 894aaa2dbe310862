"""Settings of the index stage and of the worker that drives every stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._settings_fields import choice, port, positive_float, positive_int, setting


def tag_defaults(raw: str) -> dict[str, str]:
    """``Tag=value;Tag=value``: explicit stand-ins for missing or empty tags."""
    result: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier() or not value.strip():
            raise ValueError(f"expected Tag=value;Tag=value, got {item!r}")
        result[name.strip()] = value.strip()
    return result


@dataclass(frozen=True)
class IndexSettings:
    archive_compression: str = setting("BIDSFLUX_ARCHIVE_COMPRESSION", "none", choice("none", "gzip"))
    tag_defaults: dict[str, str] = field(default_factory=dict, metadata={
        "env": "BIDSFLUX_TAG_DEFAULTS", "parse": tag_defaults, "secret": False})
    retry_initial: float = setting("BIDSFLUX_RETRY_INITIAL", 5.0, positive_float)
    retry_max: float = setting("BIDSFLUX_RETRY_MAX", 300.0, positive_float)
    retry_attempts: int = setting("BIDSFLUX_RETRY_ATTEMPTS", 50, positive_int)
    metrics_port: int | None = setting("BIDSFLUX_METRICS_PORT", None, port)
    metrics_host: str = setting("BIDSFLUX_METRICS_HOST", "127.0.0.1")
